"""Training and inference speed of the issue-4 baselines on the synthetic cohort, batched vs one patient at a time.

For each model (by registry name) a fresh subprocess loads the cohort, fits with the model's paper
config for ``--epochs`` epochs (early stopping off), then predicts the test set, and reports:
seconds per epoch (training plus the per-epoch validation pass, as the shared loop runs it), test
inference seconds for the whole set and per patient at batch size 1, parameters and the child's
peak resident memory (plus CUDA max allocated on a GPU). With ``--per-patient`` (default) a second
subprocess fits one epoch at batch size 1, the reference repositories' regime, to show the speed-up.
Models that need earlier medications (MICRON) train and predict on multi-visit samples only.

    python benchmarks/baselines_speed.py [--patients 2000] [--epochs 3] [--models retain,gamenet,safedrug,micron]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile

from rich.console import Console
from rich.table import Table

MODELS = ("retain", "gamenet", "safedrug", "micron", "refine", "cognet", "gbert")

CHILD = """
import json, resource, sys, time
import torch
from bench.registry import get
from data_prep.prepare import load_dataset

name, cache, patients, epochs, batch_size, threads, device = sys.argv[1:8]
torch.set_num_threads(int(threads))
dataset = load_dataset("synth", cache_dir=cache, options={"patients": int(patients)})
cls = get(name)
overrides = {"epochs": int(epochs), "patience": int(epochs) + 1}
if batch_size != "paper":
    overrides["batch_size"] = int(batch_size)
model = cls(dataset, cls.config_class.preset("paper", **overrides), seed=0, device=device)
usable = (lambda s: s.history) if cls.capabilities.needs_history_medications else (lambda s: True)
train, val, test = ([s for s in dataset.samples(part) if usable(s)] for part in ("train", "val", "test"))
model.fit(train, val)
result = {
    "train_samples": len(train),
    "test_samples": len(test),
    "batch_size": model.config.batch_size,
    "epochs": model.fit_report["epochs_run"],
    "seconds_per_epoch": model.fit_report["train_seconds"] / model.fit_report["epochs_run"],
    "parameters": sum(p.numel() for p in model.network.parameters()),
}
if batch_size == "paper":
    started = time.perf_counter()
    model.predict_proba(test)
    result["test_seconds"] = time.perf_counter() - started
    started = time.perf_counter()
    for sample in test:
        model.predict_proba([sample])
    result["latency_ms"] = 1000 * (time.perf_counter() - started) / len(test)
result["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
if device.startswith("cuda"):
    result["cuda_peak_mib"] = torch.cuda.max_memory_allocated() / 2**20
print(json.dumps(result))
"""


def measure(name: str, cache: str, patients: int, epochs: int, batch_size: str, threads: int, device: str) -> dict:
    """One fit (and, at the paper batch size, the inference timings) in a fresh interpreter."""
    args = [sys.executable, "-c", CHILD, name, cache, str(patients), str(epochs), batch_size, str(threads), device]
    out = subprocess.run(args, capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"{name} (batch size {batch_size}) failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patients", type=int, default=2000, help="synthetic cohort size (default 2000)")
    parser.add_argument("--epochs", type=int, default=3, help="epochs timed per model (default 3)")
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated registry names")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per child (default 1)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--no-per-patient", dest="per_patient", action="store_false", help="skip the batch-size-1 epoch")
    args = parser.parse_args()
    console = Console(width=max(Console().width, 150))
    names = [n.strip() for n in args.models.split(",") if n.strip()]
    table = Table(title=f"Baselines on the synthetic cohort ({args.patients} patients, {args.threads} thread(s), {args.device})")
    for column in ("model", "params", "train / test", "batch", "s / epoch", "s / epoch at batch 1", "speed-up", "test s", "ms / patient at batch 1", "peak RSS MiB"):
        table.add_column(column, justify="left" if column == "model" else "right")
    with tempfile.TemporaryDirectory() as cache:
        from data_prep.prepare import load_dataset

        load_dataset("synth", cache_dir=cache, options={"patients": args.patients})  # prepared once, loaded by every child
        for name in names:
            console.log(f"{name}: {args.epochs} epoch(s) at the paper batch size")
            batched = measure(name, cache, args.patients, args.epochs, "paper", args.threads, args.device)
            single = None
            if args.per_patient:
                console.log(f"{name}: 1 epoch at batch size 1")
                single = measure(name, cache, args.patients, 1, "1", args.threads, args.device)
            memory = f"{batched['peak_rss_mib']:.0f}" + (f" (CUDA {batched['cuda_peak_mib']:.0f})" if "cuda_peak_mib" in batched else "")
            table.add_row(
                name,
                f"{batched['parameters']:,}",
                f"{batched['train_samples']} / {batched['test_samples']}",
                str(batched["batch_size"]),
                f"{batched['seconds_per_epoch']:.2f}",
                f"{single['seconds_per_epoch']:.2f}" if single else "-",
                f"{single['seconds_per_epoch'] / batched['seconds_per_epoch']:.1f}x" if single else "-",
                f"{batched['test_seconds']:.3f}",
                f"{batched['latency_ms']:.2f}",
                memory,
            )
    console.print(table)
    console.print("s / epoch includes the validation pass the shared loop runs after every epoch.")


if __name__ == "__main__":
    main()

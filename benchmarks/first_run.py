"""The first run a new user makes: the README's main job from an empty cache, timed, with each model's share.

    python benchmarks/first_run.py [--models all] [--preset quick] [--seeds 0]

Runs ``bench run --models all --dataset synth --preset quick`` in a subprocess with a fresh cache
(``MEDREC_BENCH_CACHE``) and results folder, so nothing is reused: data preparation, the teacher's
fine-tuning and every model's training count. Prints the wall time and, per model, its training seconds,
best epoch (or step) against the epochs (or steps) run, whether it converged, and its overall test PRAUC.
Run it with nothing else on the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="all")
    parser.add_argument("--preset", default="quick")
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--keep", type=Path, help="Keep the results folder here instead of a temporary one.")
    parser.add_argument("--executor", default="processes", help="processes (the default: one unit per core), local or ray")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="first-run-") as scratch:
        results = args.keep or Path(scratch) / "results"
        environment = {**os.environ, "MEDREC_BENCH_CACHE": str(Path(scratch) / "cache")}
        command = [str(Path(sys.executable).parent / "bench"), "run", "--models", args.models, "--dataset", "synth",
                   "--preset", args.preset, "--seeds", args.seeds, "--results-dir", str(results), "--executor", args.executor]
        started = time.perf_counter()
        subprocess.run(command, check=True, env=environment, stdout=subprocess.DEVNULL)
        wall = time.perf_counter() - started
        (summary_path,) = results.glob("*/summary.json")
        summary = json.loads(summary_path.read_text())
        records = {p.name: json.loads(p.read_text()) for p in summary_path.parent.glob("metrics/*.json")}
    table = Table(title=f"bench run --models {args.models} --dataset synth --preset {args.preset} --executor {args.executor}: {wall:.0f} s wall from an empty cache")
    for column in ("entry", "seed", "train s", "best / run", "stopped by", "converged", "overall (multi) PRAUC"):
        table.add_column(column, justify="right")
    for record in records.values():
        fit = record["fit_report"]
        cell = (summary["models"][record["label"]].get("overall") or summary["models"][record["label"]].get("multi") or {}).get("prauc", {})
        progress = f"epoch {fit['best_epoch']}/{fit['epochs_run']}, step {fit['best_step']}/{fit['steps_run']}" if "best_step" in fit else "-"
        table.add_row(record["label"], str(record["seed"]), f"{fit.get('train_seconds', 0):.0f}", progress,
                      str(fit.get("stopped_by", "-")), str(fit.get("converged", "-")), f"{cell.get('mean', float('nan')):.4f}")
    Console(width=160).print(table)


if __name__ == "__main__":
    main()

"""Fine-tuning time and quality of the LEADER teacher on the synthetic cohort (the CPU critical path).

Fits ``leader_t`` from scratch (never from the disk cache) with a preset plus ``KEY=VALUE`` overrides (JSON
values), then prints the seconds spent preparing (tokenising, caching the frozen layers' output), training and
validating (wall clock, and the process's CPU seconds, which other work on the machine inflates less),
seconds per optimizer step, the best and last step, what stopped it, and the test PRAUC.

    OMP_NUM_THREADS=2 python benchmarks/teacher_speed.py [--patients 2000] [--preset quick] [--threads 2] [lora_layers=0 ...]
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from bench.metrics import prauc_per_sample
from data_prep.code_sets import multi_hot
from data_prep.prepare import load_dataset
from leader.teacher import LeaderTeacher, TeacherConfig


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patients", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--preset", default="quick")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("overrides", nargs="*", help="teacher config KEY=VALUE (JSON values)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    overrides = {key: json.loads(value) for key, value in (item.split("=", 1) for item in args.overrides)}
    dataset = load_dataset("synth", options={"patients": args.patients})
    train, val, test = (dataset.samples(part) for part in ("train", "val", "test"))
    teacher = LeaderTeacher(dataset, TeacherConfig.preset(args.preset, **overrides), seed=args.seed)
    teacher.on_progress = lambda done, total, status: print(f"step {done}/{total} {status}", flush=True) if status and done % 50 == 0 else None
    started, cpu_started = time.perf_counter(), time.process_time()
    teacher.fit_uncached(train, val)
    fit_seconds, fit_cpu_seconds = time.perf_counter() - started, time.process_time() - cpu_started
    report = teacher.fit_report
    prauc = float(prauc_per_sample(multi_hot([s.target for s in test], dataset.n_medications), teacher.predict_proba(test)).mean())
    print(json.dumps({
        "preset": args.preset, "overrides": overrides, "threads": args.threads, "fit_seconds": round(fit_seconds, 1), "fit_cpu_seconds": round(fit_cpu_seconds, 1),
        "prepare_seconds": round(report["prepare_seconds"], 1), "eval_seconds": round(report["eval_seconds"], 1),
        "seconds_per_step": round(report["seconds_per_step"], 3), "best_step": report["best_step"], "steps_run": report["steps_run"],
        "stopped_by": report["stopped_by"], "converged": report["converged"], "best_val_score": round(report["best_val_score"], 4),
        "test_prauc": round(prauc, 4),
    }))


if __name__ == "__main__":
    main()

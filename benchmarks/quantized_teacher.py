"""Memory and forward-pass time of a LEADER teacher's base model in fp32 and in int8 (``leader_t.quantization``).

Each configuration runs in a fresh process: it builds the teacher (LoRA adapters and head untrained, as a
fine-tuning starts), then times full forward passes over the synthetic cohort's first test prompts (median
of ``--repeats``), and reports the base model's weight bytes, the process's peak resident memory, and how far
the int8 pooled states h lie from fp32's (relative error, the same prompts). Quality after fine-tuning is
what ``bench ablate leader --compare int8-teacher --with-teacher`` measures.

    python benchmarks/quantized_teacher.py [--teachers minilm,smollm2] [--prompts 64] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import resource
import statistics
import time

import numpy as np


def measure(teacher_path: str, quantization: str, prompts: int, repeats: int, threads: int, patients: int) -> dict:
    import torch

    from data_prep.prepare import load_dataset
    from leader.quantization import weight_bytes
    from leader.teacher import LeaderTeacher, TeacherConfig

    torch.set_num_threads(threads)
    dataset = load_dataset("synth", options={"patients": patients})
    samples = dataset.samples("test")[:prompts]
    teacher = LeaderTeacher(dataset, TeacherConfig.preset("quick", teacher_path=teacher_path, quantization=quantization), seed=0)
    teacher._build()
    ids = teacher._token_ids(samples)
    pooled = lambda input_ids, mask, _: teacher.network.pooled(input_ids, mask)  # noqa: E731
    states = teacher._infer(ids, pooled)
    seconds = []
    for _ in range(repeats):
        started = time.perf_counter()
        teacher._infer(ids, pooled)
        seconds.append(time.perf_counter() - started)
    return {
        "teacher": teacher_path, "quantization": quantization, "threads": threads, "prompts": len(ids),
        "base_weight_mb": round(weight_bytes(teacher.network.backbone) / 2**20, 1),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "forward_seconds_median": round(statistics.median(seconds), 3), "states": states,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teachers", default="minilm,smollm2")
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--patients", type=int, default=1000)
    args = parser.parse_args()
    context = multiprocessing.get_context("spawn")
    for teacher_path in args.teachers.split(","):
        results = {}
        for quantization in ("none", "int8"):
            with context.Pool(1) as pool:
                results[quantization] = pool.apply(measure, (teacher_path, quantization, args.prompts, args.repeats, args.threads, args.patients))
        reference, int8 = results["none"].pop("states"), results["int8"].pop("states")
        relative = float(np.linalg.norm(int8 - reference, axis=1).mean() / np.linalg.norm(reference, axis=1).mean())
        for result in results.values():
            print(json.dumps({**result, "h_relative_error_vs_fp32": round(relative, 4) if result["quantization"] == "int8" else 0.0}))


if __name__ == "__main__":
    main()

"""Wall time of one model x seed grid with each executor, on the synthetic cohort.

    python benchmarks/grid.py [--models freq,mlp,retain,micron] [--seeds 0,1,2] [--patients 2000] [--jobs 2]

Each executor runs the same grid into a fresh results folder and cache, one executor after the other
(never two at once), and the script checks that every summary equals the local executor's. A grid's
units are independent, so on k workers the wall time approaches (sum of unit times) / k, bounded
below by the longest unit: with LEADER in the grid, the teacher's fine-tuning (the critical path,
which every student of its seed waits for).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table


def run(executor: str, args: argparse.Namespace, folder: Path) -> tuple[float, dict]:
    command = [str(Path(sys.executable).parent / "bench"), "run", "--models", args.models, "--seeds", args.seeds, "--preset", "quick",
               "--patients", str(args.patients), "--results-dir", str(folder / "results"), "--cache-dir", str(folder / "cache"),
               "--executor", executor, "--jobs", str(args.jobs)]
    started = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    elapsed = time.perf_counter() - started
    (summary,) = (folder / "results").glob("*/summary.json")
    return elapsed, json.loads(summary.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="freq,mlp,retain,micron")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--patients", type=int, default=2000)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--executors", default="local,processes,ray")
    args = parser.parse_args()
    table = Table(title=f"grid {args.models} x seeds {args.seeds}, synth {args.patients} patients, quick preset")
    for column in ("executor", "wall s", "units", "s per unit", "summary equals local"):
        table.add_column(column, justify="right")
    reference = None
    units = len(args.models.split(",")) * len(args.seeds.split(","))
    for executor in args.executors.split(","):
        with tempfile.TemporaryDirectory(prefix=f"grid-{executor}-") as scratch:
            elapsed, summary = run(executor, args, Path(scratch))
        reference = reference or summary["models"]
        table.add_row(executor + (f" --jobs {args.jobs}" if executor == "processes" else ""), f"{elapsed:.1f}", str(units),
                      f"{elapsed / units:.1f}", str(summary["models"] == reference))
    Console().print(table)


if __name__ == "__main__":
    main()

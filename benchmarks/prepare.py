"""Time and peak memory of ``prepare`` for the synthetic cohort at 2,000 and 100,000 patients.

Each size runs in a fresh subprocess (so one size's memory does not inflate the next one's peak)
against a temporary cache, with ``refresh=True``: the figure is a full prepare (generate, split, EHR
graph, save), not a cache hit. Peak memory is the child's maximum resident set size.

    python benchmarks/prepare.py [--quick]   # --quick: 2,000 patients only
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile

CHILD = """
import json, resource, sys, time
from data_prep.prepare import load_dataset
start = time.perf_counter()
dataset = load_dataset("synth", cache_dir=sys.argv[2], refresh=True, options={"patients": int(sys.argv[1])})
seconds = time.perf_counter() - start
print(json.dumps({"patients": len(dataset.patients), "seconds": seconds,
                  "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def measure(patients: int) -> dict:
    with tempfile.TemporaryDirectory() as cache:
        out = subprocess.run([sys.executable, "-c", CHILD, str(patients), cache], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2,000 patients only")
    sizes = [2_000] if parser.parse_args().quick else [2_000, 100_000]
    print(f"{'patients':>10} {'seconds':>9} {'peak RSS (MiB)':>15}")
    for size in sizes:
        figures = measure(size)
        print(f"{figures['patients']:>10,} {figures['seconds']:>9.1f} {figures['peak_rss_mib']:>15.0f}", flush=True)


if __name__ == "__main__":
    main()

"""Time and peak memory of ``prepare``: the synthetic cohort, and MIMIC-IV tables of MIMIC-IV's size.

``synth``: the synthetic cohort at 2,000 and 100,000 patients (generate, split, EHR graph, save).
``mimic4``: the synthetic cohort exported as MIMIC-IV tables (``bench data export --format mimic4``;
85,000 patients and 8 prescription rows per visit and class give about 15 million prescription rows,
MIMIC-IV 2.2's 15.4 million), then ``prepare --dataset mimic4`` on them.

Each prepare runs in a fresh subprocess against a temporary cache with ``refresh=True`` (a full
prepare, not a cache hit); peak memory is that child's maximum resident set size, CPU its user +
system time (pyarrow's reader threads included). The fingerprint identifies the prepared content,
so two versions of the readers can be compared on the same exported folder (``--tables DIR``).

    python benchmarks/prepare.py [--quick]                      # synth; --quick: 2,000 patients only
    python benchmarks/prepare.py mimic4 [--patients N] [--tables DIR]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CHILD = """
import json, resource, sys, time
from data_prep.prepare import load_dataset
name, cache, options = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
root = sys.argv[4] if len(sys.argv) > 4 else None
start = time.perf_counter()
dataset = load_dataset(name, paths={"root": root, "aux": root and f"{root}/aux"}, cache_dir=cache, refresh=True, options=options)
seconds = time.perf_counter() - start
usage = resource.getrusage(resource.RUSAGE_SELF)
print(json.dumps({"patients": len(dataset.patients), "visits": sum(len(p.visits) for p in dataset.patients), "seconds": seconds,
                  "cpu_seconds": usage.ru_utime + usage.ru_stime, "peak_rss_mib": usage.ru_maxrss / 1024,
                  "fingerprint": dataset.fingerprint, "prescription_rows": dataset.meta.get("mapping_coverage", {}).get("prescription_rows")}))
"""


def measure(name: str, options: dict, root: Path | None = None) -> dict:
    with tempfile.TemporaryDirectory() as cache:
        command = [sys.executable, "-c", CHILD, name, cache, json.dumps(options)] + ([str(root)] if root else [])
        out = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def export_mimic4(patients: int, rows_per_medication: float, folder: Path) -> float:
    from data_prep.export_tables import TableExportOptions, export_tables
    from data_prep.mimic_layout import MIMIC4
    from data_prep.synthetic import SyntheticOptions, generate

    start = time.perf_counter()
    export_tables(generate(SyntheticOptions(patients=patients)), folder, MIMIC4, options=TableExportOptions(rows_per_medication=rows_per_medication))
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", nargs="?", choices=["synth", "mimic4"], default="synth")
    parser.add_argument("--quick", action="store_true", help="synth: 2,000 patients only")
    parser.add_argument("--patients", type=int, default=85_000, help="mimic4: cohort size of the export")
    parser.add_argument("--rows-per-medication", type=float, default=8.0, help="mimic4: prescription rows per visit and class")
    parser.add_argument("--tables", type=Path, help="mimic4: prepare this exported folder (kept; exported first if empty)")
    args = parser.parse_args()
    print(f"{'source':>8} {'patients':>9} {'visits':>9} {'Rx rows':>11} {'wall s':>7} {'CPU s':>7} {'peak MiB':>9}  fingerprint")

    def show(source: str, figures: dict) -> None:
        rows = figures["prescription_rows"]
        print(
            f"{source:>8} {figures['patients']:>9,} {figures['visits']:>9,} {(f'{rows:,}' if rows else '-'):>11} {figures['seconds']:>7.1f} "
            f"{figures['cpu_seconds']:>7.1f} {figures['peak_rss_mib']:>9.0f}  {figures['fingerprint']}",
            flush=True,
        )

    if args.source == "synth":
        for size in [2_000] if args.quick else [2_000, 100_000]:
            show("synth", measure("synth", {"patients": size}))
        return
    with tempfile.TemporaryDirectory() as scratch:
        folder = args.tables or Path(scratch) / "mimic4"
        if not (folder / "hosp").is_dir():
            seconds = export_mimic4(args.patients, args.rows_per_medication, folder)
            print(f"(exported {args.patients:,} patients as MIMIC-IV tables in {seconds:.0f} s: {folder})", flush=True)
        show("mimic4", measure("mimic4", {}, folder))


if __name__ == "__main__":
    main()

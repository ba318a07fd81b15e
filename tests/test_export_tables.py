"""Round trips: synth -> MIMIC-IV / MIMIC-III tables (+ aux folder) -> prepare gives synth back; exports are atomic."""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest
from click.testing import CliRunner

from bench.cli import main
from data_prep.atomic import write_atomic
from data_prep.export_tables import TableExportOptions, export_tables
from data_prep.mimic import MimicOptions, locate, read_mimic
from data_prep.mimic_layout import MIMIC3, MIMIC4

LAYOUTS = {"mimic3": MIMIC3, "mimic4": MIMIC4}
from data_prep.synthetic import SyntheticOptions, generate
from round_trip import assert_same_cohort

AUX = Path(__file__).resolve().parents[2] / "shared" / "data" / "aux"


@pytest.fixture(scope="module")
def synth():
    return generate(SyntheticOptions(patients=150, seed=3))


@pytest.mark.parametrize("version", ["mimic4", "mimic3"])
def test_round_trip_through_mimic_tables(synth, tmp_path, version):
    export_tables(synth, tmp_path, LAYOUTS[version], aux=AUX, options=TableExportOptions(rows_per_medication=3))
    prepared = read_mimic(locate(LAYOUTS[version], tmp_path, tmp_path / "aux"), MimicOptions())
    assert_same_cohort(synth, prepared)
    coverage = prepared.meta["mapping_coverage"]
    assert coverage["rows_with_ndc"] < coverage["prescription_rows"]  # rows without an NDC were written
    windows = prepared.meta["prescription_rows_by_window"]
    assert windows["first-hours"] < windows["all"]  # late rows were written and the 24-hour rule removed them


def test_made_up_ndcs_without_aux_map_back_too(synth, tmp_path):
    export_tables(synth, tmp_path, MIMIC4)
    ndcs = gzip.decompress((tmp_path / "hosp" / "prescriptions.csv.gz").read_bytes()).decode()
    assert '"99999' in ndcs
    assert_same_cohort(synth, read_mimic(locate(MIMIC4, tmp_path, tmp_path / "aux"), MimicOptions()))


def test_a_failed_write_leaves_the_old_file(tmp_path):
    target = tmp_path / "table.csv"
    target.write_text("old")

    def dies_half_way(tmp: Path) -> None:
        tmp.write_text("half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_atomic(target, dies_half_way)
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["table.csv"]


def test_cli_export_formats(tmp_path):
    runner = CliRunner()
    for fmt in ("mimic4", "meds"):
        out = tmp_path / fmt
        result = runner.invoke(main, ["data", "export", "--patients", "60", "--format", fmt, "--out", str(out), "--cache-dir", str(tmp_path / "cache")])
        assert result.exit_code == 0, result.output
        assert (out / "aux" / "ndc2RXCUI.txt").is_file()
    assert (tmp_path / "mimic4" / "hosp" / "admissions.csv.gz").is_file()
    assert (tmp_path / "meds" / "metadata" / "subject_splits.parquet").is_file()

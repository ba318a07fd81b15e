"""Dataset sources register themselves; their options' fields and docstrings become the CLI's dataset flags."""

from __future__ import annotations

from dataclasses import dataclass
from importlib.metadata import EntryPoint

import pytest
from click.testing import CliRunner

from bench.cli import main
from bench.cli.options import dataset_flags
from conftest import make_tiny_dataset
from data_prep import sources
from data_prep.prepare import load_dataset
from data_prep.tables import DataError


@dataclass(frozen=True)
class ToyOptions:
    min_visits: int = 1
    """Drop patients with fewer visits."""
    label: str = "toy"


TOY = sources.DatasetSource("toy", "a third party's source", ToyOptions, lambda paths: sources.Located({}, lambda options: make_tiny_dataset(20)),
                            credentialed=False)


@pytest.fixture
def toy_registered(monkeypatch):
    real = sources.entry_points
    toy = EntryPoint("toy", "test_sources:TOY", sources.GROUP)
    monkeypatch.setattr(sources, "entry_points", lambda group: [*real(group=group), *([toy] if group == sources.GROUP else [])])
    sources._registered.cache_clear()
    yield
    sources._registered.cache_clear()


def test_built_in_sources_register_with_their_options():
    assert sources.available() == ["synth", "meds", "mimic3", "mimic4"]
    assert sources.get("mimic3").paths.keys() == {"root", "aux"} and not sources.get("synth").paths
    with pytest.raises(DataError, match="unknown dataset 'mimic5'; known datasets: synth"):
        sources.get("mimic5")


def test_field_docstrings_are_the_help_and_shared_fields_share_a_flag():
    assert sources.field_docs(ToyOptions) == {"min_visits": "Drop patients with fewer visits."}
    flags = {flag.param: flag for flag in dataset_flags()}
    assert flags["min_visits"].sources == ("meds", "mimic3", "mimic4") and flags["split_seed"].sources == ("synth", "meds", "mimic3", "mimic4")
    assert "synth_seed" in flags and "seed" not in flags  # bench profile's --seed is the training seed
    assert "Drop patients with fewer visits" in flags["min_visits"].settings["help"]


def test_a_third_party_source_is_one_module_and_an_entry_point(toy_registered, tmp_path):
    assert "toy" in sources.available()
    fields = {f.name: f for f in sources.option_fields()}
    assert fields["min_visits"].defaults["toy"] == 1 and fields["label"].defaults == {"toy": "toy"}
    dataset = load_dataset("toy", cache_dir=tmp_path, options={"min_visits": 2})
    assert dataset.meta["credentialed"] is False and len(dataset.patients) == 20
    with pytest.raises(DataError, match="unknown toy option"):
        load_dataset("toy", cache_dir=tmp_path, options={"patients": 3})


@pytest.mark.parametrize(
    "args, message",
    [
        (["data", "prepare", "--dataset", "mimic3", "--patients", "5"], "--patients applies to synth"),
        (["data", "prepare", "--dataset", "synth", "--ndc-prefix", "X//"], "--ndc-prefix applies to meds"),
        (["data", "prepare", "--dataset", "mimic3"], "needs --root and --aux"),
        (["data", "prepare", "--dataset", "synth", "--patients", "0"], "patients must be at least 1"),
    ],
)
def test_a_flag_of_another_source_or_a_bad_value_is_one_line(args, message):
    result = CliRunner().invoke(main, args)
    assert result.exit_code != 0 and message in result.output and "Traceback" not in result.output

"""A model family declared by a third-party package gets ``bench ablate`` and ``bench sweep`` without editing bench/."""

from __future__ import annotations

import json
from importlib.metadata import EntryPoint, entry_points

import pytest
from click.testing import CliRunner

import bench.cli.run as cli_run
from bench import registry
from bench.cli import main
from bench.contract import ModelFamily, Variant

TOY = ModelFamily(
    name="toy",
    model="mlp",
    label="MLP h8",
    ablations={"narrow": Variant("MLP h2", {"hidden_dim": 2}, "a narrower hidden layer")},
    sweepable={"hidden_dim": "hidden width"},
)


@pytest.fixture
def toy_registered(monkeypatch, tiny_dataset):
    real = entry_points

    def with_toy(group):
        points = list(real(group=group))
        return points + [EntryPoint("toy", "test_family:TOY", group)] if group == registry.FAMILIES else points

    monkeypatch.setattr(registry, "entry_points", with_toy)
    monkeypatch.setattr(cli_run, "load_data", lambda *args: tiny_dataset)
    return CliRunner()


@pytest.mark.slow
def test_a_plugin_family_is_ablated_and_swept_by_the_generic_commands(toy_registered, tmp_path):
    common = ["--preset", "quick", "--resamples", "20", "--results-dir", str(tmp_path), "--executor", "local", "--set", "epochs=2", "--set", "hidden_dim=8"]
    result = toy_registered.invoke(main, ["ablate", "toy", "--drop", "narrow", "--run-id", "a", *common])
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "a" / "summary.json").read_text())
    assert list(summary["models"]) == ["MLP h8", "MLP h2"] and set(summary["versus_full"]) == {"MLP h2"}
    swept = toy_registered.invoke(main, ["sweep", "toy", "--param", "hidden_dim", "--values", "2,4", "--run-id", "s", *common])
    assert swept.exit_code == 0, swept.output
    written = json.loads((tmp_path / "s" / "sweep_hidden_dim.json").read_text())
    assert written["values"] == [2, 4] and written["chosen_on_validation"] in {"hidden_dim=2", "hidden_dim=4"}
    unknown = toy_registered.invoke(main, ["ablate", "toy", "--drop", "kd", *common])
    assert unknown.exit_code != 0 and "choose from narrow" in unknown.output


def test_the_built_in_family_is_leaders_and_bench_names_no_family():
    (leader,) = [f for f in registry.families() if f.name == "leader"]
    assert (leader.model, leader.teacher) == ("leader_s", "leader_t")
    assert set(leader.ablations) == {"kd", "feature-kd", "align", "shared-visit"} and set(leader.sweepable) == {"alpha", "beta"}

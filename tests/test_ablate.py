"""``bench ablate leader`` and ``bench sweep leader`` end to end on tiny data with a tiny real teacher."""

from __future__ import annotations

import csv
import json

import pytest
from click.testing import CliRunner
from teacher_fixtures import make_tiny_teacher

import bench.cli.family as family_cli
import bench.cli.run as cli_run
from bench.cli import main
from bench.cli.family import choose_on_validation
from data_prep.cache import cache_root
from leader.family import LEADER


@pytest.fixture(scope="module")
def teacher_settings(tmp_path_factory):
    """--set options: a tiny random BERT teacher fine-tuned for a few steps, a 2-epoch student."""
    path = make_tiny_teacher(tmp_path_factory.mktemp("teacher"))
    overrides = {"teacher_path": str(path), "max_steps": 2, "eval_every": 1, "batch_size": 8, "max_length": 96}
    return ["--set", "epochs=2", "--set", "batch_size=8", "--set", f"teacher_overrides={json.dumps(overrides)}"]


@pytest.fixture
def tiny_cli(monkeypatch, tiny_dataset):
    monkeypatch.setattr(cli_run, "load_data", lambda *args: tiny_dataset)
    return CliRunner()


def invoke(runner, args):
    result = runner.invoke(main, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result


@pytest.mark.slow
def test_ablation_runs_the_chosen_variants_with_one_teacher(tiny_cli, teacher_settings, tmp_path):
    args = ["ablate", "leader", "--drop", "kd", "--drop", "align", "--compare", "temperature-kd", "--with-teacher",
            "--preset", "quick", "--resamples", "30", "--results-dir", str(tmp_path), "--run-id", "ablation", "--executor", "local", *teacher_settings]
    teachers = cache_root() / "teachers"
    stored = lambda: {p for p in teachers.iterdir() if p.is_dir()} if teachers.exists() else set()  # noqa: E731 (lock files aside)
    before = stored()
    invoke(tiny_cli, args)
    summary = json.loads((tmp_path / "ablation" / "summary.json").read_text())
    assert list(summary["models"]) == ["LEADER(T)", "LEADER(S)", "w/o KD", "w/o align", "temperature KD"]
    assert set(summary["retention"]) == {"LEADER(S)", "w/o KD", "w/o align", "temperature KD"}  # every variant
    assert set(summary["versus_full"]) == {"w/o KD", "w/o align", "temperature KD"}
    full, no_kd = (summary["models"][label]["overall"]["prauc"]["mean"] for label in ("LEADER(S)", "w/o KD"))
    assert summary["versus_full"]["w/o KD"]["overall"]["prauc"]["delta"] == pytest.approx(full - no_kd)
    assert summary["significance"]["LEADER(S)"]["overall"]["prauc"]["against"] in {"w/o KD", "w/o align", "temperature KD"}
    entries = {e["label"]: e["config"] for e in json.loads((tmp_path / "ablation" / "config.json").read_text())["entries"]}
    assert (entries["w/o KD"]["kd"], entries["w/o align"]["align"], entries["temperature KD"]["kd"]) == ("none", False, "temperature")
    assert entries["LEADER(S)"]["kd"] == "feature" and entries["LEADER(S)"]["epochs"] == 2
    assert len(stored() - before) == 1  # leader_t and every student share one fine-tuning
    distilled = {e["label"]: e["teacher"]["0"] for e in summary["entries"] if "teacher" in e}
    assert set(distilled) == {"LEADER(S)", "w/o align", "temperature KD"}  # w/o KD learns from no teacher
    assert len({t["cache_key"] for t in distilled.values()}) == 1 and {t["seed"] for t in distilled.values()} == {0}


def test_without_drop_or_compare_the_four_table_vi_variants_run():
    labels = [e.label for e in family_cli.ablation_entries(LEADER, list(LEADER.ablations), [], {"alpha": 0.8}, with_teacher=False)]
    assert labels == ["LEADER(S)", "w/o KD", "w/o feature-KD", "w/o align", "w/o shared E_Visit"]
    variant = family_cli.ablation_entries(LEADER, ["feature-kd"], [], {"alpha": 0.8, "kd": "feature"}, with_teacher=False)[1]
    assert variant.overrides == {"alpha": 0.8, "kd": "output"}


@pytest.mark.slow
def test_sweep_writes_results_plot_and_data(tiny_cli, teacher_settings, tmp_path):
    args = ["sweep", "leader", "--param", "beta", "--values", "0.1,0", "--preset", "quick", "--resamples", "30",
            "--results-dir", str(tmp_path), "--run-id", "sweep", "--executor", "local", *teacher_settings]
    invoke(tiny_cli, args)
    folder = tmp_path / "sweep"
    summary = json.loads((folder / "summary.json").read_text())
    assert list(summary["models"]) == ["beta=0.1", "beta=0"]
    with open(folder / "sweep_beta.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [(float(r["value"]), r["group"]) for r in rows[:3]] == [(0.1, "overall"), (0.1, "multi"), (0.1, "single")]
    assert float(rows[0]["test_prauc"]) == pytest.approx(summary["models"]["beta=0.1"]["overall"]["prauc"]["mean"])
    assert float(rows[0]["val_prauc"]) == pytest.approx(summary["validation"]["beta=0.1"]["overall"]["prauc"])
    written = json.loads((folder / "sweep_beta.json").read_text())
    assert written["values"] == [0.1, 0.0]
    best_on_validation = max(summary["validation"], key=lambda label: summary["validation"][label]["overall"]["prauc"])
    assert written["chosen_on_validation"] == best_on_validation
    assert {r["chosen"] for r in rows if float(r["value"]) == (0.1 if best_on_validation == "beta=0.1" else 0.0)} == {"True"}
    assert (folder / "sweep_beta.png").read_bytes()[:4] == b"\x89PNG"


def test_the_sweep_chooses_on_validation_whatever_test_says():
    """Test PRAUC favours one value, validation PRAUC the other: validation decides."""
    cell = lambda v: {"overall": {"prauc": {"mean": v}}}
    summary = {"models": {"a": cell(0.9), "b": cell(0.1)}, "validation": {"a": {"overall": {"prauc": 0.2}}, "b": {"overall": {"prauc": 0.3}}}}
    assert choose_on_validation(summary, ["a", "b"]) == "b"


@pytest.mark.parametrize(
    "args, message",
    [
        (["ablate", "leader", "--compare", "distil-kd"], "unknown ['distil-kd']"),
        (["ablate", "leader", "--set", "alpha"], "is not KEY=VALUE"),
        (["ablate", "leader", "--set", "kd=distil", "--drop", "align"], "kd='distil' is unknown"),
        (["sweep", "leader", "--param", "alpha", "--values", "0.1,x"], "not a comma-separated list of numbers"),
        (["sweep", "leader", "--param", "gamma", "--values", "0.1"], "unknown ['gamma']; choose from alpha, beta"),
        (["ablate", "nope"], "unknown model family 'nope'; known families: leader"),
        (["ablate", "leader", "--set", "epochs=fast"], "epochs='fast': expected int"),
    ],
)
def test_bad_arguments_fail_with_one_clear_message(tiny_cli, tmp_path, args, message):
    result = tiny_cli.invoke(main, [*args, "--results-dir", str(tmp_path)])
    assert result.exit_code != 0
    assert message in result.output


def test_with_teacher_adds_one_entry_per_distinct_teacher_of_the_students():
    entries = family_cli.ablation_entries(LEADER, [], ["multi-teacher", "smollm2-teacher", "int8-teacher", "curriculum"],
                                          {"teacher_overrides": {"max_steps": 3}}, with_teacher=True, preset="quick")
    teachers = [(e.label, e.overrides) for e in entries if e.model == "leader_t"]
    assert teachers == [  # "minilm" is the default teacher: the multi-teacher student shares its fine-tuning
        ("LEADER(T)", {"max_steps": 3}),
        ("LEADER(T) smollm2", {"max_steps": 3, "teacher_path": "smollm2"}),
        ("LEADER(T) quantization=int8", {"max_steps": 3, "quantization": "int8"}),
    ]
    int8 = next(e for e in entries if e.label == "int8 teacher")
    assert int8.overrides["teacher_overrides"] == {"max_steps": 3, "quantization": "int8"}  # merged, not replaced


def test_the_retention_table_renders_from_an_ablation_with_its_teacher(tiny_cli, teacher_settings, tmp_path):
    args = ["ablate", "leader", "--compare", "curriculum,layer-kd,specialty-weighting", "--with-teacher", "--preset", "quick",
            "--resamples", "30", "--results-dir", str(tmp_path), "--run-id", "retention", *teacher_settings]
    invoke(tiny_cli, args)
    summary = json.loads((tmp_path / "retention" / "summary.json").read_text())
    assert set(summary["retention_intervals"]["LEADER(T)"]) == {"LEADER(S)", "curriculum", "layer KD", "specialty-weighted"}
    cell = summary["retention_intervals"]["LEADER(T)"]["curriculum"]["overall"]["prauc"]
    assert cell["percent"] == pytest.approx(summary["retention"]["curriculum"]["overall"]["prauc"])
    fits = {e["label"]: e for e in summary["entries"]}
    assert fits["layer KD"]["teacher"]["0"]["layers"] == [1, 1]  # L/3 and 2L/3 of the tiny teacher's 2 layers
    for fmt in ("markdown", "terminal"):
        shown = invoke(tiny_cli, ["table", "--run", str(tmp_path / "retention"), "--table", "retention", "--format", fmt]).output
        assert "curriculum" in shown and "LEADER(T)" in shown and "%" in shown

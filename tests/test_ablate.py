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
        ("LEADER(T)", {"preset": "quick", "max_steps": 3}),
        ("LEADER(T) smollm2", {"preset": "quick", "max_steps": 3, "teacher_path": "smollm2"}),
        ("LEADER(T) quantization=int8", {"preset": "quick", "max_steps": 3, "quantization": "int8"}),
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


def ablation_spec(with_teacher: bool, settings: dict | None = None):
    from conftest import make_spec

    entries = family_cli.ablation_entries(LEADER, ["kd", "align"], [], settings or {}, with_teacher=with_teacher, preset="quick")
    return make_spec(entries, preset="quick", resamples=30, proposed=("LEADER(S)",), full_model="LEADER(S)")


def test_an_ablation_plans_its_students_teacher_as_a_unit_before_them(tiny_dataset, tmp_path):
    """No teacher entry: the teacher the students share is one unit of its own, first, and every student waits for it."""
    from bench.plan import plan_run
    from bench.results import RunFolder

    plan = plan_run(ablation_spec(False), tiny_dataset, RunFolder(tmp_path / "run"))
    first = plan.pending[0]
    assert (first.label, first.model, first.prerequisite) == ("LEADER(T) (for the students)", "leader_t", True)
    assert first.config.max_steps == registry_teacher_config("quick").max_steps  # the students' preset, not the paper's 3,000 steps
    assert [u.label for u in plan.pending[1:]] == ["LEADER(S)", "w/o KD", "w/o align"] and len(plan.prerequisites) == 1
    assert all(0 in plan.after[i] for i, unit in enumerate(plan.pending) if unit.model == "leader_s")
    assert [u.label for u in plan.units] == ["LEADER(S)", "w/o KD", "w/o align"]  # no results row of its own
    with_teacher = plan_run(ablation_spec(True), tiny_dataset, RunFolder(tmp_path / "other"))
    assert not with_teacher.prerequisites and with_teacher.pending[0].label == "LEADER(T)"  # the entry is the students' teacher


def registry_teacher_config(preset: str):
    from bench import registry

    return registry.get("leader_t").config_class.preset(preset)


@pytest.mark.slow
def test_an_ablation_shows_the_teachers_fine_tuning_before_the_students_train(tiny_dataset, teacher_settings, tmp_path):
    """The progress log: the teacher's steps come first, as their own unit; the students load it (one fine-tuning), and a rerun reuses everything."""
    import io

    from rich.console import Console

    from bench.runner import run

    settings = json.loads(teacher_settings[-1].split("=", 1)[1]) | {"max_steps": 3}  # a teacher no other test fine-tuned
    spec = ablation_spec(False, {"epochs": 2, "batch_size": 8, "teacher_overrides": settings})
    teachers = cache_root() / "teachers"
    stored = lambda: {p for p in teachers.iterdir() if p.is_dir()} if teachers.exists() else set()  # noqa: E731
    before, log = stored(), io.StringIO()
    summary = run(tiny_dataset, spec, tmp_path / "run", Console(file=log, width=200))
    lines = log.getvalue().splitlines()
    teacher_lines = [i for i, line in enumerate(lines) if "LEADER(T) (for the students) (seed 0):" in line]
    student_lines = [i for i, line in enumerate(lines) if "LEADER(S) (seed 0): 0/1 training" in line or "w/o align (seed 0): 0/1 training" in line]
    assert "fine-tune once, before its students" in log.getvalue()
    assert teacher_lines and student_lines and max(teacher_lines) < min(student_lines)
    assert any("/3 " in lines[i] for i in teacher_lines)  # its steps, not one opaque step
    assert len(stored() - before) == 1 and list(summary["models"]) == ["LEADER(S)", "w/o KD", "w/o align"]
    log = io.StringIO()
    run(tiny_dataset, spec, tmp_path / "run", Console(file=log, width=200))
    assert "plan: 0 of 4 units to train" in log.getvalue()

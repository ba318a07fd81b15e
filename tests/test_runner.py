"""The harness: bench.runner.run, resuming, determinism, "-" groups, the CLI and the profiler, on tiny data."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
from click.testing import CliRunner

import bench.cli.run as cli_run
from baselines.frequency import MostFrequent
from baselines.mlp import CurrentVisitMLP
from bench import registry
from bench.execute import IncompleteRunError
from bench.cli import main
from bench.contract import Capabilities
from bench.profiler import ProfileSettings, add_ratios, measure_model, rich_profile
from bench.results import RunFolder
from bench.spec import Entry
from conftest import run_spec

ENTRIES = [Entry("freq", "freq"), Entry("MLP h8", "mlp", {"hidden_dim": 8, "epochs": 3})]


def run(dataset, run_dir, entries=ENTRIES, **kwargs):
    return run_spec(dataset, entries, run_dir, **{"seeds": [1], "resamples": 20, "preset": "quick"} | kwargs)


def test_a_run_writes_every_file_and_a_complete_summary(tiny_dataset, tmp_path):
    summary = run(tiny_dataset, tmp_path / "r")
    folder = RunFolder(tmp_path / "r")
    for label in ("freq", "MLP h8"):
        assert folder.model_path(label, 1).exists() and folder.model_path(label, 1).with_suffix(".config.json").exists()
        assert folder.metrics_path(label, 1).exists() and folder.predictions_path(label, 1).exists()
    assert folder.model_path("MLP h8", 1).name == "MLP_h8.seed1.pt"
    config = json.loads(folder.config_path.read_text())
    assert config["entries"][1]["config"]["hidden_dim"] == 8 and config["seeds"] == [1]
    record = json.loads(folder.metrics_path("MLP h8", 1).read_text())
    assert record["environment"]["dataset_fingerprint"] == tiny_dataset.fingerprint and record["environment"]["versions"]["torch"]
    assert record["decision"] == {"rule": "threshold 0.5", "threshold": None}
    cell = summary["models"]["MLP h8"]["overall"]["prauc"]
    assert cell["seeds"] == [cell["mean"]] and cell["ci"][0] < cell["mean"] < cell["ci"][1] and cell["seed_sd"] is None
    assert summary["validation"]["MLP h8"]["overall"]["prauc"] > 0
    assert json.loads(folder.summary_path.read_text())["models"] == summary["models"]
    with np.load(folder.predictions_path("freq", 1)) as stored:
        assert stored["test_proba"].shape == (len(tiny_dataset.samples("test")), tiny_dataset.n_medications)
        assert stored["val_proba"].shape == (len(tiny_dataset.samples("val")), tiny_dataset.n_medications)
        assert "sample_ids" not in stored.files  # rows follow the protocol's order; no patient id is stored
    patient_ids = {p.patient_id for p in tiny_dataset.patients}
    for path in folder.root.rglob("*.json"):
        assert not any(f'"{pid}' in path.read_text() for pid in patient_ids), path


def test_same_seed_gives_identical_numbers(tiny_dataset, tmp_path):
    first, second = run(tiny_dataset, tmp_path / "a"), run(tiny_dataset, tmp_path / "b")
    assert first["models"] == second["models"]
    with np.load(RunFolder(tmp_path / "a").predictions_path("MLP h8", 1)) as a, np.load(RunFolder(tmp_path / "b").predictions_path("MLP h8", 1)) as b:
        np.testing.assert_array_equal(a["test_proba"], b["test_proba"])


def test_seeds_are_units_of_one_folder_and_a_rerun_trains_nothing(tiny_dataset, tmp_path, monkeypatch):
    summary = run(tiny_dataset, tmp_path / "r", seeds=[0, 1, 2])
    cell = summary["models"]["MLP h8"]["multi"]["prauc"]
    assert len(cell["seeds"]) == 3 and cell["mean"] == pytest.approx(np.mean(cell["seeds"]))
    assert cell["seed_sd"] == pytest.approx(np.std(cell["seeds"], ddof=1)) and cell["seed_sd"] > 0
    assert summary["models"]["MLP h8"]["multi"]["prauc"]["seeds"][1] == run(tiny_dataset, tmp_path / "one", seeds=[1])["models"]["MLP h8"]["multi"]["prauc"]["mean"]
    monkeypatch.setattr(CurrentVisitMLP, "fit", lambda self, t, v: pytest.fail("retrained"))
    monkeypatch.setattr(MostFrequent, "fit", lambda self, t, v: pytest.fail("retrained"))
    assert run(tiny_dataset, tmp_path / "r", seeds=[0, 1, 2])["models"] == summary["models"]
    fewer = run(tiny_dataset, tmp_path / "r", seeds=[2, 0])
    assert fewer["models"]["MLP h8"]["multi"]["prauc"]["seeds"] == [cell["seeds"][2], cell["seeds"][0]]


def test_changed_model_code_retrains_instead_of_reusing(tiny_dataset, tmp_path, monkeypatch):
    run(tiny_dataset, tmp_path / "r", entries=ENTRIES[1:])
    trained = []
    original = CurrentVisitMLP.fit
    monkeypatch.setattr(CurrentVisitMLP, "fit", lambda self, t, v: trained.append(1) or original(self, t, v))
    run(tiny_dataset, tmp_path / "r", entries=ENTRIES[1:])
    assert trained == []
    monkeypatch.setattr("bench.results.source_digest", lambda module: "edited")
    run(tiny_dataset, tmp_path / "r", entries=ENTRIES[1:])
    assert trained == [1]


def test_tuned_thresholds_are_chosen_on_validation_only(tiny_dataset, tmp_path):
    summary = run(tiny_dataset, tmp_path / "a", decision="tuned-jaccard")
    (mlp,) = [e for e in summary["entries"] if e["label"] == "MLP h8"]
    decision = mlp["decision"][1]
    assert decision["rule"] == "threshold tuned on validation jaccard" and 0 < decision["threshold"] < 1
    # other test labels: other test metrics, the same threshold
    relabelled = dataclasses.replace(tiny_dataset, patients=[
        p if tiny_dataset.split[p.patient_id] != "test" else dataclasses.replace(
            p, visits=(*p.visits[:-1], dataclasses.replace(p.visits[-1], medications=(0, 1, 2)))) for p in tiny_dataset.patients])
    other = run(relabelled, tmp_path / "b", decision="tuned-jaccard")
    (mlp_other,) = [e for e in other["entries"] if e["label"] == "MLP h8"]
    assert mlp_other["decision"][1] == decision
    assert other["models"]["MLP h8"]["overall"]["jaccard"]["mean"] != summary["models"]["MLP h8"]["overall"]["jaccard"]["mean"]


def test_non_finite_probabilities_fail_their_entry_with_its_name_and_the_others_finish(tiny_dataset, tmp_path, monkeypatch):
    with monkeypatch.context() as patch:
        patch.setattr(MostFrequent, "predict_proba", lambda self, samples: np.full((len(samples), tiny_dataset.n_medications), np.nan))
        with pytest.raises(IncompleteRunError, match=r"1 of 2 units failed.*\n  freq \(seed 1\): ModelOutputError: freq: predict_proba returned .* NaN"):
            run(tiny_dataset, tmp_path / "r")
    folder = RunFolder(tmp_path / "r")
    assert folder.predictions_path("MLP h8", 1).exists() and not folder.predictions_path("freq", 1).exists()
    monkeypatch.setattr(CurrentVisitMLP, "fit", lambda self, t, v: pytest.fail("a finished unit was retrained"))
    assert set(run(tiny_dataset, tmp_path / "r")["models"]) == {"freq", "MLP h8"}


def test_the_paper_procedure_reports_round_spread(tiny_dataset, tmp_path):
    summary = run(tiny_dataset, tmp_path / "r", stats="paper", resamples=5)
    cell = summary["models"]["MLP h8"]["overall"]["prauc"]
    assert cell["pm"] == cell["std"] and "ci" not in cell and summary["stats"]["procedure"] == "paper"


def test_an_interrupted_run_completes_without_retraining_finished_models(tiny_dataset, tmp_path, monkeypatch):
    def crash(self, train, val):
        raise KeyboardInterrupt("killed during the second model")

    monkeypatch.setenv("MEDREC_BENCH_CACHE", str(tmp_path / "cache"))  # no timing history: the entries' order runs
    with monkeypatch.context() as patch:
        patch.setattr(CurrentVisitMLP, "fit", crash)
        with pytest.raises(KeyboardInterrupt):
            run(tiny_dataset, tmp_path / "r")
    folder = RunFolder(tmp_path / "r")
    assert folder.predictions_path("freq", 1).exists() and not folder.predictions_path("MLP h8", 1).exists()
    assert not list(folder.root.rglob("*.tmp"))

    def must_not_train(self, train, val):
        raise AssertionError("freq was trained again")

    monkeypatch.setattr(MostFrequent, "fit", must_not_train)
    resumed = run(tiny_dataset, tmp_path / "r")
    assert set(resumed["models"]) == {"freq", "MLP h8"}
    assert resumed["models"] == run(tiny_dataset, tmp_path / "fresh", entries=ENTRIES[1:])["models"] | {"freq": resumed["models"]["freq"]}


def test_changed_overrides_retrain_only_that_entry(tiny_dataset, tmp_path, monkeypatch):
    run(tiny_dataset, tmp_path / "r")
    trained = []
    original = CurrentVisitMLP.fit
    monkeypatch.setattr(CurrentVisitMLP, "fit", lambda self, t, v: trained.append(self.config.hidden_dim) or original(self, t, v))
    monkeypatch.setattr(MostFrequent, "fit", lambda self, t, v: pytest.fail("freq retrained"))
    run(tiny_dataset, tmp_path / "r", entries=[ENTRIES[0], Entry("MLP h8", "mlp", {"hidden_dim": 4, "epochs": 3})])
    assert trained == [4]


def test_a_folder_of_another_protocol_is_not_resumed(tiny_dataset, tmp_path):
    run(tiny_dataset, tmp_path / "r", entries=ENTRIES[:1])
    with pytest.raises(ValueError, match="protocol"):
        run(tiny_dataset, tmp_path / "r", entries=ENTRIES[:1], protocol="all-visits")


class HistoryOnly(MostFrequent):
    name = "hist"
    capabilities = Capabilities(needs_history_medications=True)


def test_history_models_get_dashes_and_proposed_models_get_tests(tiny_dataset, tmp_path, monkeypatch):
    known = registry.get
    monkeypatch.setattr(registry, "get", lambda name: HistoryOnly if name == "hist" else known(name))
    summary = run(tiny_dataset, tmp_path / "r", entries=[*ENTRIES, Entry("H", "hist")], proposed=["H"], retention_of="freq")
    assert summary["models"]["H"]["overall"] is None and summary["models"]["H"]["single"] is None
    assert summary["models"]["H"]["multi"]["prauc"]["mean"] > 0
    assert set(summary["significance"]["H"]) == {"multi"}
    assert summary["significance"]["H"]["multi"]["prauc"]["against"] in {"freq", "MLP h8"}
    assert summary["retention"]["H"]["multi"]["prauc"] == pytest.approx(
        100 * summary["models"]["H"]["multi"]["prauc"]["mean"] / summary["models"]["freq"]["multi"]["prauc"]["mean"]
    )
    with np.load(RunFolder(tmp_path / "r").predictions_path("H", 1)) as stored:
        assert not stored["test_served"][[s.group == "single" for s in tiny_dataset.samples("test")]].any()


@pytest.mark.parametrize(
    "entries, message",
    [
        ([Entry("a", "freq"), Entry("a", "mlp")], "duplicate"),
        ([Entry("w/o KD", "freq"), Entry("w o KD", "mlp")], "same file name"),
        ([Entry("x", "mlp", {"no_such_option": 1})], "no_such_option"),
    ],
)
def test_bad_entries_fail_before_training(tiny_dataset, tmp_path, entries, message):
    with pytest.raises(ValueError, match=message):
        run(tiny_dataset, tmp_path / "r", entries=entries)
    assert not (tmp_path / "r").exists()


def test_unknown_model_fails_before_training(tiny_dataset, tmp_path):
    with pytest.raises(registry.UnknownModelError, match="known models"):
        run(tiny_dataset, tmp_path / "r", entries=[Entry("x", "nope")])


# ----- CLI ---------------------------------------------------------------------------------------
@pytest.fixture
def cli(tiny_dataset, monkeypatch):
    monkeypatch.setattr(cli_run, "dataset_from_options", lambda **kwargs: tiny_dataset)
    monkeypatch.setattr(cli_run, "load_data", lambda *args: tiny_dataset)
    return CliRunner()


def test_bench_run_prints_tables_resumes_and_feeds_bench_table(cli, tmp_path):
    args = ["run", "--models", "freq,mlp", "--preset", "quick", "--resamples", "30", "--results-dir", str(tmp_path), "--executor", "local"]
    first = cli.invoke(main, args)
    assert first.exit_code == 0, first.output
    assert "Effectiveness" in first.output and "Multi-visit" in first.output and "freq" in first.output
    (run_dir,) = tmp_path.iterdir()
    second = cli.invoke(main, args)
    assert second.exit_code == 0 and "reuse (run folder)" in second.output
    assert list(tmp_path.iterdir()) == [run_dir]
    latex = cli.invoke(main, ["table", "--run", str(run_dir), "--format", "latex"])
    assert latex.exit_code == 0 and r"\begin{tabular}" in latex.output and r"\pm" in latex.output
    out = tmp_path / "t.md"
    assert cli.invoke(main, ["table", "--run", str(run_dir), "--format", "markdown", "--table", "ablation", "--out", str(out)]).exit_code == 0
    assert out.read_text().startswith("| Model | Overall PRAUC |")


@pytest.mark.parametrize(
    "args, message",
    [
        (["run", "--models", "freq,nope"], "unknown model 'nope'; known models:"),
        (["run", "--dataset", "nope"], "'nope' is not one of"),
        (["table", "--run", "/nonexistent/run"], "run directory /nonexistent/run does not exist"),
        (["profile", "--models", "freq", "--run", "/nonexistent/run"], "does not exist"),
    ],
)
def test_bad_arguments_give_one_clear_error(cli, args, message):
    result = cli.invoke(main, args)
    assert result.exit_code != 0 and message in result.output and "Traceback" not in result.output


def test_profiler_measures_saved_weights(tiny_dataset, tmp_path):
    """The measurement a fresh process runs, called in-process: spawning costs more than this test's budget."""
    run(tiny_dataset, tmp_path / "r")
    folder = RunFolder(tmp_path / "r")
    mlp = measure_model(tiny_dataset, ENTRIES[1], str(folder.model_path("MLP h8", 1)), ProfileSettings(repeats=3), 1)
    assert mlp["params_trainable"] == mlp["params_total"] == (18 * 8 + 8) + (8 * 8 + 8)
    assert mlp["latency_ms_per_patient"] > 0 and mlp["latency_ms_batch1"] > 0
    assert mlp["inference_peak_mb"] >= 0 and mlp["memory_kind"] == "rss above the loaded model"
    assert mlp["weights_mb"] == pytest.approx(4 * ((18 * 8 + 8) + (8 * 8 + 8)) / 2**20)  # float32 weights, counted on every device alike
    freq = measure_model(tiny_dataset, ENTRIES[0], str(folder.model_path("freq", 1)), ProfileSettings(repeats=3, latency=False), 1)
    assert (freq["params_trainable"], freq["params_total"]) == (0, tiny_dataset.n_medications) and "latency_ms_batch1" not in freq
    rows = [mlp, freq | {"latency_ms_per_patient": 2 * mlp["latency_ms_per_patient"]}]
    add_ratios(rows, "MLP h8")
    assert rows[0]["latency_ratio"] == 1.0 and rows[1]["latency_ratio"] == pytest.approx(2.0) and rows[1]["params_ratio"] == pytest.approx(8 / 224)
    assert rows[1]["weights_ratio"] == pytest.approx(freq["weights_mb"] / mlp["weights_mb"])
    assert "Weights MB" in [c.header for c in rich_profile({"dataset": "d", "device": "cpu", "threads": 1, "reference": "MLP h8", "rows": rows}).columns]


def test_profile_without_a_run_trains_the_quick_preset_on_a_cpu_and_says_how_to_avoid_it(cli, tiny_dataset, tmp_path, monkeypatch):
    """Never the paper preset's teacher unasked: the plan is the quick preset, with an estimate from earlier trainings and a pointer to --run."""
    from bench.results import TimingHistory

    seen = []
    monkeypatch.setattr(cli_run, "dataset_from_options", lambda **values: tiny_dataset)
    monkeypatch.setattr(cli_run, "profile_entries", lambda dataset, entries, settings, run_dir: seen.append((settings, run_dir)) or {
        "dataset": "tiny", "device": "cpu", "threads": 1, "reference": None, "rows": []})
    config = registry.get("mlp").config_class.preset("quick").to_dict()
    TimingHistory().record(TimingHistory.key("mlp", config, tiny_dataset.fingerprint, "last-visit"), 12.0)
    paper_run = tmp_path / "results" / "old"
    paper_run.mkdir(parents=True)
    (paper_run / "config.json").write_text(json.dumps({"dataset_fingerprint": tiny_dataset.fingerprint, "preset": "paper"}))
    args = ["profile", "--models", "leader_t,mlp", "--results-dir", str(tmp_path / "results"), "--out", str(tmp_path / "p.json")]
    result = cli.invoke(main, args)
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert seen[0][0].preset == "quick" and seen[0][1] is None
    assert "at the quick preset" in text and "about 12 s by earlier trainings" in text and "leader_t never trained here" in text
    assert "--run" in text and "--preset" in text
    assert "3000 steps" not in text  # the paper teacher's budget is not what it trains
    assert cli.invoke(main, [*args, "--preset", "harness"]).exit_code == 0 and seen[1][0].preset == "harness"  # asked for


def test_an_experiment_file_equals_its_flags_and_is_recorded(cli, tmp_path):
    experiment = tmp_path / "exp.toml"
    experiment.write_text('models = ["freq", "mlp"]\nseeds = [0, 1]\npreset = "quick"\nresamples = 30\n\n[overrides.mlp]\nepochs = 2\nhidden_dim = 8\n')
    results = tmp_path / "results"
    from_file = cli.invoke(main, ["run", "--config", str(experiment), "--results-dir", str(results), "--executor", "local"])
    assert from_file.exit_code == 0, from_file.output
    (run_dir,) = results.iterdir()
    config = json.loads((run_dir / "config.json").read_text())
    assert config["seeds"] == [0, 1] and config["entries"][1]["config"]["hidden_dim"] == 8
    assert config["experiment_file"]["text"] == experiment.read_text()
    flags = ["run", "--models", "freq,mlp", "--seeds", "0,1", "--preset", "quick", "--resamples", "30", "--set", "mlp.epochs=2", "--set", "mlp.hidden_dim=8"]
    same = cli.invoke(main, [*flags, "--results-dir", str(results), "--executor", "local"])
    assert same.exit_code == 0 and "reuse (run folder)" in same.output and list(results.iterdir()) == [run_dir]
    bad = tmp_path / "bad.toml"
    bad.write_text('modles = ["freq"]\n')
    result = cli.invoke(main, ["run", "--config", str(bad)])
    assert result.exit_code != 0 and "unknown key(s) ['modles']" in result.output


def test_a_shared_copy_holds_aggregates_only_and_still_makes_tables(cli, tmp_path):
    results = tmp_path / "results"
    assert cli.invoke(main, ["run", "--models", "freq,mlp", "--preset", "quick", "--resamples", "20", "--results-dir", str(results), "--executor", "local"]).exit_code == 0
    (run_dir,) = results.iterdir()
    shared = tmp_path / "shared"
    result = cli.invoke(main, ["share", "--run", str(run_dir), "--out", str(shared)])
    assert result.exit_code == 0, result.output
    names = {p.relative_to(shared).as_posix() for p in shared.rglob("*") if p.is_file()}
    assert "summary.json" in names and "config.json" in names and "metrics/mlp.seed0.json" in names
    assert not any(n.startswith(("models/", "predictions/")) for n in names)
    table = cli.invoke(main, ["table", "--run", str(shared), "--format", "markdown"])
    assert table.exit_code == 0 and "| mlp |" in table.output
    again = cli.invoke(main, ["share", "--run", str(run_dir), "--out", str(shared)])
    assert again.exit_code != 0 and "exists" in again.output


def test_a_run_on_credentialed_data_is_readable_by_its_owner_only(tiny_dataset, tmp_path):
    credentialed = dataclasses.replace(tiny_dataset, meta={**tiny_dataset.meta, "credentialed": True})
    run(credentialed, tmp_path / "r", entries=ENTRIES[:1])
    assert (tmp_path / "r").stat().st_mode & 0o777 == 0o700
    open_data = dataclasses.replace(tiny_dataset, meta={**tiny_dataset.meta, "credentialed": False})
    run(open_data, tmp_path / "open", entries=ENTRIES[:1])
    assert (tmp_path / "open").stat().st_mode & 0o777 != 0o700


def test_deterministic_kernels_are_recorded_and_keyed(tiny_dataset, tmp_path):
    import torch

    try:
        summary = run(tiny_dataset, tmp_path / "r", entries=ENTRIES[1:], deterministic=True)
        assert torch.are_deterministic_algorithms_enabled()
    finally:
        torch.use_deterministic_algorithms(False)
    config = json.loads((tmp_path / "r" / "config.json").read_text())
    assert config["deterministic"] is True
    record = json.loads(RunFolder(tmp_path / "r").metrics_path("MLP h8", 1).read_text())
    assert record["fit_report"]["determinism"]["enabled"] and record["fit_report"]["determinism"]["cuda_raises"] == []
    assert summary["models"] == run(tiny_dataset, tmp_path / "r2", entries=ENTRIES[1:])["models"]  # CPU kernels were already deterministic
    with np.load(RunFolder(tmp_path / "r").predictions_path("MLP h8", 1)) as a, np.load(RunFolder(tmp_path / "r2").predictions_path("MLP h8", 1)) as b:
        assert str(a["entry_key"]) != str(b["entry_key"])


def test_profile_without_run_uses_the_latest_finished_run_on_the_same_data(cli, tiny_dataset, tmp_path):
    results = tmp_path / "results"
    assert cli.invoke(main, ["run", "--models", "freq,mlp", "--preset", "quick", "--resamples", "20", "--results-dir", str(results), "--executor", "local"]).exit_code == 0
    (run_dir,) = results.iterdir()
    assert cli_run.latest_run(results, tiny_dataset.fingerprint, ["freq", "mlp"], 0) == run_dir
    assert cli_run.latest_run(results, tiny_dataset.fingerprint, ["freq", "mlp"], 1) is None  # that seed was not trained
    assert cli_run.latest_run(results, "other data", ["freq"], 0) is None


def test_model_selection_on_validation_jaccard_is_an_option(tiny_dataset):
    from bench.training import validation_score

    model = CurrentVisitMLP(tiny_dataset, CurrentVisitMLP.config_class.preset("quick", epochs=3, selection="jaccard"), seed=0)
    model.fit(tiny_dataset.samples("train"), tiny_dataset.samples("val"))
    val = tiny_dataset.samples("val")
    kept = model.fit_report["best_val_score"]
    assert kept == pytest.approx(validation_score(model, val, model.predict_proba(val)))
    sets = model.predict_sets(val, model.predict_proba(val))
    jaccards = [len(set(s) & set(v.target)) / max(len(set(s) | set(v.target)), 1) for s, v in zip(sets, val)]
    assert kept == pytest.approx(np.mean(jaccards))
    with pytest.raises(ValueError, match="selection='f1'"):
        CurrentVisitMLP.config_class.preset("quick", selection="f1")


def test_tables_order_is_not_run_order_teacher_first_then_longest_first(tiny_dataset, tmp_path, monkeypatch):
    """The plan runs the teacher first, its student next, then the rest longest first by this machine's timing
    history (a unit never timed counts as longest), whatever order the entries are shown in."""
    from bench.plan import plan_run
    from bench.results import TimingHistory
    from conftest import make_spec

    monkeypatch.setenv("MEDREC_BENCH_CACHE", str(tmp_path / "cache"))
    entries = [Entry("freq", "freq"), Entry("repeat", "repeat"), Entry("mlp", "mlp"), Entry("LEADER(T)", "leader_t"), Entry("LEADER(S)", "leader_s")]
    spec = make_spec(entries, preset="quick")

    def pending():
        return [unit.label for unit in plan_run(spec, tiny_dataset, RunFolder(tmp_path / "r")).pending]

    assert pending() == ["LEADER(T)", "LEADER(S)", "freq", "repeat", "mlp"]  # nothing timed: the entries' order
    plan = plan_run(spec, tiny_dataset, RunFolder(tmp_path / "r"))
    for label, seconds in (("freq", 1.0), ("mlp", 40.0)):
        unit = plan.units_of(label)[0]
        TimingHistory().record(TimingHistory.key(unit.model, unit.config.to_dict(), tiny_dataset.fingerprint, spec.protocol), seconds)
    assert pending() == ["LEADER(T)", "LEADER(S)", "repeat", "mlp", "freq"]  # repeat never timed, then 40 s, then 1 s
    TimingHistory().record("another config or data", 90.0, "repeat")
    TimingHistory().record("another config or data", 0.5, "mlp")  # the latest of mlp, but not this unit's own time
    assert pending() == ["LEADER(T)", "LEADER(S)", "repeat", "mlp", "freq"]  # 90 s (repeat's latest anywhere), 40 s, 1 s
    TimingHistory().record("another config or data", 0.1, "repeat")
    assert pending() == ["LEADER(T)", "LEADER(S)", "mlp", "freq", "repeat"]
    assert plan_run(spec, tiny_dataset, RunFolder(tmp_path / "r")).spec.labels == [e.label for e in entries]  # shown as given


def test_a_first_run_starts_the_models_declared_longest_first(tiny_dataset, tmp_path, monkeypatch):
    """With no timing on this machine, the plan orders by each model's declared typical_seconds (a model that
    declares none counts as longest), so the display order does not decide a first run's length."""
    from bench.plan import plan_run
    from bench.results import TimingHistory
    from conftest import make_spec

    monkeypatch.setenv("MEDREC_BENCH_CACHE", str(tmp_path / "cache"))
    for name, seconds in (("freq", None), ("mlp", 9.0), ("retain", 60.0)):
        monkeypatch.setattr(registry.get(name), "typical_seconds", seconds)
    spec = make_spec([Entry("mlp", "mlp"), Entry("retain", "retain"), Entry("freq", "freq")], preset="quick")
    assert [unit.label for unit in plan_run(spec, tiny_dataset, RunFolder(tmp_path / "r")).pending] == ["freq", "retain", "mlp"]
    unit = plan_run(spec, tiny_dataset, RunFolder(tmp_path / "r")).units_of("mlp")[0]
    TimingHistory().record(TimingHistory.key("mlp", unit.config.to_dict(), tiny_dataset.fingerprint, spec.protocol), 120.0)
    assert [unit.label for unit in plan_run(spec, tiny_dataset, RunFolder(tmp_path / "r")).pending] == ["freq", "mlp", "retain"]  # this machine's time wins


def test_the_summary_places_each_entry_and_tests_it_against_each_columns_best(tiny_dataset, tmp_path):
    summary = run(tiny_dataset, tmp_path / "r")
    assert [(e["label"], e["section"]) for e in summary["entries"]] == [("freq", "floors"), ("MLP h8", "floors")]
    for group in ("overall", "multi", "single"):
        best = max(summary["models"], key=lambda label: summary["models"][label][group]["prauc"]["mean"])
        other = next(label for label in summary["models"] if label != best)
        test = summary["versus_best"][other][group]["prauc"]
        assert test["against"] == best and test["delta"] <= 0 and 0 <= test["p"] <= 1
        assert "prauc" not in summary["versus_best"][best].get(group, {})

"""``bench run``, ``bench profile`` and ``bench table``: train and evaluate, measure efficiency, render tables.

Errors a user can fix (unknown model, unknown dataset, a run folder that is missing or belongs to
other arguments) end in one line and a non-zero exit, not a traceback.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Sequence

import click
from rich.console import Console

from bench import registry, tables
from bench.cli import main
from bench.cli.options import (
    dataset_from_options,
    dataset_options,
    evaluation_options,
    executor_options,
    experiment_file,
    load_data,
    model_entries,
    model_names,
    model_options,
    models_option,
    preset_option,
    run_spec,
)
from bench.execute import IncompleteRunError
from bench.profiler import ProfileSettings, profile_entries, rich_profile
from bench.contract import PRESETS
from bench.results import RunFolder, TimingHistory, read_json, write_json, write_text
from bench.runner import run
from data_prep.cache import stable_hash
from data_prep.protocol import PROTOCOLS

WIDE = 200  # a table printed into a file or pipe is not wrapped to 80 columns


def _console() -> Console:
    probe = Console()
    return probe if probe.is_terminal else Console(width=WIDE)


def execute_spec(spec, values: dict, console: Console) -> tuple[dict, Path]:
    """Load the spec's dataset, run it into its folder (``--run-id`` or the spec's id), return the summary
    and the folder; errors a user can fix are one line."""
    dataset = load_data(spec.dataset, values.get("cache_dir"), bool(values.get("refresh")))
    run_dir = Path(values["results_dir"]) / (values["run_id"] or spec.run_id(dataset.fingerprint))
    console.print(f"run folder: {run_dir}")
    try:
        return run(dataset, spec, run_dir, console), run_dir
    except (ValueError, IncompleteRunError) as error:
        raise click.ClickException(str(error)) from None


@main.command("run")
@click.option("--config", "config_file", type=click.Path(path_type=Path, exists=True, dir_okay=False), callback=experiment_file, is_eager=True,
              expose_value=True, help="An experiment file (TOML): models, seeds, dataset, per-model overrides, any option; flags override it.")
@models_option
@dataset_options
@preset_option("Model configs: each model's published configuration (paper), the harness's mini-batch changes, or those sized for a 2-core CPU (quick).")
@evaluation_options
@click.option("--proposed", help="Comma-separated labels tested against the best baseline [the models of registered families, e.g. LEADER's].")
@click.option("--retention-of", help="Label whose scores the proposed models' retention is measured against [a run student's teacher].")
@model_options
@click.option("--device", default="cpu", show_default=True, help="torch device, e.g. cuda:0.")
@click.option("--deterministic", is_flag=True, help="torch's deterministic algorithms (an op without one raises); each fit record says which ops take a slower kernel or have none on CUDA.")
@executor_options
@click.option("--run-id", help="Folder name under --results-dir [derived from the run's spec and data, so a rerun resumes].")
@click.option("--results-dir", type=click.Path(path_type=Path), default=Path("results"), show_default=True)
def run_command(**values):
    """Train, evaluate and tabulate models; rerunning the same command resumes the same run folder."""
    entries = model_entries(model_names(values["models_spec"]), values["teacher_path"], values["gguf_file"], values["settings"])
    console = _console()
    summary, run_dir = execute_spec(run_spec(values, entries), values, console)
    for table in ("main", "safety"):
        console.print(tables.rich_table(summary, table))
    console.print(f"results: {run_dir}  (LaTeX: bench table --run {run_dir} --format latex)")


@main.command("table")
@click.option("--run", "run_dir", type=click.Path(path_type=Path), required=True, help="A run folder, results/<run-id>.")
@click.option("--format", "fmt", type=click.Choice([*tables.FORMATS, "terminal"]), default="latex", show_default=True, help="terminal: a rich table on standard output.")
@click.option("--table", "table", type=click.Choice(list(tables.TABLES)), default="main", show_default=True,
              help="main: Tables IV/V; ablation: Table VI; safety: DDI and #meds; retention: each student as a percentage of each teacher (DistilLLM-Med).")
@click.option("--holm/--no-holm", default=None, help="Holm-correct the stars across each row's columns [as the run was made].")
@click.option("--out", type=click.Path(path_type=Path), help="Write to this file instead of standard output.")
def table_command(run_dir, fmt, table, holm, out):
    """Render a finished run's summary as LaTeX, Markdown or CSV (nothing is retrained)."""
    if fmt == "terminal" and out is not None:
        raise click.UsageError("--format terminal prints to the terminal; write --out files as latex, markdown or csv")
    try:
        summary = read_json(RunFolder(run_dir).require().summary_path)
        if fmt == "terminal":
            _console().print(tables.rich_retention(summary) if table == "retention" else tables.rich_table(summary, table))
            return
        text = tables.render(summary, fmt, table, holm=holm)
    except (FileNotFoundError, ValueError, KeyError) as error:
        raise click.ClickException(str(error)) from None
    if out is None:
        click.echo(text, nl=False)
    else:
        write_text(out, text)
        click.echo(f"wrote {out}", err=True)


def latest_run(results_dir: Path, fingerprint: str, labels: Sequence[str], seed: int) -> Path | None:
    """The most recently finished run folder on this data holding trained weights of every label at ``seed``."""
    candidates = []
    for config_path in Path(results_dir).glob("*/config.json"):
        folder = RunFolder(config_path.parent)
        try:
            config = read_json(config_path)
        except ValueError:
            continue
        if (config.get("dataset_fingerprint") == fingerprint and folder.summary_path.exists()
                and all(folder.model_path(label, seed).exists() for label in labels)):
            candidates.append((folder.summary_path.stat().st_mtime, folder.root))
    return max(candidates)[1] if candidates else None


def training_preset(results_dir: Path, fingerprint: str, device: str) -> str:
    """The preset ``bench profile`` trains at when no run gives the weights and none is named: on a CPU the
    quick one (the paper preset's teacher is 3,000 steps of 2,048-token prompts), elsewhere the latest run's
    on this data, else the paper's."""
    if device == "cpu":
        return "quick"
    runs = []
    for config_path in Path(results_dir).glob("*/config.json"):
        try:
            config = read_json(config_path)
        except ValueError:
            continue
        if config.get("dataset_fingerprint") == fingerprint and config.get("preset") in PRESETS:
            runs.append((config_path.stat().st_mtime, config["preset"]))
    return max(runs)[1] if runs else "paper"


def training_notice(results_dir: Path, names: Sequence[str], seed: int, entries, preset: str, protocol: str, fingerprint: str) -> str:
    """What ``bench profile`` is about to train, at which preset, how long that took here before, and how to avoid it."""
    history, known, unknown, budgets = TimingHistory(), 0.0, [], []
    for entry in entries:
        model_class = registry.get(entry.model)
        config = model_class.config_class.preset(preset, **entry.overrides)
        seconds = history.get(TimingHistory.key(entry.model, config.to_dict(), fingerprint, protocol))
        budgets.append(f"{entry.label} {model_class.training_budget(config)}" + ("" if seconds is None else f" (~{seconds:.0f} s)"))
        known += seconds or 0.0
        if seconds is None:
            unknown.append(entry.label)
    estimate = f"about {known:.0f} s by earlier trainings on this machine" + (f", plus {', '.join(unknown)} never trained here" if unknown else "")
    return (f"no finished run under {results_dir} trained {', '.join(names)} at seed {seed} on this data: training them now at the {preset} "
            f"preset (--preset to choose), {estimate}: " + "; ".join(budgets)
            + f". To measure trained models instead: --run {results_dir}/<run-id> (a run of bench run/ablate that trained them).")


@main.command("share")
@click.option("--run", "run_dir", type=click.Path(path_type=Path), required=True, help="A finished run folder.")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="The shareable copy (a new folder).")
def share_command(run_dir, out):
    """A copy of a run with aggregates only (config, summary, fit reports): no weights, no per-patient predictions.

    ``bench table --run OUT`` works from it. Built beside ``OUT`` and renamed into place.
    """
    try:
        copied = RunFolder(run_dir).share(out)
    except (FileNotFoundError, FileExistsError) as error:
        raise click.ClickException(str(error)) from None
    click.echo(f"wrote {out} ({copied} files: config, summary, fit reports; no weights or predictions)", err=True)


@main.command("profile")
@models_option
@dataset_options
@click.option("--latency/--no-latency", default=True, show_default=True, help="Measure inference latency.")
@click.option("--memory/--no-memory", default=True, show_default=True, help="Measure the weights' memory and the inference peak above them.")
@click.option("--preset", type=click.Choice(PRESETS), help="When no run gives the weights: the preset to train them at [quick on a CPU; "
              "else the latest run's on this data, or paper].")
@click.option("--seed", type=int, default=0, show_default=True, help="Training seed (of the run folder's units, with --run).")
@click.option("--protocol", type=click.Choice(list(PROTOCOLS)), default="last-visit", show_default=True)
@click.option("--run", "run_dir", type=click.Path(path_type=Path), help="Reuse this run folder's trained weights instead of training.")
@click.option("--reference", help="Model whose latency and memory the others are divided by, e.g. a teacher.")
@click.option("--repeats", type=click.IntRange(min=1), default=30, show_default=True, help="Batch-size-1 calls timed per model.")
@model_options
@click.option("--device", default="cpu", show_default=True)
@click.option("--results-dir", type=click.Path(path_type=Path), default=Path("results"), show_default=True, help="Where to look for a finished run when --run is not given, and where profile-<id>.json goes then.")
@click.option("--out", type=click.Path(path_type=Path), help="JSON output [<run>/profile.json, or results/profile-<id>.json].")
def profile_command(models_spec, latency, memory, preset, seed, protocol, run_dir, reference, repeats, teacher_path, gguf_file, settings, device, results_dir, out, **data_values):
    """Parameters, training time, latency per patient and peak memory, each model in a fresh process.

    Without --run, the latest finished run under --results-dir on the same data that trained every
    model at --seed is used; only when there is none are the models trained (the plan is printed first).
    """
    if not (latency or memory):
        raise click.UsageError("nothing to measure: drop --no-latency or --no-memory")
    names = model_names(models_spec)
    entries = model_entries(names, teacher_path, gguf_file, settings)
    if run_dir is not None and not run_dir.is_dir():
        raise click.ClickException(f"run directory {run_dir} does not exist")
    if reference is not None and reference not in names:
        raise click.UsageError(f"--reference {reference} is not among --models ({', '.join(names)})")
    dataset = dataset_from_options(**data_values)
    console = _console()
    if run_dir is None:
        run_dir = latest_run(results_dir, dataset.fingerprint, names, seed)
        if run_dir is not None:
            console.print(f"using the trained models of {run_dir}")
        else:
            preset = preset or training_preset(results_dir, dataset.fingerprint, device)
            console.print(training_notice(results_dir, names, seed, entries, preset, protocol, dataset.fingerprint))
    if run_dir is not None:
        previous = read_json(RunFolder(run_dir).config_path)
        if previous.get("dataset_fingerprint") != dataset.fingerprint:
            raise click.ClickException(f"{run_dir} was run on other data than --dataset {dataset.name} with these options")
        preset, protocol = previous["preset"], previous["protocol"]
        if seed not in previous["seeds"]:
            raise click.ClickException(f"{run_dir} trained seeds {previous['seeds']}, not --seed {seed}")
    settings_ = ProfileSettings(preset, seed, protocol, device, repeats, latency, memory, reference)
    with console.status("profiling: each model in a fresh process"):
        try:
            profile = profile_entries(dataset, entries, settings_, run_dir)
        except (FileNotFoundError, ValueError) as error:
            raise click.ClickException(str(error)) from None
    console.print(rich_profile(profile))
    target = out or (run_dir / "profile.json" if run_dir is not None else results_dir / f"profile-{dataset.name}-{stable_hash([dataclasses.astuple(e) for e in entries], preset, seed, protocol)[:10]}.json")
    write_json(target, profile)
    console.print(f"wrote {target}")

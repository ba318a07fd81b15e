"""A run, described once: :class:`RunSpec`.

Everything that defines a run (its entries, seeds, dataset, protocol, decision rule, preset, statistics,
device, threads) is one immutable spec. The command line builds it in one place
(:func:`bench.cli.options.run_spec`, from flags and the experiment file alike), :func:`bench.runner.run`
takes it whole, and the run folder records it (``config.json``), so a run can be read back and a table
rebuilt without its command line. Where the units execute (:class:`~bench.executors.ExecutorConfig`) is
part of the spec but not of its identity: any executor resumes any other's folder.

``bench run`` is one entry per model; an ablation or a sweep is just another list of entries
(``Entry("w/o KD", "<student>", {"kd": "none"})``), so every table of a paper comes from the same
splits, the same resamples and the same files.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from bench.contract import PRESETS
from bench.decisions import DECISIONS
from bench.evaluate import DEFAULT_RESAMPLES, STATS
from bench.executors import ExecutorConfig
from bench.results import file_stem
from data_prep.cache import stable_hash
from data_prep.protocol import PROTOCOLS


@dataclass(frozen=True)
class Entry:
    """One row of a results table: ``label`` names it, ``model`` is a registry name, ``overrides`` change its config."""

    label: str
    model: str
    overrides: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Statistics:
    """How cells are summarised and compared (README, "Statistics"): ``procedure`` "bootstrap" (valid) or
    "paper" (the LEADER paper's rounds, for reproduction); ``resamples`` bootstrap resamples or paper rounds
    (None: 1000 / 10); ``paired``: the paper procedure's t-test; ``holm``: tables correct stars across columns."""

    procedure: str = "bootstrap"
    resamples: int | None = None
    paired: bool = True
    holm: bool = False

    def __post_init__(self) -> None:
        if self.procedure not in STATS:
            raise ValueError(f"unknown statistics procedure {self.procedure!r}; expected one of {STATS}")
        if self.resamples is None:
            object.__setattr__(self, "resamples", DEFAULT_RESAMPLES[self.procedure])


@dataclass(frozen=True)
class DataSpec:
    """The dataset: a registered source (:mod:`data_prep.sources`), the paths it reads and the options given
    (the rest are the source's defaults)."""

    name: str = "synth"
    paths: dict = field(default_factory=dict)
    options: dict = field(default_factory=dict)


@dataclass(frozen=True)
class RunSpec:
    """One run. ``proposed``: labels tested against the best baseline (None: the entries of models that
    registered families declare); ``retention_of``: the label retention is measured against (None: the
    teacher a student entry's family names, if it is an entry); ``full_model``: in an ablation, the label
    every other entry is compared with (``versus_full``); ``command``: what the command adds to describe
    the run (an ablation's family and variants, a sweep's parameter). ``deterministic``: torch's
    deterministic algorithms (:func:`bench.determinism.enable`); ``threads``: torch threads per unit (a
    model's numbers depend on them). ``experiment_file``: the TOML file the spec was read from (path and
    text), recorded but not part of the identity."""

    entries: tuple[Entry, ...]
    dataset: DataSpec = DataSpec()
    seeds: tuple[int, ...] = (0,)
    preset: str = "paper"
    protocol: str = "last-visit"
    decision: str = "paper"
    statistics: Statistics = Statistics()
    proposed: tuple[str, ...] | None = None
    retention_of: str | None = None
    full_model: str | None = None
    device: str = "cpu"
    deterministic: bool = False
    threads: int = 1
    command: dict = field(default_factory=dict)
    executor: ExecutorConfig = ExecutorConfig()
    experiment_file: dict | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "entries", tuple(self.entries))
        object.__setattr__(self, "seeds", tuple(dict.fromkeys(int(s) for s in self.seeds)))
        if self.proposed is not None:
            object.__setattr__(self, "proposed", tuple(self.proposed))
        if not self.entries:
            raise ValueError("no entry to run")
        if not self.seeds:
            raise ValueError("give at least one training seed")
        for name, value, known in (("preset", self.preset, PRESETS), ("protocol", self.protocol, tuple(PROTOCOLS)), ("decision rule", self.decision, DECISIONS)):
            if value not in known:
                raise ValueError(f"unknown {name} {value!r}; expected one of {known}")
        labels = [e.label for e in self.entries]
        duplicates = sorted({label for label in labels if labels.count(label) > 1})
        if duplicates:
            raise ValueError(f"duplicate entry labels: {duplicates}")
        stems: dict[str, str] = {}
        for label in labels:
            stem = file_stem(label)
            if stem in stems:
                raise ValueError(f"labels {stems[stem]!r} and {label!r} map to the same file name {stem!r}")
            stems[stem] = label
        for role, named in (("proposed", self.proposed or ()), ("retention", (self.retention_of,) if self.retention_of else ()),
                            ("full-model", (self.full_model,) if self.full_model else ())):
            unknown = sorted(set(named) - set(labels))
            if unknown:
                raise ValueError(f"{role} label(s) {unknown} are not entries of this run; entries: {labels}")

    @property
    def labels(self) -> list[str]:
        return [e.label for e in self.entries]

    def to_json(self) -> dict:
        """Everything the spec holds, as plain JSON values (``config.json``)."""
        return dataclasses.asdict(self)

    def identity(self) -> dict:
        """What makes two runs the same run (where they execute and which file they came from does not)."""
        return {k: v for k, v in self.to_json().items() if k not in ("executor", "experiment_file")}

    def run_id(self, dataset_fingerprint: str) -> str:
        """The run folder's default name: the dataset and a hash of the identity and the data, so rerunning
        the same command on the same data resumes its folder."""
        return f"{file_stem(self.dataset.name)}-{stable_hash(self.identity(), dataset_fingerprint)[:10]}"

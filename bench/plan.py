"""Planning a run: its spec's entries resolved to models and configs, and its units in the order they run.

A unit is one entry at one training seed: everything a worker needs to train, predict and write its
files. Planning resolves every model and config before anything trains (a typo fails in a second, not
an hour in), works out which labels are proposed, which teacher a student's retention is measured
against, and each unit's keys (:func:`bench.results.weights_key`: what determines its weights;
:func:`bench.results.entry_key`: its predictions), so that the units a run folder already finished are
reused. A teacher that students distil from but that is no entry of the run (an ablation's, a sweep's)
is planned as a unit of its own (``prerequisite``): fine-tuned once into its model's cache, with its own
progress, before the students, which then load it; it has no row in the results. Pending units are
ordered teachers first, then their students (each after its teacher's units), then the rest longest first
by the seconds each took on this machine before (:class:`bench.results.TimingHistory`: the same unit's,
else the model's latest under any config or data, else the model's declared ``typical_seconds``; a model
with none of these counts as longest, in the entries' order), so the entries' (display) order does not
decide how long a run takes, not even on a first run.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from bench import registry
from bench.contract import MedRecModel, ModelConfig
from bench.results import RunFolder, TimingHistory, entry_key, weights_key
from bench.spec import Entry, RunSpec
from data_prep.cache import stable_hash
from data_prep.dataset import PreparedDataset


@dataclass(frozen=True)
class Unit:
    """One entry at one training seed, under its run's spec."""

    label: str
    model: str
    config: ModelConfig
    seed: int
    weights_key: str
    key: str
    run_dir: str
    spec: RunSpec
    prerequisite: bool = False  # a teacher the students need that is no entry: trained before them, no results of its own

    @property
    def name(self) -> str:
        """How progress and errors name it."""
        return f"{self.label} (seed {self.seed})"


@dataclass(frozen=True)
class Resolved:
    """An entry with its model class and its config under the run's preset."""

    entry: Entry
    model_class: type[MedRecModel]
    config: ModelConfig


@dataclass(frozen=True)
class Plan:
    """A run's units (in entry, then seed order), the pending ones in the order they run, and ``after[i]``:
    the positions in ``pending`` that must end before ``pending[i]`` starts. ``proposed``, ``teacher`` and
    ``students`` are the spec's labels resolved against the registered families; ``teachers``: every entry
    of a family's teacher model (``teacher`` is one of them; an ablation may run several).
    ``prerequisites``: the teacher units of students that no entry trains (in ``pending`` while a student
    that needs one is)."""

    spec: RunSpec
    entries: tuple[Resolved, ...]
    units: tuple[Unit, ...]
    pending: tuple[Unit, ...]
    after: tuple[tuple[int, ...], ...]
    proposed: tuple[str, ...]
    teacher: str | None
    students: tuple[str, ...]
    teachers: tuple[str, ...]
    prerequisites: tuple[Unit, ...] = ()

    def units_of(self, label: str) -> list[Unit]:
        return [unit for unit in self.units if unit.label == label]


def resolve(spec: RunSpec) -> list[Resolved]:
    """Every entry's model class and config; a bad override fails here, naming the entry."""
    resolved = []
    for entry in spec.entries:
        model_class = registry.get(entry.model)
        try:
            config = model_class.config_class.preset(spec.preset, **entry.overrides)
        except (TypeError, ValueError) as error:
            raise ValueError(f"entry {entry.label!r}: {error}") from None
        resolved.append(Resolved(entry, model_class, config))
    return resolved


def plan_run(spec: RunSpec, dataset: PreparedDataset, folder: RunFolder) -> Plan:
    """Resolve the spec against the registry and the run folder (which units it already finished)."""
    entries = resolve(spec)
    families = registry.families()
    teacher_of = {f.model: f.teacher for f in families if f.teacher}
    family_models = {f.model for f in families} | set(teacher_of.values())
    proposed = tuple(r.entry.label for r in entries if r.entry.model in family_models) if spec.proposed is None else spec.proposed
    teacher = spec.retention_of
    if teacher is None:
        teachers = {teacher_of[r.entry.model] for r in entries if r.entry.model in teacher_of}
        teacher = next((r.entry.label for r in entries if r.entry.model in teachers), None)
    # every student entry (an ablation's variants too) and every other proposed label
    students = tuple(label for label in dict.fromkeys([*(r.entry.label for r in entries if r.entry.model in teacher_of), *proposed]) if label != teacher)

    units = []
    for r in entries:
        for seed in spec.seeds:
            trained = weights_key(r.model_class, r.config.to_dict(), seed, dataset.fingerprint, spec.protocol, spec.deterministic, spec.threads)
            units.append(Unit(r.entry.label, r.entry.model, r.config, seed, trained, entry_key(trained, spec.decision), str(folder.root), spec))
    teachers = set(teacher_of.values())
    teacher_labels = tuple(r.entry.label for r in entries if r.entry.model in teachers)
    pending = [unit for unit in units if not folder.is_finished(unit.label, unit.seed, unit.key)]
    history = TimingHistory()

    def turn(unit: Unit) -> tuple[int, float]:
        took = history.estimate(TimingHistory.key(unit.model, unit.config.to_dict(), dataset.fingerprint, spec.protocol), unit.model)
        took = registry.get(unit.model).typical_seconds if took is None else took
        return 0 if unit.model in teachers else 1 if unit.model in teacher_of else 2, -math.inf if took is None else -took

    needs = teacher_units(spec, dataset, folder, units, families)
    prerequisites = [unit for unit, _ in needs]
    pending = [unit for unit, students in needs if any(student in pending for student in students)] + pending
    pending.sort(key=turn)  # stable
    after = tuple(tuple(j for j, other in enumerate(pending) if other.model == teacher_of.get(unit.model)) for unit in pending)
    return Plan(spec, tuple(entries), tuple(units), tuple(pending), after, proposed, teacher, students, teacher_labels, tuple(prerequisites))


def teacher_label(label: str, name: str, options: dict, base: dict, preset: str) -> str:
    """A teacher's row name: the family's teacher label, the teacher's name (LEADER's several teachers) and
    the options in which it differs from ``base`` (its path and the run's preset aside)."""
    extras = [f"{k}={v}" for k, v in sorted(options.items()) if k != "teacher_path" and base.get(k) != v and not (k == "preset" and v == preset)]
    return " ".join([label, *([name] if name else []), *extras])


def teacher_units(spec: RunSpec, dataset: PreparedDataset, folder: RunFolder, units: list[Unit], families) -> list[tuple[Unit, list[Unit]]]:
    """(unit, the student units that learn from it) per distinct teacher (model, config, seed) that a
    student unit learns from and no entry trains."""
    teacher_of = {f.model: (f.teacher, f.teacher_label or f.teacher) for f in families if f.teacher}
    trained = {(u.model, stable_hash(u.config.to_dict()), u.seed) for u in units}
    needed: dict[tuple, tuple[Unit, list[Unit]]] = {}
    base: dict[str, dict] = {}
    for student in units:
        if student.model not in teacher_of:
            continue
        model_class = registry.get(student.model)
        teacher_model, label = teacher_of[student.model]
        teacher_class = registry.get(teacher_model)
        seed = model_class.teacher_training_seed(student.config, student.seed)
        for name, options in model_class.teacher_entries(student.config).items():
            config = teacher_class.config_class.preset(spec.preset, **options)
            identity = (teacher_model, stable_hash(config.to_dict()), seed)
            if identity in trained:
                continue
            if identity not in needed:
                row = teacher_label(label, name, options, base.setdefault(name, options), spec.preset) + " (for the students)"
                key = weights_key(teacher_class, config.to_dict(), seed, dataset.fingerprint, spec.protocol, spec.deterministic, spec.threads)
                needed[identity] = (Unit(row, teacher_model, config, seed, key, "", str(folder.root), spec, prerequisite=True), [])
            needed[identity][1].append(student)
    return list(needed.values())

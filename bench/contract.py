"""The small contract every model meets (scikit-learn style), so one harness can run them all.

A model declares what it needs (:class:`Capabilities`), keeps its paper defaults in one config
dataclass (:class:`ModelConfig` subclass), and implements ``fit(train, val)`` and
``predict_proba(samples)``; ``predict_sets`` turns probabilities into medication sets with the
model's decision rule (a threshold unless the model decodes otherwise). ``save``/``load`` let a
resumed run reuse a finished model. Models import this module and :mod:`bench.training`, never the CLI.

What a model trains on is the protocol's decision, not the model's: ``fit(train, val)`` receives the
protocol's samples (under ``last-visit`` each training patient's last visit, under ``all-visits`` and
``train-all-test-last`` every visit), its loss reads the targets of those samples and of no other visit
(a sample's history is input, never a label), and it may leave out the samples it cannot serve
(``needs_history_medications``) and no other. Its fit report says what it trained on (``training_samples``,
:func:`training_record`; :class:`bench.training.TorchModel`'s loop fills it in), and :func:`check_model`
fails a model whose record differs from the protocol's samples.

Everything the harness calls on or reads from a model is declared on :class:`MedRecModel`:
``capabilities``, ``config_class``, ``decides_by_threshold``, ``table_note``, ``floor``, ``publication``, ``training_budget``,
``teacher_entries``, ``on_progress`` (set by the harness before ``fit``), ``fit``, ``predict_proba``, ``predict_sets``,
``decision_rule``, ``save``/``load`` and the ``fit_report`` keys listed on :meth:`MedRecModel.fit`.
:func:`check_model` holds a model to the parts that can be checked.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import random
import types
import typing
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, ClassVar, Sequence

import numpy as np
import torch

from data_prep.atomic import write_atomic
from data_prep.dataset import PreparedDataset, Sample
from data_prep.protocol import longest_records, served

# paper: each model's published configuration; harness: what this harness changes for mini-batch training;
# quick: the harness preset sized for a 2-core CPU (every model still stops by validation patience)
PRESETS = ("quick", "harness", "paper")
SELECTIONS = ("prauc", "jaccard")  # what early stopping and the kept epoch maximise on validation
# the harness's training policy, part of --preset harness and quick for every model: stop after 10 evaluations
# without a better validation PRAUC and keep the best one (the paper preset keeps each script's own rule)
HARNESS_POLICY = {"patience": 10, "selection": "prauc"}
ProgressCallback = Callable[[int, int, str], None]  # on_progress(done, total, status)


@dataclass(frozen=True)
class Capabilities:
    """What a model declares about its inputs; the harness and :func:`check_model` hold models to it."""

    needs_history_medications: bool = False  # cannot predict single-visit samples -> "-" cells; checked
    uses_profile: bool = False  # False: predictions must not follow the profile; checked
    # a self-supervised stage on every visit of the training patients (G-Bert's masked-code pre-training),
    # reported as fit_report["pretraining"] = training_record(those visits); checked: those visits, no other
    pretrains_on_training_visits: bool = False


@dataclass
class ModelConfig:
    """The published configuration is each model's dataclass defaults (``--preset paper``: the official
    script's settings, each cited in the README's preset table). ``--preset harness`` is :data:`HARNESS_POLICY`
    plus ``HARNESS``, what this harness changes to train the model in mini-batches (each change documented in the
    model's docstring); ``QUICK`` overrides the harness preset to fit a 2-core CPU (``--preset quick``: larger
    learning rates, smaller budgets, validation every few steps)."""

    epochs: int = 50
    batch_size: int = 32  # training samples per optimizer step
    lr: float = 1e-3
    weight_decay: float = 0.0
    patience: int | None = 10  # evaluations without a better selection score before stopping; None: run the budget
    threshold: float = 0.5
    selection: str = "prauc"  # the kept epoch maximises validation "prauc", or "jaccard" of the model's sets

    HARNESS: ClassVar[dict] = {}
    QUICK: ClassVar[dict] = {"epochs": 5}

    @classmethod
    def preset(cls, name: str = "paper", **overrides) -> "ModelConfig":
        """The named preset with ``overrides``; an override ``preset`` puts this one model on another
        preset than the run's (``--preset paper --set leader_t.preset=quick``)."""
        name = overrides.pop("preset", name)
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; expected one of {PRESETS}")
        values = {"paper": {}, "harness": {**HARNESS_POLICY, **cls.HARNESS}, "quick": {**HARNESS_POLICY, **cls.HARNESS, **cls.QUICK}}[name]
        values.update(overrides)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"{cls.__qualname__} has no option(s) {unknown}; known: {sorted(known)}")
        hints = typing.get_type_hints(cls)
        config = cls(**{key: _typed(f"{cls.__qualname__}.{key}", value, hints[key]) for key, value in values.items()})
        if config.selection not in SELECTIONS:
            raise ValueError(f"{cls.__qualname__}.selection={config.selection!r}: expected one of {SELECTIONS}")
        return config

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _typed(option: str, value: object, hint: object) -> object:
    """``value`` as the option's declared type (a JSON list for a tuple, an int for a float), or one clear error."""
    origin, arguments = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in arguments:
            return None
        errors = []
        for candidate in (a for a in arguments if a is not type(None)):
            try:
                return _typed(option, value, candidate)
            except ValueError as error:
                errors.append(error)
        raise ValueError(f"{option}={value!r}: expected {_type_name(hint)}")
    base = origin or hint
    if base is typing.Any:
        return value
    if base is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if base is tuple and isinstance(value, list):
        return tuple(value)
    if isinstance(base, type) and (isinstance(value, base) and not (base is int and isinstance(value, bool))):
        return value
    raise ValueError(f"{option}={value!r}: expected {_type_name(hint)}, got {type(value).__name__}")


def _type_name(hint: object) -> str:
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")


def training_record(samples: Sequence[Sample]) -> dict:
    """What a model trained on, for its fit report (``training_samples``; ``pretraining`` for visits): how many
    samples, of how many patients, and a digest of their ids, so that no identifier leaves the process."""
    return _record([s.sample_id for s in samples], len({s.patient_id for s in samples}))


def visits_record(samples: Sequence[Sample]) -> dict:
    """:func:`training_record` of every visit of the samples' records, each once (a patient's visits 1..T):
    what a pre-training stage on the training patients' visits reports (``pretraining``)."""
    records = longest_records(samples)
    return _record([f"{s.patient_id}#{t}" for s in records for t in range(1, s.visit_number + 1)], len(records))


def _record(ids: Sequence[str], patients: int) -> dict:
    digest = hashlib.sha256("\n".join(sorted(ids)).encode()).hexdigest()[:16]
    return {"samples": len(ids), "patients": patients, "digest": digest}


def stopping_rule(patience: int | None) -> str:
    """What ends a training stage, in words: ``fixed`` (its whole budget runs) or ``patience N``."""
    return "fixed" if patience is None else f"patience {patience}"


def threshold_sets(proba: np.ndarray, threshold: float) -> list[np.ndarray]:
    """Per row, the medications whose probability reaches ``threshold``: every threshold decision rule,
    a model's own or one tuned on validation (:mod:`bench.decisions`), is this function."""
    return [np.flatnonzero(row >= threshold) for row in proba]


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@dataclass(frozen=True)
class Publication:
    """A model's paper: ``cite`` as tables cite it ("Yang et al., WWW 2023"), ``date`` when it appeared ("YYYY-MM":
    the month the conference met or the journal issue came out). ``--models all`` lists the published models that no
    registered family's paper compares by this date (:func:`bench.registry.in_run_order`)."""

    cite: str
    date: str

    def __post_init__(self) -> None:
        year, _, month = self.date.partition("-")
        if not (len(year) == 4 and year.isdigit() and len(month) == 2 and month.isdigit() and 1 <= int(month) <= 12):
            raise ValueError(f"Publication({self.cite!r}).date must be 'YYYY-MM', got {self.date!r}")


class CapabilityError(ValueError):
    """A sample the model declared it cannot serve (e.g. no medication history)."""


class MedRecModel(ABC):
    name: ClassVar[str]
    config_class: ClassVar[type[ModelConfig]] = ModelConfig
    capabilities: ClassVar[Capabilities] = Capabilities()
    # False for models that decode their own sets (MICRON, COGNet): a tuned-threshold run keeps their rule
    decides_by_threshold: ClassVar[bool] = True
    # a sentence the result tables print under every table this model is in (how to read its numbers)
    table_note: ClassVar[str] = ""
    # set by the harness before fit: a model with a training loop reports its epochs or steps through it
    on_progress: ProgressCallback | None = None
    # where result tables and ``--models all`` place it (bench.registry.in_run_order): a floor (a rule or a minimal
    # model that every result must beat; floors come first, by this rank) or, for a published model, its paper
    floor: ClassVar[int | None] = None
    publication: ClassVar[Publication | None] = None
    # seconds one fit took on the default synthetic cohort under --preset quick on one CPU thread (measured; an order
    # of magnitude): how bench.plan orders units longest first on a machine that has not timed this model yet
    typical_seconds: ClassVar[float | None] = None

    def __init__(self, dataset: PreparedDataset, config: ModelConfig | None = None, seed: int = 0, device: str = "cpu"):
        self.dataset = dataset
        self.config = config if config is not None else self.config_class()
        if not isinstance(self.config, self.config_class):
            raise TypeError(f"{self.name} expects a {self.config_class.__qualname__}, got {type(self.config).__qualname__}")
        self.seed = seed
        self.device = torch.device(device)
        self.fit_report: dict = {}

    # ----- to implement ------------------------------------------------------------------------
    @abstractmethod
    def fit(self, train: Sequence[Sample], val: Sequence[Sample]) -> "MedRecModel":
        """Train on ``train`` (the protocol's samples, less those the model cannot serve), select on ``val``;
        fills ``self.fit_report``.

        Every report has ``training_samples`` (:func:`training_record` of the samples the loss read;
        :func:`check_model` compares it with the protocol's) and, for a model that declares
        ``pretrains_on_training_visits``, ``pretraining`` (the record of the visits it pre-trained on). The
        harness reads these keys when present: ``train_seconds`` (else it times ``fit``), ``converged``
        (False: the best validation score was the last one; the tables flag it) and ``teacher`` (a distilled
        model: the seed and cache key of the teacher it learnt from); under deterministic algorithms a
        training loop adds ``determinism`` (:mod:`bench.determinism`). The whole report is stored in the run folder.
        """

    @abstractmethod
    def predict_proba(self, samples: Sequence[Sample]) -> np.ndarray:
        """Probabilities, float array [len(samples), n_medications]."""

    @abstractmethod
    def get_state(self) -> dict:
        """Everything a trained model needs besides its config: tensors and plain JSON-able values."""

    @abstractmethod
    def set_state(self, state: dict) -> None: ...

    # ----- shared behaviour --------------------------------------------------------------------
    @classmethod
    def training_budget(cls, config: ModelConfig) -> str:
        """The most ``fit`` trains with ``config``, in words (a run's plan shows it before training): epochs,
        what stops them and samples per optimizer step, e.g. "10 epochs (fixed), 1 sample per step"."""
        per_step = f"{config.batch_size} sample{'s' if config.batch_size != 1 else ''} per step"
        return f"{config.epochs} epochs ({stopping_rule(config.patience)}), {per_step}"

    @classmethod
    def teacher_entries(cls, config: ModelConfig) -> dict[str, dict]:
        """A distilled model: name -> options of each teacher it learns from with ``config`` (``bench ablate
        --with-teacher`` adds one entry per distinct teacher); {} when it names none (then the family's
        teacher is the one entry). The options name the teacher config's preset where it is not the run's."""
        return {}

    @classmethod
    def teacher_training_seed(cls, config: ModelConfig, seed: int) -> int:
        """The training seed of the teachers a distilled model trained at ``seed`` with ``config`` learns from
        (a run plans their fine-tuning as units of their own, before the students)."""
        return seed

    def predict_sets(self, samples: Sequence[Sample], proba: np.ndarray | None = None) -> list[np.ndarray]:
        """The decision rule: medications whose probability reaches the threshold."""
        proba = self.predict_proba(samples) if proba is None else proba
        return threshold_sets(proba, self.config.threshold)

    def decision_rule(self) -> str:
        """The rule ``predict_sets`` applies, in words, for the tables' notes."""
        return f"threshold {self.config.threshold:g}"

    def check_samples(self, samples: Sequence[Sample]) -> None:
        if self.capabilities.needs_history_medications:
            missing = [i for i, s in enumerate(samples) if not s.history]
            if missing:  # positions, not patient ids: error messages end up in logs
                raise CapabilityError(
                    f"{self.name} needs earlier medications; {len(missing)} sample(s) have none (first: position {missing[0]} of {len(samples)})"
                )

    def save(self, path: str | Path) -> Path:
        """Weights with ``torch.save`` (loaded back with ``weights_only=True``), config as JSON beside them."""
        path = Path(path)
        meta = {"model": self.name, "seed": self.seed, "config": self.config.to_dict()}
        write_atomic(path.with_suffix(".config.json"), lambda tmp: tmp.write_text(json.dumps(meta, indent=2)))
        return write_atomic(path, lambda tmp: torch.save({"state": self.get_state(), "fit_report": self.fit_report}, tmp))

    @classmethod
    def load(cls, path: str | Path, dataset: PreparedDataset, device: str = "cpu") -> "MedRecModel":
        path = Path(path)
        meta = json.loads(path.with_suffix(".config.json").read_text())
        if meta["model"] != cls.name:
            raise ValueError(f"{path} holds a {meta['model']!r} model, not {cls.name!r}")
        model = cls(dataset, cls.config_class(**meta["config"]), seed=meta["seed"], device=device)
        model.restore(path)
        return model

    def restore(self, path: str | Path) -> None:
        """Weights and fit report written by :meth:`save`, into this model (its config is taken as is)."""
        payload = torch.load(path, map_location=self.device, weights_only=True)
        self.set_state(payload["state"])
        self.fit_report = payload["fit_report"]


# ----- model families: what a family of models declares to get ablations, sweeps and retention ------
@dataclass(frozen=True)
class Variant:
    """One ablation or alternative: a table label and the config changes it makes to the full model."""

    label: str
    overrides: dict
    description: str = ""


@dataclass(frozen=True)
class ModelFamily:
    """Registered in the ``medrec_bench.families`` entry-point group; ``bench ablate NAME`` and ``bench sweep
    NAME`` work from it alone, for this project's LEADER and for a third-party family alike.

    ``model`` is the registry name of the model that is ablated and swept (a student, for a distilled
    family), ``label`` its table label; ``teacher``/``teacher_label`` the model it distils from, if any;
    ``ablations`` (``--drop``) and ``alternatives`` (``--compare``) map option names to variants;
    ``sweepable`` maps the config fields a sweep may vary to what they mean; ``baselines`` lists the
    models its paper compares against, in the paper's order (``--models all`` runs them so).
    """

    name: str
    model: str
    label: str
    ablations: dict[str, Variant] = dataclasses.field(default_factory=dict)
    alternatives: dict[str, Variant] = dataclasses.field(default_factory=dict)
    sweepable: dict[str, str] = dataclasses.field(default_factory=dict)
    teacher: str | None = None
    teacher_label: str | None = None
    baselines: tuple[str, ...] = ()


# ----- the public contract check (scikit-learn's check_estimator for medication recommenders) ---------
def check_model(
    model_class: type[MedRecModel], dataset: PreparedDataset, config: ModelConfig | None = None, seed: int = 0,
    protocol: str = "last-visit", device: str = "cpu",
) -> MedRecModel:
    """Fit ``model_class`` on ``dataset`` and check everything the harness relies on; return the fitted model.

    A third-party package calls it from its own tests (a tiny dataset and a fast ``config`` keep it to
    seconds). Each failure raises ``AssertionError`` naming the model and the broken promise:
    config presets, probability shapes and range, sets as unique in-range indices, determinism for a
    seed (on a CUDA ``device`` with torch's deterministic algorithms on), save/load round trip, the history
    capability, profile use as declared, targets never read at prediction, a decision rule in words, and
    the training samples: ``fit_report["training_samples"]`` must be :func:`training_record` of exactly the
    ``protocol``'s training samples, or of exactly those of them the model serves (a model that adds visits
    of its own, e.g. every earlier visit of a patient under ``last-visit``, or drops others, fails), or of
    none for a model that learns nothing (then a fit on no training sample must predict the same), and a
    model that declares
    ``pretrains_on_training_visits`` must report ``fit_report["pretraining"]`` of exactly every visit of the
    training patients (one that does not declare it must report none). What the check cannot see is a loss
    that builds labels from a sample's history; the contract forbids it (module docstring).
    """
    import os
    import tempfile
    from unittest import mock

    from bench import determinism

    name = getattr(model_class, "name", model_class.__qualname__)

    def require(condition: bool, promise: str) -> None:
        if not condition:
            raise AssertionError(f"{name}: {promise}")

    config_class = model_class.config_class
    require(dataclasses.is_dataclass(config_class) and issubclass(config_class, ModelConfig), "config_class must be a ModelConfig dataclass")
    require(config_class.preset("paper") == config_class(), "--preset paper must be the config's defaults (the published configuration)")
    for preset in PRESETS:
        config_class.preset(preset)  # unknown fields in HARNESS / QUICK raise here
    config = config if config is not None else config_class.preset("quick")
    train, val, test = (dataset.samples(part, protocol) for part in ("train", "val", "test"))

    def fitted() -> MedRecModel:
        return model_class(dataset, config, seed=seed, device=device).fit(train, val)

    with determinism.required(torch.device(device).type == "cuda"):  # two fits on a GPU agree only so
        model = fitted()
        samples = [s for s, ok in zip(test, served(test, model.capabilities.needs_history_medications)) if ok]
        require(bool(samples), "serves no test sample of this dataset")
        proba = model.predict_proba(samples)
        require(isinstance(proba, np.ndarray) and proba.shape == (len(samples), dataset.n_medications),
                f"predict_proba must return an array [{len(samples)}, {dataset.n_medications}], got {getattr(proba, 'shape', type(proba))}")
        require(bool(np.isfinite(proba).all() and (proba >= 0).all() and (proba <= 1).all()), "probabilities must be finite and in [0, 1]")
        sets = model.predict_sets(samples, proba)
        require(len(sets) == len(samples), "predict_sets must return one set per sample")
        for chosen in map(np.asarray, sets):
            require(chosen.ndim == 1 and (chosen.size == 0 or np.issubdtype(chosen.dtype, np.integer)), "each set must be a 1-d array of medication indices")
            require(bool(((chosen >= 0) & (chosen < dataset.n_medications)).all()) and len(set(chosen.tolist())) == len(chosen), "sets hold unique indices in range")
        require(isinstance(model.decision_rule(), str) and bool(model.decision_rule()), "decision_rule() must describe the rule in words")

        trained = model.fit_report.get("training_samples")
        require(trained is not None, "fit_report['training_samples'] is missing: report training_record(the samples the loss read) (TorchModel's loop does)")
        if trained == training_record([]):  # a fixed rule (the repeat floor): it must predict alike without training data
            try:
                untrained = model_class(dataset, config, seed=seed, device=device).fit([], val).predict_proba(samples)
            except Exception as error:
                raise AssertionError(f"{name}: reports no training sample, yet cannot fit on none ({error})") from error
            np.testing.assert_array_equal(untrained, proba, err_msg=f"{name}: reports no training sample, yet a fit on none predicts otherwise")
        else:
            every = training_record(train)
            expected = training_record([s for s, ok in zip(train, served(train, model.capabilities.needs_history_medications)) if ok])
            require(trained in (every, expected), (
                f"trained on {trained['samples']} samples of {trained['patients']} patients, where the {protocol} protocol gives "
                f"{expected['samples']} samples of {expected['patients']} patients that it serves (digests {trained['digest']} and "
                f"{expected['digest']}): train on the samples fit() receives, or on those of them it serves, never on samples of "
                "its own making; every visit is --protocol all-visits or train-all-test-last, not a rule of the model"
            ))
        every_visit = visits_record(train)
        pretraining = model.fit_report.get("pretraining")
        if model.capabilities.pretrains_on_training_visits:
            require(pretraining == every_visit, (
                f"declares pretrains_on_training_visits, so fit_report['pretraining'] must be training_record(every visit of the "
                f"training patients): {every_visit['samples']} visits of {every_visit['patients']} patients, got {pretraining}"
            ))
        else:
            require(pretraining is None, "reports a pre-training stage (fit_report['pretraining']) but does not declare Capabilities(pretrains_on_training_visits=True)")

        with tempfile.TemporaryDirectory() as empty, mock.patch.dict(os.environ, {"MEDREC_BENCH_CACHE": empty}):
            again = fitted()  # an empty disk cache: a model that caches its training (the LEADER teacher) trains again
        np.testing.assert_array_equal(again.predict_proba(samples), proba, err_msg=f"{name}: two fits with seed {seed} must predict the same")
        with tempfile.TemporaryDirectory() as folder:
            loaded = model_class.load(model.save(Path(folder) / f"{name}.pt"), dataset, device=device)
        np.testing.assert_array_equal(loaded.predict_proba(samples), proba, err_msg=f"{name}: a saved and loaded model must predict the same")
        require([s.tolist() for s in map(np.asarray, loaded.predict_sets(samples, proba))] == [s.tolist() for s in map(np.asarray, sets)],
                "a saved and loaded model must choose the same sets")
        require(loaded.config == model.config, "load must restore the config")

        without_history = [s for s in train if not s.history][:2]
        if without_history and model.capabilities.needs_history_medications:
            try:
                model.predict_proba(without_history)
            except CapabilityError:
                pass
            else:
                raise AssertionError(f"{name}: declares needs_history_medications but predicted samples without history instead of raising CapabilityError")
        elif without_history:
            require(model.predict_proba(without_history).shape == (len(without_history), dataset.n_medications), "must predict samples without history")

        if not model.capabilities.uses_profile:
            cardinalities = dataset.profile_cardinalities()
            flipped = [dataclasses.replace(s, profile=tuple((v + 1) % c for v, c in zip(s.profile, cardinalities))) for s in samples]
            np.testing.assert_array_equal(model.predict_proba(flipped), proba, err_msg=f"{name}: declares uses_profile=False but its predictions follow the profile")
        other_targets = [dataclasses.replace(s, target=tuple(range(dataset.n_medications))) for s in samples]
        np.testing.assert_array_equal(model.predict_proba(other_targets), proba, err_msg=f"{name}: predictions must not read the target")
        return model

"""Every registered model meets the public contract (``bench.contract.check_model``), run on ``tiny_dataset``.

Parametrised over the registry: a model that is registered but fails to import fails here, it is
never skipped. The check itself is shown to fail on models that break a promise.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from baselines.frequency import MostFrequent
from baselines.mlp import CurrentVisitMLP
from bench import registry
from bench.contract import Capabilities, check_model, training_record
from data_prep.dataset import Visit
from data_prep.protocol import longest_records

# Fast settings, applied where the model's config has the field (the models' own QUICK presets may be
# sized for the synthetic cohort, not for a unit test).
FAST = {"epochs": 2, "max_steps": 4, "eval_every": 2, "max_length": 64, "patience": 2}
MODELS = registry.available()


@pytest.fixture(scope="module")
def tiny_teacher(tmp_path_factory):
    """The tiny random teacher every LLM-backed model uses here, never the real one."""
    from teacher_fixtures import make_tiny_teacher

    return str(make_tiny_teacher(tmp_path_factory.mktemp("teacher")))


def fast_config(model_class, teacher_path):
    fields = {f.name for f in dataclasses.fields(model_class.config_class)}
    overrides = {k: v for k, v in FAST.items() if k in fields}
    if "teacher_path" in fields:
        overrides["teacher_path"] = teacher_path
    if "teacher_overrides" in fields:
        overrides["teacher_overrides"] = {"teacher_path": teacher_path, **{k: v for k, v in FAST.items() if k != "epochs"}}
    return model_class.config_class.preset("quick", **overrides)


@pytest.mark.parametrize("name", MODELS)
def test_every_registered_model_meets_the_contract(name, tiny_dataset, tiny_teacher):
    model_class = registry.get(name)
    check_model(model_class, tiny_dataset, fast_config(model_class, tiny_teacher))


class ReadsTheTarget(MostFrequent):
    name = "reads_target"

    def predict_proba(self, samples):
        proba = super().predict_proba(samples)
        proba[:, 0] = [len(s.target) / 100 for s in samples]
        return proba


class Unseeded(CurrentVisitMLP):
    name = "unseeded"

    def fit(self, train, val):
        self.seed = int(np.random.default_rng().integers(1 << 30))  # ignores the seed it was given
        return super().fit(train, val)


class ClaimsHistory(MostFrequent):
    name = "claims_history"
    capabilities = Capabilities(needs_history_medications=True)  # yet predicts single-visit samples


class TrainsOnEveryVisit(CurrentVisitMLP):
    """Trains on every visit of each record by its own rule, whatever the protocol (as G-Bert once did)."""

    name = "trains_on_every_visit"

    def train_samples(self, train):
        return [
            dataclasses.replace(s, history=s.history[:t], diagnoses=visit.diagnoses, procedures=visit.procedures, target=visit.medications, visit_number=t + 1)
            for s in longest_records(train)
            for t, visit in enumerate([*s.history, Visit(s.diagnoses, s.procedures, s.target)])
        ]


class TrainsOnLastVisits(CurrentVisitMLP):
    """Keeps each patient's last visit only, whatever the protocol."""

    name = "trains_on_last_visits"

    def train_samples(self, train):
        return longest_records(train)


class DropsSingleVisitPatients(CurrentVisitMLP):
    """Skips samples without history though it serves them."""

    name = "drops_single_visit_patients"

    def train_samples(self, train):
        return [s for s in train if s.history]


class PretrainsOnValidation(MostFrequent):
    """Declares pre-training on the training visits, but also reads the validation patients'."""

    name = "pretrains_on_validation"
    capabilities = Capabilities(pretrains_on_training_visits=True)

    def fit(self, train, val):
        super().fit(train, val)
        self.fit_report["pretraining"] = training_record([*train, *val])
        return self


class HidesItsPretraining(MostFrequent):
    name = "hides_its_pretraining"

    def fit(self, train, val):
        super().fit(train, val)
        self.fit_report["pretraining"] = training_record(train)
        return self


class HidesItsTraining(CurrentVisitMLP):
    """Trains, yet reports no training sample (as a fixed rule such as the repeat floor does)."""

    name = "hides_its_training"

    def fit(self, train, val):
        super().fit(train, val)
        self.fit_report["training_samples"] = training_record([])
        return self


@pytest.mark.parametrize(
    "model_class, promise, protocol",
    [
        (ReadsTheTarget, "must not read the target", "last-visit"),
        (Unseeded, "must predict the same", "last-visit"),
        (ClaimsHistory, "CapabilityError", "last-visit"),
        (TrainsOnEveryVisit, "where the last-visit protocol gives", "last-visit"),
        (TrainsOnLastVisits, "where the all-visits protocol gives", "all-visits"),
        (DropsSingleVisitPatients, "train on the samples fit\\(\\) receives", "last-visit"),
        (PretrainsOnValidation, "every visit of the training patients", "last-visit"),
        (HidesItsPretraining, "does not declare", "last-visit"),
        (HidesItsTraining, "reports no training sample", "last-visit"),
    ],
)
def test_the_check_catches_a_model_that_breaks_a_promise(model_class, promise, protocol, tiny_dataset):
    with pytest.raises(AssertionError, match=promise):
        check_model(model_class, tiny_dataset, model_class.config_class.preset("quick", **({"epochs": 2} if issubclass(model_class, CurrentVisitMLP) else {})), protocol=protocol)


@pytest.mark.parametrize("name", ["mlp", "gbert", "cognet", "raremed", "repeat"])
def test_models_train_on_every_visit_through_the_protocol(name, tiny_dataset, tiny_teacher):
    model_class = registry.get(name)
    check_model(model_class, tiny_dataset, fast_config(model_class, tiny_teacher), protocol="all-visits")

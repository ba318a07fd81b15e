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
from bench.contract import Capabilities, check_model

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


@pytest.mark.parametrize(
    "model_class, promise",
    [(ReadsTheTarget, "must not read the target"), (Unseeded, "must predict the same"), (ClaimsHistory, "CapabilityError")],
)
def test_the_check_catches_a_model_that_breaks_a_promise(model_class, promise, tiny_dataset):
    with pytest.raises(AssertionError, match=promise):
        check_model(model_class, tiny_dataset, model_class.config_class.preset("quick", **({"epochs": 2} if model_class is Unseeded else {})))

"""The contract every registered model meets (README, "Your own model"), run on ``tiny_dataset``.

Parametrised over the registry: a model that is registered but fails to import fails here, it is
never skipped. Each model trains once per configuration with a fast config (``FAST``), shared by the
checks through a module-level cache.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from bench import registry
from bench.contract import CapabilityError, ModelConfig

# Fast settings, applied where the model's config has the field (the models' own QUICK presets may be
# sized for the synthetic cohort, not for a unit test).
FAST = {"epochs": 2, "max_steps": 4, "eval_every": 2, "max_length": 64, "patience": 2}
MODELS = registry.available()
_fitted: dict = {}
_teacher: dict = {}  # the tiny random teacher every LLM-backed model uses here, never the real one


@pytest.fixture(autouse=True, scope="module")
def tiny_teacher(tmp_path_factory):
    from teacher_fixtures import make_tiny_teacher

    _teacher["teacher_path"] = str(make_tiny_teacher(tmp_path_factory.mktemp("teacher")))
    yield
    _teacher.clear()


def fast_config(model_class):
    fields = {f.name for f in dataclasses.fields(model_class.config_class)}
    overrides = {k: v for k, v in FAST.items() if k in fields}
    if "teacher_path" in fields:
        overrides["teacher_path"] = _teacher["teacher_path"]
    if "teacher_overrides" in fields:
        overrides["teacher_overrides"] = {**_teacher, **{k: v for k, v in FAST.items() if k != "epochs"}}
    return model_class.config_class.preset("quick", **overrides)


def fit(name, dataset, seed=0):
    key = (name, seed)
    if key not in _fitted:
        model_class = registry.get(name)
        model = model_class(dataset, fast_config(model_class), seed=seed)
        _fitted[key] = model.fit(dataset.samples("train"), dataset.samples("val"))
    return _fitted[key]


def servable(model, samples):
    return [s for s in samples if s.history or not model.capabilities.needs_history_medications]


@pytest.mark.parametrize("name", MODELS)
def test_config_is_a_dataclass_with_presets(name):
    model_class = registry.get(name)
    config_class = model_class.config_class
    assert dataclasses.is_dataclass(config_class) and issubclass(config_class, ModelConfig)
    assert config_class.preset("paper") == config_class()
    quick = config_class.preset("quick")
    assert all(getattr(quick, k) == v for k, v in config_class.QUICK.items())
    assert set(config_class.QUICK) <= {f.name for f in dataclasses.fields(config_class)}


@pytest.mark.parametrize("name", MODELS)
def test_predicts_probabilities_of_the_right_shape(name, tiny_dataset):
    model = fit(name, tiny_dataset)
    test = servable(model, tiny_dataset.samples("test"))
    proba = model.predict_proba(test)
    assert proba.shape == (len(test), tiny_dataset.n_medications)
    assert np.isfinite(proba).all() and (proba >= 0).all() and (proba <= 1).all()
    sets = model.predict_sets(test, proba)
    assert len(sets) == len(test)
    for chosen in sets:
        chosen = np.asarray(chosen)
        assert chosen.ndim == 1 and np.issubdtype(chosen.dtype, np.integer)
        assert ((chosen >= 0) & (chosen < tiny_dataset.n_medications)).all() and len(set(chosen.tolist())) == len(chosen)


@pytest.mark.parametrize("name", MODELS)
def test_is_deterministic_for_a_seed(name, tiny_dataset):
    test = tiny_dataset.samples("test")
    first = fit(name, tiny_dataset)
    model_class = registry.get(name)
    again = model_class(tiny_dataset, fast_config(model_class), seed=0).fit(tiny_dataset.samples("train"), tiny_dataset.samples("val"))
    samples = servable(first, test)
    np.testing.assert_array_equal(first.predict_proba(samples), again.predict_proba(samples))


@pytest.mark.parametrize("name", MODELS)
def test_save_and_load_give_identical_predictions(name, tiny_dataset, tmp_path):
    model = fit(name, tiny_dataset)
    path = model.save(tmp_path / f"{name}.pt")
    loaded = registry.get(name).load(path, tiny_dataset)
    samples = servable(model, tiny_dataset.samples("test"))
    np.testing.assert_array_equal(model.predict_proba(samples), loaded.predict_proba(samples))
    assert [s.tolist() for s in model.predict_sets(samples)] == [s.tolist() for s in loaded.predict_sets(samples)]
    assert loaded.config == model.config


@pytest.mark.parametrize("name", MODELS)
def test_respects_its_history_capability(name, tiny_dataset):
    model = fit(name, tiny_dataset)
    single = [s for s in tiny_dataset.samples("train") if not s.history][:2]
    assert single, "tiny_dataset must hold single-visit samples"
    if model.capabilities.needs_history_medications:
        with pytest.raises(CapabilityError):
            model.predict_proba(single)
    else:
        assert model.predict_proba(single).shape == (len(single), tiny_dataset.n_medications)


@pytest.mark.parametrize("name", MODELS)
def test_a_model_without_profile_use_ignores_profiles(name, tiny_dataset):
    model = fit(name, tiny_dataset)
    if model.capabilities.uses_profile:
        pytest.skip(f"{name} declares that it uses the profile")
    samples = servable(model, tiny_dataset.samples("test"))
    flipped = [dataclasses.replace(s, profile=tuple((v + 1) % c for v, c in zip(s.profile, tiny_dataset.profile_cardinalities()))) for s in samples]
    np.testing.assert_array_equal(model.predict_proba(samples), model.predict_proba(flipped))


@pytest.mark.parametrize("name", MODELS)
def test_targets_are_never_an_input(name, tiny_dataset):
    model = fit(name, tiny_dataset)
    samples = servable(model, tiny_dataset.samples("test"))
    other = [dataclasses.replace(s, target=tuple(range(tiny_dataset.n_medications))) for s in samples]
    np.testing.assert_array_equal(model.predict_proba(samples), model.predict_proba(other))

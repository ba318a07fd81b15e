"""The entry-point registry: names, subsets, and clear errors for unknown or broken entries."""

from __future__ import annotations

from importlib.metadata import EntryPoint

import pytest

from bench import registry
from bench.contract import MedRecModel


def test_builtin_reference_models_are_registered():
    assert {"freq", "mlp"} <= set(registry.available())
    assert registry.available() == sorted(registry.available())
    for name in ("freq", "mlp"):
        cls = registry.get(name)
        assert issubclass(cls, MedRecModel) and cls.name == name


def test_resolve_all_and_subsets():
    assert sorted(registry.resolve("all")) == registry.available()
    everything = registry.resolve("all")
    paper = ["retain", "gbert", "gamenet", "safedrug", "micron", "cognet", "refine"]
    assert [n for n in everything if n in paper] == paper  # the LEADER paper's order
    assert everything[-2:] == ["leader_t", "leader_s"]  # the proposed models last
    assert registry.resolve(" mlp, freq ") == ["mlp", "freq"]


@pytest.mark.parametrize("spec", ["nope", "freq,nope", " , "])
def test_unknown_names_list_the_known_ones(spec):
    with pytest.raises(registry.UnknownModelError) as info:
        registry.resolve(spec)
    assert "known models: " in str(info.value) and "freq" in str(info.value)
    assert not str(info.value).startswith("'")


def fake_entry_points(*points):
    return lambda group: [EntryPoint(name, value, group) for name, value in points]


def test_an_entry_point_that_is_not_a_model_is_rejected(monkeypatch):
    monkeypatch.setattr(registry, "entry_points", fake_entry_points(("broken", "bench.metrics:aggregate")))
    with pytest.raises(TypeError, match="not a MedRecModel"):
        registry.get("broken")


def test_an_entry_point_whose_model_has_another_name_is_rejected(monkeypatch):
    monkeypatch.setattr(registry, "entry_points", fake_entry_points(("alias", "baselines.frequency:MostFrequent")))
    with pytest.raises(TypeError, match="'freq'"):
        registry.get("alias")


def test_a_third_party_model_registers_through_the_entry_point_group(monkeypatch):
    monkeypatch.setattr(registry, "entry_points", fake_entry_points(("mlp", "baselines.mlp:CurrentVisitMLP")))
    assert registry.available() == ["mlp"]
    assert registry.get("mlp").__name__ == "CurrentVisitMLP"

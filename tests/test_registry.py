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


FLOORS = ["freq", "repeat", "mlp"]
TABLE_IV = ["retain", "gbert", "gamenet", "safedrug", "micron", "cognet", "refine", "leader_t", "leader_s"]  # the LEADER paper's order
LATER = ["carmen", "molerec", "stratmed", "vita", "raremed"]  # AAAI 2023, WWW 2023, KBS 2024 (Jan.), AAAI 2024, SIGIR 2024


def test_all_lists_the_floors_then_table_iv_then_later_models_by_publication():
    everything = registry.resolve("all")
    assert sorted(everything) == registry.available()
    assert everything == [*FLOORS, *TABLE_IV, *LATER]
    assert [registry.section(n) for n in everything] == ["floors"] * 3 + ["paper"] * 9 + ["later"] * 5
    dates = [registry.get(n).publication.date for n in LATER]
    assert dates == sorted(dates)


def test_seeds_is_the_floors_and_the_papers_models_in_table_order():
    assert registry.resolve("seeds") == registry.seeds() == [*FLOORS, *TABLE_IV]
    assert registry.resolve(" mlp, freq ") == ["mlp", "freq"]  # an explicit list keeps its order


def test_order_comes_from_declarations_not_names(monkeypatch):
    """A model declaring a floor rank joins the floors at that rank; an undeclared one comes last; a family's
    baselines follow its declaration."""
    from bench.contract import ModelFamily, Publication
    from baselines.frequency import MostFrequent
    from baselines.mlp import CurrentVisitMLP
    from baselines.retain import RETAIN

    class EarlyFloor(MostFrequent):
        name = "zz_floor"
        floor = -1

    class Undeclared(CurrentVisitMLP):
        name = "aa_model"
        floor = None

    class Newest(RETAIN):
        name = "newest"
        publication = Publication("Someone et al., 2099", "2099-01")

    classes = {"freq": MostFrequent, "mlp": CurrentVisitMLP, "retain": RETAIN, "zz_floor": EarlyFloor, "aa_model": Undeclared, "newest": Newest}
    family = ModelFamily(name="fam", model="newest", label="N", baselines=("retain",))
    monkeypatch.setattr(registry, "available", lambda: sorted(classes))
    monkeypatch.setattr(registry, "get", classes.__getitem__)
    monkeypatch.setattr(registry, "families", lambda: [family])
    assert registry.in_run_order() == ["zz_floor", "freq", "mlp", "retain", "newest", "aa_model"]
    assert registry.seeds() == ["zz_floor", "freq", "mlp", "retain", "newest"]
    assert registry.section("aa_model") == "other"


def test_a_publication_date_is_year_and_month():
    from bench.contract import Publication

    with pytest.raises(ValueError, match="YYYY-MM"):
        Publication("Someone et al., 2024", "2024")


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


def test_models_help_says_what_all_and_seeds_hold():
    from click.testing import CliRunner

    from bench.cli import main

    for command in ("run", "profile"):
        text = " ".join(CliRunner().invoke(main, [command, "--help"], terminal_width=400).output.split())
        seeds = text[text.index("'seeds':"):]
        assert f"({', '.join([*FLOORS, *TABLE_IV])})" in seeds
        assert f"'all': every registered model ({', '.join([*FLOORS, *TABLE_IV, *LATER])})" in text

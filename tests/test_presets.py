"""The paper presets are the official scripts' settings, and the README's preset table says so: every
``field=value`` its ``--preset paper`` column gives is the model's paper config, and every model is in it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from bench import registry
from bench.plan import resolve
from bench.spec import Entry, RunSpec

README = Path(__file__).resolve().parents[1] / "README.md"
SETTING = re.compile(r"`([a-z_]+)=([^`]+)`")


def preset_table() -> dict[str, list[tuple[str, str]]]:
    """model -> the ``field=value`` settings of its rows in the README's paper-preset table."""
    text = README.read_text()
    start = text.index("### The paper preset, setting by setting")
    rows: dict[str, list[tuple[str, str]]] = {}
    model = None
    for line in text[start:].splitlines()[1:]:
        if line.startswith("#"):
            break
        cells = [c.strip() for c in line.strip().strip("|").split("|")] if line.startswith("|") else []
        if len(cells) < 4 or cells[0] in ("model", "---"):
            continue
        model = cells[0].strip("`") or model
        rows.setdefault(model, []).extend(SETTING.findall(cells[2]))
    return rows


def value(text: str):
    """A setting as the table writes it: None, True/False, a number, or a word."""
    literals = {"None": None, "True": True, "False": False}
    if text in literals:
        return literals[text]
    try:
        return float(text)
    except ValueError:
        return text


def test_every_model_with_a_reference_script_is_in_the_table():
    assert set(preset_table()) == set(registry.available()) - {"freq", "repeat", "mlp"}


@pytest.mark.parametrize("model, settings", sorted(preset_table().items()))
def test_the_table_gives_each_models_paper_config(model, settings):
    config = registry.get(model).config_class.preset("paper")
    assert settings
    for field, text in settings:
        actual = getattr(config, field)
        expected = value(text)
        assert type(actual) is type(expected) or isinstance(expected, float), f"{model}.{field}: {actual!r} against {text}"
        assert actual == expected, f"{model}.{field}: {actual!r} against {text}"


def test_gbert_and_refine_paper_runs_take_one_sample_per_step():
    """bench run --models gbert,refine --preset paper: the plan it prints, one sample per optimizer step."""
    resolved = resolve(RunSpec((Entry("gbert", "gbert"), Entry("refine", "refine")), preset="paper"))
    planned = {r.entry.model: r.config for r in resolved}
    budgets = {r.entry.model: r.model_class.training_budget(r.config) for r in resolved}
    assert all(c.batch_size == 1 and "1 sample per step" in budgets[m] for m, c in planned.items())
    assert planned["refine"].epochs <= 10 and planned["refine"].lr == 2e-4 and planned["gbert"].lr == 5e-4
    assert budgets["refine"] == "10 epochs (fixed), 1 sample per step"


def test_harness_and_quick_presets_stop_by_validation_patience_on_prauc():
    for name in registry.available():
        for preset in ("harness", "quick"):
            config = registry.get(name).config_class.preset(preset)
            assert config.patience is not None and config.selection == "prauc", (name, preset)

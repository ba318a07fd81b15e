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

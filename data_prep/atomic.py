"""Atomic writes: every file and folder this project writes goes through :func:`write_atomic`.

The content is written into a temporary sibling and renamed into place, so a killed process leaves the
old file (or folder) or none, never half of one, and a reader never sees a partial result.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Literal

Existing = Literal["replace", "keep", "refuse"]


def write_atomic(path: str | Path, write: Callable[[Path], None], *, folder: bool = False, existing: Existing = "replace") -> Path:
    """``write(tmp)`` into a temporary sibling of ``path`` (a file, or with ``folder=True`` an empty
    folder to fill), then rename it to ``path``.

    ``existing`` says what happens when ``path`` is already there: ``replace`` it, ``keep`` it (another
    process stored the same content meanwhile; the new copy is dropped) or ``refuse`` (``FileExistsError``
    before anything is written).
    """
    path = Path(path)
    if existing == "refuse" and path.exists():
        raise FileExistsError(f"{path} exists; choose a new path")
    path.parent.mkdir(parents=True, exist_ok=True)
    if folder:  # mkdtemp's mode (owner only) stays: a folder may hold credentialed data
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    else:
        fd, name = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        os.close(fd)
        tmp = Path(name)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp's 0600 would make the file private
    try:
        write(tmp)
        if path.exists() and existing == "keep":
            _remove(tmp)
        else:
            if folder and path.exists():
                shutil.rmtree(path)
            os.replace(tmp, path)
    except BaseException:
        _remove(tmp)
        raise
    return path


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)

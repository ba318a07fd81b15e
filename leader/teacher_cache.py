"""Where a fine-tuned LEADER teacher and its hidden states are kept on disk, and under which key.

The key of a fine-tuned teacher hashes the data (dataset fingerprint, the training and validation sample ids),
the config, the seed, the torch threads, the base model's fingerprint, the source code that trains it (this package and the
training loop) and the versions of torch, transformers and peft: weights made by other code are never reused.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
from functools import lru_cache
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from data_prep.atomic import write_atomic
from data_prep.cache import cache_root, stable_hash
from data_prep.dataset import PreparedDataset, Sample

TEACHER_FILE = "teacher.pt"
# the modules whose code decides what a fine-tuning produces
TRAINING_CODE = ("leader.teacher", "leader.teacher_network", "leader.backbone", "leader.prompts", "bench.training", "bench.contract")
LIBRARIES = ("torch", "transformers", "peft")


@lru_cache(maxsize=1)
def training_code_digest() -> str:
    """sha256 over the source files of :data:`TRAINING_CODE` and the versions of :data:`LIBRARIES`."""
    import importlib.util

    digest = hashlib.sha256()
    for module in TRAINING_CODE:
        digest.update(Path(importlib.util.find_spec(module).origin).read_bytes())
    for library in LIBRARIES:
        digest.update(f"{library}=={importlib.metadata.version(library)}".encode())
    return digest.hexdigest()[:16]


def teacher_cache_key(
    dataset: PreparedDataset, config_dict: dict, seed: int, train: Sequence[Sample], val: Sequence[Sample], base_fingerprint: str
) -> str:
    return stable_hash(
        "leader_t",
        dataset.fingerprint,
        config_dict,
        seed,
        [s.sample_id for s in train],
        [s.sample_id for s in val],
        base_fingerprint,
        training_code_digest(),
        torch.get_num_threads(),  # fine-tuned weights depend on the threads (the order of summation)
    )


def teacher_path(key: str) -> Path:
    return cache_root() / "teachers" / key / TEACHER_FILE


def hidden_states_path(key: str) -> Path:
    return cache_root() / "teacher_states" / key / "hidden_states.npy"


def save_array(path: Path, array: np.ndarray) -> None:
    def write(tmp: Path) -> None:
        with open(tmp, "wb") as fh:
            np.save(fh, array)

    write_atomic(path, write)

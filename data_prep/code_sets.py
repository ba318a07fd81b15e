"""Code sets as multi-hot rows, and the DDI pairs among them: what the data layer, the models and the
evaluation all count the same way, so it lives here, beside the data, and not in any one of them.

The counting functions take NumPy arrays or torch tensors alike (``@`` and ``.sum`` mean the same on both),
so a model's DDI-controlled loss and the benchmark's DDI rate count pairs with one formula.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np


def multi_hot(sets: Sequence[Sequence[int]], n: int) -> np.ndarray:
    """uint8 [len(sets), n]: row i has a 1 at every code of ``sets[i]``."""
    out = np.zeros((len(sets), n), dtype=np.uint8)
    for i, s in enumerate(sets):
        out[i, list(s)] = 1
    return out


def ddi_pair_counts(chosen, ddi_adj):
    """Per row of a float multi-hot ``chosen`` [B, M]: (interacting pairs, all pairs) among its chosen codes.

    ``ddi_adj`` is the symmetric DDI adjacency [M, M] (zero diagonal) of the same type and dtype, so each
    unordered interacting pair is counted once.
    """
    interacting = ((chosen @ ddi_adj) * chosen).sum(1) / 2.0
    n = chosen.sum(1)
    return interacting, n * (n - 1) / 2.0


def pooled_ddi_rate(chosen, ddi_adj) -> float:
    """Interacting pairs / all pairs, pooled over the rows of ``chosen``; 0 when no row has a pair."""
    interacting, pairs = ddi_pair_counts(chosen, ddi_adj)
    total = float(pairs.sum())
    return float(interacting.sum()) / total if total > 0 else 0.0


def ddi_rate_of_sets(sets: Sequence[Sequence[int]], ddi_adj: np.ndarray) -> float:
    """Pooled DDI rate of medication sets (e.g. the ground truth of a cohort)."""
    return pooled_ddi_rate(multi_hot(sets, ddi_adj.shape[0]).astype(np.float64), np.asarray(ddi_adj, dtype=np.float64))

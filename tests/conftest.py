"""Shared fixtures. ``tiny_dataset`` is a small random dataset with real SMILES, built in memory,
for model and harness tests that need speed, not clinical realism."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from data_prep.dataset import Patient, Visit, Vocabulary, assemble

torch.set_num_threads(1)

SMILES = [
    ["CC(=O)Oc1ccccc1C(=O)O"],
    ["CN(C)C(=N)NC(=N)N"],
    ["NS(=O)(=O)c1cc(C(=O)O)c(NCc2ccco2)cc1Cl"],
    ["CC(=O)CC(c1ccccc1)c1c(O)c2ccccc2oc1=O"],
    ["CC(C)Cc1ccc(C(C)C(=O)O)cc1", "CC(=O)Nc1ccc(O)cc1"],
    ["OC(=O)CCCc1ccccc1"],
    [],
    ["CCN(CC)CC(=O)Nc1c(C)cccc1C"],
]


def make_tiny_dataset(n_patients: int = 40, seed: int = 0):
    rng = np.random.default_rng(seed)
    n_diag, n_proc, n_med = 12, 6, len(SMILES)
    patients = []
    for i in range(n_patients):
        n_visits = 1 if i % 3 == 0 else int(rng.integers(2, 5))
        visits = []
        chronic = int(rng.integers(0, n_med))
        for t in range(n_visits):
            diag = tuple(sorted(set(rng.choice(n_diag, size=int(rng.integers(1, 4)), replace=False).tolist())))
            proc = tuple(sorted(set(rng.choice(n_proc, size=int(rng.integers(1, 3)), replace=False).tolist())))
            meds = {chronic, diag[0] % n_med}
            visits.append(Visit(diag, proc, tuple(sorted(meds)), admit_time=f"2100-01-{t + 1:02d}T00:00:00"))
        patients.append(Patient(f"p{i:03d}", tuple(visits), (int(rng.integers(0, 3)), int(rng.integers(0, 2)))))
    ddi = np.zeros((n_med, n_med), dtype=np.uint8)
    ddi[0, 3] = ddi[3, 0] = ddi[1, 4] = ddi[4, 1] = 1
    return assemble(
        name="tiny",
        patients=patients,
        diagnoses=Vocabulary("diagnosis", [f"D{i}" for i in range(n_diag)], [f"diagnosis {i}" for i in range(n_diag)]),
        procedures=Vocabulary("procedure", [f"P{i}" for i in range(n_proc)], [f"procedure {i}" for i in range(n_proc)]),
        medications=Vocabulary("medication", [f"M{i:02d}" for i in range(n_med)], [f"medication {i}" for i in range(n_med)]),
        profile_values={"age": ["18-39", "40-64", "65+"], "gender": ["F", "M"]},
        ddi_adj=ddi,
        smiles=SMILES,
        seed=seed,
    )


@pytest.fixture(autouse=True, scope="session")
def isolated_cache(tmp_path_factory):
    """Tests never read or write the user's cache (prepared datasets, teachers, teacher states)."""
    import os

    root = tmp_path_factory.mktemp("medrec-cache")
    previous = os.environ.get("MEDREC_BENCH_CACHE")
    os.environ["MEDREC_BENCH_CACHE"] = str(root)
    yield root
    if previous is None:
        os.environ.pop("MEDREC_BENCH_CACHE", None)
    else:
        os.environ["MEDREC_BENCH_CACHE"] = previous


@pytest.fixture(scope="session")
def tiny_dataset():
    return make_tiny_dataset()


def make_spec(entries, *, stats="bootstrap", resamples=None, paired=True, holm=False, **fields):
    """A RunSpec for ``entries``: the statistics' settings by name, every other keyword a spec field."""
    from bench.spec import RunSpec, Statistics

    return RunSpec(tuple(entries), statistics=Statistics(stats, resamples, paired, holm), **fields)


def run_spec(dataset, entries, run_dir, **kwargs):
    """Run ``entries`` on ``dataset`` into ``run_dir`` (the runner's entry point, spec built by :func:`make_spec`)."""
    from bench.runner import run

    return run(dataset, make_spec(entries, **kwargs), run_dir)

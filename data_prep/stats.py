"""The statistics of the LEADER paper's Table III and the realism figures of any prepared dataset (synthetic,
MIMIC, MEDS), plus the MIMIC mapping coverage, the medication events a MEDS reader recognised and mapped,
the hadm_id join rates, the codes without a name, the prescription rows each window rule keeps and the aux sources.

Counts are per visit (codes of one admission), as the paper's "avg./max. # of diagnoses per visit". The
realism figures say how much a cohort rewards history and DDI control: how much of a visit's medication
set the patient's previous (or any earlier) visit already held, the consecutive visits' Jaccard, the
ground truth's DDI rate and the DDI graph's density (:func:`realism_statistics`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from data_prep.code_sets import ddi_pair_counts, multi_hot
from data_prep.dataset import SPLITS, PreparedDataset

REALISM_KEYS = (
    "multi_visit_share",
    "medications_in_previous_visit",
    "medications_in_any_earlier_visit",
    "consecutive_visit_jaccard",
    "ddi_rate_ground_truth",
    "ddi_density",
)


def dataset_statistics(dataset: PreparedDataset) -> dict:
    visits = [v for p in dataset.patients for v in p.visits]
    groups = [p.group for p in dataset.patients]
    per_visit = {
        kind: np.array([len(getattr(v, kind)) for v in visits], dtype=np.int64)
        for kind in ("diagnoses", "procedures", "medications")
    }
    stats = {
        "dataset": dataset.name,
        "patients": len(dataset.patients),
        "patients_single_visit": groups.count("single"),
        "patients_multi_visit": groups.count("multi"),
        "visits": len(visits),
        "avg_visits_per_patient": len(visits) / len(dataset.patients),
        "max_visits_per_patient": max(len(p.visits) for p in dataset.patients),
        "diagnoses": dataset.n_diagnoses,
        "procedures": dataset.n_procedures,
        "medications": dataset.n_medications,
        "ddi_pairs": int(dataset.ddi_adj.sum() // 2),
        "split": {part: sum(1 for part_of in dataset.split.values() if part_of == part) for part in SPLITS},
    }
    for kind, counts in per_visit.items():
        stats[f"avg_{kind}_per_visit"] = float(counts.mean())
        stats[f"max_{kind}_per_visit"] = int(counts.max())
    stats.update(realism_statistics(dataset))
    coverage = dataset.meta.get("mapping_coverage")
    if coverage:
        stats["mapping_coverage"] = {
            **coverage,
            "share_of_rows_with_ndc_via_rxcui": coverage["rows_mapped_via_rxcui"] / max(coverage["rows_with_ndc"], 1),
            "share_of_rows_with_ndc_mapped": coverage["rows_mapped"] / max(coverage["rows_with_ndc"], 1),
            "share_of_distinct_ndcs_mapped": coverage["distinct_ndcs_mapped"] / max(coverage["distinct_ndcs"], 1),
        }
    for key in ("medication_source", "join_rates", "unnamed_codes", "prescription_rows_by_window", "ddi_source", "split_source"):
        if key in dataset.meta:
            stats[key] = dataset.meta[key]
    files = dataset.meta.get("files", {})
    if files:
        stats["aux_sources"] = aux_provenance(files, dataset.meta.get("ddi_source", ""))
    return stats


def aux_provenance(files: dict[str, str], ddi_source: str) -> dict[str, str]:
    """Which aux file each graph and mapping came from (and, for a folder built by ``bench data aux``,
    which published file that was made from)."""
    from data_prep.published_aux import aux_sources

    def describe(role: str) -> str:
        path = files.get(role)
        if path is None:
            return "none"
        made = aux_sources(Path(path).parent).get(Path(path).name)
        return f"{path} ({made})" if made else path

    return {
        "ddi_graph": ddi_source or "?",
        "molecules (SMILES)": describe("atc3_smiles"),
        "ndc -> rxcui": describe("ndc_to_rxcui"),
        "rxcui -> atc": describe("rxcui_to_atc"),
        "medication names": describe("atc_names"),
    }


def realism_statistics(dataset: PreparedDataset) -> dict:
    """The figures that say whether a cohort behaves like MIMIC where medication recommendation is sensitive.

    Persistence is averaged over the visits that have an earlier visit: the share of the visit's medications
    that the previous visit held (``medications_in_previous_visit``), that any earlier visit held, and the
    Jaccard of the two consecutive sets. The DDI rate is pooled over every visit (interacting pairs / all
    pairs of each visit's set, as the evaluation's DDI rate); the density is the DDI graph's edges over the
    possible pairs of the medication vocabulary.
    """
    in_previous, in_earlier, jaccard = [], [], []
    for patient in dataset.patients:
        earlier: set[int] = set()
        previous: set[int] | None = None
        for visit in patient.visits:
            current = set(visit.medications)
            if previous is not None and current:
                in_previous.append(len(current & previous) / len(current))
                in_earlier.append(len(current & earlier) / len(current))
                jaccard.append(len(current & previous) / len(current | previous))
            earlier |= current
            previous = current
    n_meds = dataset.n_medications
    return {
        "multi_visit_share": sum(p.group == "multi" for p in dataset.patients) / len(dataset.patients),
        "visit_pairs": len(in_previous),
        "medications_in_previous_visit": float(np.mean(in_previous)) if in_previous else float("nan"),
        "medications_in_any_earlier_visit": float(np.mean(in_earlier)) if in_earlier else float("nan"),
        "consecutive_visit_jaccard": float(np.mean(jaccard)) if jaccard else float("nan"),
        "ddi_rate_ground_truth": ground_truth_ddi_rate(dataset),
        "ddi_density": float(np.triu(dataset.ddi_adj, 1).sum()) / max(n_meds * (n_meds - 1) / 2, 1),
    }


def ground_truth_ddi_rate(dataset: PreparedDataset, chunk: int = 20000) -> float:
    """Interacting pairs / all pairs over every visit's medication set, counted in chunks of visits so that a
    MIMIC-IV-sized cohort needs no visits x medications matrix at once."""
    sets = [v.medications for p in dataset.patients for v in p.visits]
    adj = np.asarray(dataset.ddi_adj, dtype=np.float32)
    interacting = pairs = 0.0
    for start in range(0, len(sets), chunk):
        rows = multi_hot(sets[start : start + chunk], adj.shape[0]).astype(np.float32)
        counted, possible = ddi_pair_counts(rows, adj)
        interacting += float(counted.sum())
        pairs += float(possible.sum())
    return interacting / pairs if pairs > 0 else 0.0

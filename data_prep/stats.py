"""The statistics of the LEADER paper's Table III, plus the MIMIC mapping coverage, the hadm_id join
rates, the codes without a name, the prescription rows each window rule keeps and the aux sources.

Counts are per visit (codes of one admission), as the paper's "avg./max. # of diagnoses per visit".
The DDI rate of the ground truth needs ``bench.metrics`` and is added by the CLI: the data layer
knows no model and no metric.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from data_prep.dataset import SPLITS, PreparedDataset


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
    coverage = dataset.meta.get("mapping_coverage")
    if coverage:
        stats["mapping_coverage"] = {
            **coverage,
            "share_of_rows_with_ndc_via_rxcui": coverage["rows_mapped_via_rxcui"] / max(coverage["rows_with_ndc"], 1),
            "share_of_rows_with_ndc_mapped": coverage["rows_mapped"] / max(coverage["rows_with_ndc"], 1),
            "share_of_distinct_ndcs_mapped": coverage["distinct_ndcs_mapped"] / max(coverage["distinct_ndcs"], 1),
        }
    for key in ("join_rates", "unnamed_codes", "prescription_rows_by_window", "ddi_source", "split_source"):
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

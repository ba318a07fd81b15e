"""The medication-recommendation pipeline that every event-table source shares (MIMIC-III, MIMIC-IV, MEDS).

A reader turns its tables into (admission, code) pairs per kind (:class:`CodePairs`: diagnoses and
procedures as ICD codes, medications as ATC3 classes through :func:`map_ndcs` and
:func:`medication_pairs`) and one profile row per admission (:func:`encode_profiles`); this module does
the rest, each step an option of :class:`PipelineOptions` whose default is the LEADER paper's (Liu et
al., "Large Language Model Distilling Medication Recommendation Model", 2024):

1. which prescriptions count, ``prescription_window``:

   - ``"first-hours"`` (default): start < admission time + ``first_hours`` (24). This is the LEADER
     paper's sentence ("prescriptions within the first 24 hours"). MIMIC-III start dates have day
     resolution, so after an afternoon admission the orders dated the next day are kept too (up to
     ~48 h of orders); MIMIC-IV start times are exact;
   - ``"first-start-date"``: each stay's earliest start date (among rows with an NDC), what the
     GAMENet/SafeDrug ``processing.py`` scripts keep (they group by ICU stay; here by admission, which
     MIMIC-IV's prescriptions also carry);
   - ``"all"``: no time filter, as LEADER's released preprocessing does.

   ``meta["prescription_rows_by_window"]`` counts the mapped rows each rule keeps (on the MIMIC-III
   demo 3,083 / 2,057 / 7,284);
2. NDC -> RXCUI -> ATC3 (:mod:`data_prep.aux_maps`), with the ATC table's own NDC column as fallback
   (``ndc_fallback``); medications without SMILES are dropped (``require_smiles``);
3. the ``top_diagnoses`` / ``top_procedures`` / ``top_medications`` most frequent codes (2000 / 1000 /
   300), frequency = number of visits with the code, ties broken by code (:func:`select_visits`);
4. a visit is kept when it has every kind of ``required_code_kinds`` (all three by default), a
   patient when it has ``min_visits`` (1: LEADER keeps single-visit patients; SafeDrug used 2);
5. :func:`finish_dataset`: patients with per-visit profiles, code names (:func:`icd_names`), medication
   names, SMILES and the DDI graph from the aux files, then the split and EHR graph every source shares.

Deliberate differences from the published preprocessing (GAMENet/SafeDrug ``processing.py``):
visits are ordered by admission time, not by HADM_ID; missing NDCs are dropped, never forward-filled
(``fillna(method="pad")`` there copies one patient's drug into the next patient's rows);
``ndc2RXCUI.txt`` is read with ``ast.literal_eval``; medication frequency counts visits, not
prescription rows; the procedure top-k keeps k codes (``loc[:1000]`` kept 1001); the DDI side
effects are the most frequent ones unless ``ddi_side_effects="least-frequent"`` (see aux_maps).

Every step after reading is numpy on integer ids; per-value work (stripping, NDC mapping, ICD
versions) runs once per distinct value.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

from data_prep import code_names
from data_prep.aux_maps import (
    SIDE_EFFECT_SELECTIONS,
    AuxFiles,
    SideEffectSelection,
    ddi_adjacency,
    load_atc3_smiles,
    load_atc_names,
    load_ddi_pairs,
    load_ndc_to_rxcui,
    load_rxcui_to_atc,
    map_ndc_to_atc3,
    twosides_pairs,
)
from data_prep.dataset import AGE_BAND_EDGES, AGE_BANDS, Patient, PreparedDataset, Visit, Vocabulary, assemble
from data_prep.tables import NO_TIME, DataError

CODE_KINDS = ("diagnoses", "procedures", "medications")
PROFILE_FIELDS = ["age", "gender", "insurance", "ethnicity", "marital_status"]
MISSING = "UNKNOWN"
SINGULAR = {"diagnoses": "diagnosis", "procedures": "procedure"}
PrescriptionWindow = Literal["first-hours", "first-start-date", "all"]
PRESCRIPTION_WINDOWS = ("first-hours", "first-start-date", "all")


@dataclass(frozen=True)
class PipelineOptions:
    """The pipeline's choices; defaults are the LEADER paper's (see the module docstring)."""

    prescription_window: PrescriptionWindow = "first-hours"
    """Which prescriptions count: first-hours (start < admission + first_hours, the LEADER paper's sentence), first-start-date (each stay's earliest start date, the GAMENet/SafeDrug scripts) or all (LEADER's released preprocessing)."""
    first_hours: float = 24.0
    """The first-hours window, in hours."""
    ndc_fallback: bool = True
    """Map NDCs missing from ndc2RXCUI through the NDC column of ndc2atc_level4."""
    require_smiles: bool = True
    """Keep only medications with SMILES (every molecule-based model needs them)."""
    top_diagnoses: int | None = 2000
    """Keep the k most frequent diagnoses (none: every code)."""
    top_procedures: int | None = 1000
    """Keep the k most frequent procedures (none: every code)."""
    top_medications: int | None = 300
    """Keep the k most frequent medications (none: every class)."""
    required_code_kinds: tuple[str, ...] = CODE_KINDS
    """Code kinds a visit must have to be kept (comma-separated: diagnoses, procedures, medications)."""
    min_visits: int = 1
    """Drop patients with fewer visits (LEADER keeps single-visit patients; SafeDrug used 2)."""
    ddi_source: Literal["auto", "twosides", "pairs"] = "auto"
    """DDI graph source: TWOSIDES (drug-DDI.csv), ddi_atc3_pairs.csv, or auto (TWOSIDES when the aux folder has it)."""
    ddi_side_effects: SideEffectSelection = "most-frequent"
    """Which TWOSIDES side effects define the DDI graph (least-frequent reproduces GAMENet's selection)."""
    ddi_top_k: int = 40
    """How many TWOSIDES side effects define the DDI graph."""
    split_seed: int = 0
    """Seed of the patient-level 8:1:1 split."""
    max_unknown_code_share: float = 0.5
    """Fail when more rows than this share hold codes unknown to the ICD code system."""

    def __post_init__(self) -> None:
        kinds = tuple(self.required_code_kinds)
        object.__setattr__(self, "required_code_kinds", kinds)
        if not kinds or set(kinds) - set(CODE_KINDS):
            raise ValueError(f"required_code_kinds must be a non-empty subset of {CODE_KINDS}, got {kinds}")
        if self.ddi_side_effects not in SIDE_EFFECT_SELECTIONS:
            raise ValueError(f"ddi_side_effects must be one of {SIDE_EFFECT_SELECTIONS}, got {self.ddi_side_effects!r}")
        if self.ddi_source not in ("auto", "twosides", "pairs"):
            raise ValueError(f"ddi_source must be auto, twosides or pairs, got {self.ddi_source!r}")
        if self.prescription_window not in PRESCRIPTION_WINDOWS:
            raise ValueError(f"prescription_window must be one of {PRESCRIPTION_WINDOWS}, got {self.prescription_window!r}")
        if self.first_hours is None or self.first_hours <= 0:
            raise ValueError(f"first_hours must be a positive number of hours, got {self.first_hours!r} (prescription_window='all' keeps every prescription)")
        if not 0 <= self.max_unknown_code_share <= 1:
            raise ValueError(f"max_unknown_code_share must be within [0, 1], got {self.max_unknown_code_share}")
        if self.min_visits < 1:
            raise ValueError(f"min_visits must be at least 1, got {self.min_visits}")


@dataclass(frozen=True)
class CodePairs:
    """Distinct (admission, code) pairs of one kind: ``visit`` indexes the admissions frame, ``code``
    indexes ``codes``."""

    visit: np.ndarray
    code: np.ndarray
    codes: list[str]

    @classmethod
    def from_rows(cls, visit: np.ndarray, code: np.ndarray, codes: list[str]) -> "CodePairs":
        """Rows with an admission (``visit >= 0``) and a code (``code >= 0``), duplicates dropped."""
        keep = (visit >= 0) & (code >= 0)
        key = unique_ints(visit[keep].astype(np.int64) * max(len(codes), 1) + code[keep])
        return cls(key // max(len(codes), 1), key % max(len(codes), 1), codes)

    def most_frequent(self, k: int | None) -> "CodePairs":
        """Keep the k codes found in the most visits (ties broken by code, so the choice is stable)."""
        if k is None:
            return self
        counts = np.bincount(self.code, minlength=len(self.codes))
        ranked = sorted(np.flatnonzero(counts).tolist(), key=lambda c: (-counts[c], self.codes[c]))
        keep = np.zeros(len(self.codes), dtype=bool)
        keep[ranked[:k]] = True
        return self.where(keep[self.code])

    def where(self, mask: np.ndarray) -> "CodePairs":
        return CodePairs(self.visit[mask], self.code[mask], self.codes)


@dataclass(frozen=True)
class KeptVisits:
    """The visits that survive the pipeline (admissions rows, sorted by subject, time, id), each
    kind's vocabulary and each visit's sorted code indices (aligned with ``visits``)."""

    visits: pd.DataFrame
    vocabularies: dict[str, list[str]]
    codes: dict[str, list[tuple[int, ...]]]


def select_visits(admissions: pd.DataFrame, codes: dict[str, CodePairs], options, *, source: str, join_rates: dict) -> KeptVisits:
    """Top-k codes, visits that have every required kind, patients with ``min_visits``; vocabularies
    are the codes that remain, sorted. ``admissions`` has subject_id, hadm_id and admittime."""
    limits = {"diagnoses": options.top_diagnoses, "procedures": options.top_procedures, "medications": options.top_medications}
    codes = {kind: pairs.most_frequent(limits[kind]) for kind, pairs in codes.items()}
    kept = np.ones(len(admissions), dtype=bool)
    for kind in options.required_code_kinds:
        has = np.zeros(len(admissions), dtype=bool)
        has[codes[kind].visit] = True
        kept &= has
    visits = admissions[kept].sort_values(["subject_id", "admittime", "hadm_id"])
    visit_counts = visits.groupby("subject_id")["hadm_id"].transform("size")
    visits = visits[visit_counts >= options.min_visits]
    if visits.empty:
        rates = ", ".join(f"{table} {_share(rate)}" for table, rate in join_rates.items())
        raise DataError(
            f"{source}: no patient is left after preprocessing (rows whose hadm_id joins admissions: {rates}); "
            "check that hadm_id is written the same way in every table (e.g. 142345, not 142345.0) and the pipeline options"
        )
    final = np.zeros(len(admissions), dtype=bool)
    final[visits.index.to_numpy()] = True
    vocabularies, per_visit = {}, {}
    for kind, pairs in codes.items():
        pairs = pairs.where(final[pairs.visit])
        used = np.flatnonzero(np.bincount(pairs.code, minlength=len(pairs.codes)))
        vocabulary = sorted(pairs.codes[c] for c in used.tolist())
        rank = np.full(len(pairs.codes), -1, dtype=np.int64)
        position = {code: i for i, code in enumerate(vocabulary)}
        rank[used] = [position[pairs.codes[c]] for c in used.tolist()]
        vocabularies[kind] = vocabulary
        per_visit[kind] = _codes_by_visit(pairs.visit, rank[pairs.code], len(vocabulary), visits.index.to_numpy())
    return KeptVisits(visits, vocabularies, per_visit)


def _share(rate: dict) -> str:
    return f"{100 * rate['joined'] / max(rate['rows'], 1):.0f}%" if rate["rows"] else "no rows"


def _codes_by_visit(visit: np.ndarray, index: np.ndarray, vocabulary_size: int, order: np.ndarray) -> list[tuple[int, ...]]:
    """Per visit of ``order`` (admission positions), its sorted code indices: one sort, one split."""
    key = unique_ints(visit.astype(np.int64) * max(vocabulary_size, 1) + index)
    visit_of_key, index_of_key = key // max(vocabulary_size, 1), (key % max(vocabulary_size, 1)).tolist()
    bounds_lo = np.searchsorted(visit_of_key, order, side="left").tolist()
    bounds_hi = np.searchsorted(visit_of_key, order, side="right").tolist()
    return [tuple(index_of_key[lo:hi]) for lo, hi in zip(bounds_lo, bounds_hi)]


def finish_dataset(name, kept: KeptVisits, profiles, profile_values, aux: AuxFiles, options, *, names: dict, meta: dict) -> PreparedDataset:
    """Patients from the kept visits, medication names, SMILES and the DDI graph from the aux files."""
    visits = kept.visits
    admit = visits["admittime"]
    admit_text = (
        np.datetime_as_string(admit.to_numpy("datetime64[s]"), unit="s").tolist()
        if (admit.dt.microsecond == 0).all() and (admit.dt.nanosecond == 0).all()
        else [t.isoformat() for t in admit]
    )
    subjects = visits["subject_id"].tolist()
    at_visit = [tuple(int(c) for c in row) for row in profiles]
    patients = []
    start = 0
    for end in range(1, len(subjects) + 1):
        if end == len(subjects) or subjects[end] != subjects[start]:
            profile = at_visit[end - 1]  # the patient's profile is the last (predicted) visit's
            patient_visits = tuple(
                # an earlier visit keeps its own profile only where it differs (age then, that admission's insurance, ...)
                Visit(kept.codes["diagnoses"][v], kept.codes["procedures"][v], kept.codes["medications"][v], admit_text[v],
                      profile=at_visit[v] if at_visit[v] != profile else ())
                for v in range(start, end)
            )
            patients.append(Patient(str(subjects[start]), patient_visits, profile))
            start = end
    smiles = load_atc3_smiles(aux.atc3_smiles)
    atc_names = load_atc_names(aux.atc_names)
    med_codes = kept.vocabularies["medications"]
    ddi_pairs, ddi_source = _ddi_pairs(aux, options)
    return assemble(
        name=name,
        patients=patients,
        diagnoses=Vocabulary("diagnosis", kept.vocabularies["diagnoses"], names["diagnoses"]),
        procedures=Vocabulary("procedure", kept.vocabularies["procedures"], names["procedures"]),
        medications=Vocabulary("medication", med_codes, [atc_names.get(code, f"ATC class {code}") for code in med_codes]),
        profile_values=profile_values,
        ddi_adj=ddi_adjacency(ddi_pairs, med_codes),
        smiles=[smiles.get(code, []) for code in med_codes],
        seed=options.split_seed,
        meta={**meta, "ddi_source": ddi_source},
    )


def unique_ints(values: np.ndarray, *, return_inverse: bool = False):
    """Sorted distinct values (and each input's index among them), by one sort: numpy's own
    ``np.unique`` is many times slower on millions of integers here."""
    order = np.argsort(values, kind="stable")
    ordered = values[order]
    first = np.r_[True, ordered[1:] != ordered[:-1]] if len(ordered) else np.zeros(0, dtype=bool)
    distinct = ordered[first]
    if not return_inverse:
        return distinct
    inverse = np.empty(len(values), dtype=np.int64)
    inverse[order] = np.cumsum(first) - 1
    return distinct, inverse


def dedupe(texts: list[str]) -> tuple[list[str], np.ndarray]:
    """Distinct texts in first-seen order, and each input's index among them."""
    index: dict[str, int] = {}
    remap = np.array([index.setdefault(t, len(index)) for t in texts], dtype=np.int64)
    return list(index), remap


def check_known_codes(path: Path, column: str, codes: list[str], rows: np.ndarray, kind: str, versioned: bool, options) -> None:
    """Fail when codes are clearly not the code system's (the ICD tables of data_prep.code_names are
    offline): more than ``max_unknown_code_share`` of the rows hold unknown codes, or no code starts
    with 0 while codes that are known only with a leading 0 are common (a spreadsheet dropped the zeros:
    ``0389`` became ``389``)."""
    total = int(rows.sum())
    if not total:
        return
    unknown_rows = padded_rows = zero_rows = 0
    examples, padded_examples = [], []
    for code, count in zip(codes, rows.tolist()):
        version, bare = code[3:].split(":", 1) if versioned else ("9", code)
        names = icd_code_names(kind, version)
        zero_rows += count * bare.startswith("0")
        if bare in names:
            continue
        unknown_rows += count
        examples.append(code)
        padded = next((p for p in ("0" + bare, "00" + bare) if p in names), None)
        if padded:
            padded_rows += count
            padded_examples.append(f"{code!r} -> {padded!r}")
    if not zero_rows and padded_rows >= 0.01 * total and len(padded_examples) >= 3:
        raise DataError(
            f"{path}: column {column} has no code starting with 0, but {padded_rows} rows hold codes known only with a leading zero "
            f"({', '.join(padded_examples[:3])}): the leading zeros were lost (a spreadsheet?) - re-export the table with codes as text"
        )
    if unknown_rows > options.max_unknown_code_share * total:
        raise DataError(
            f"{path}: column {column}: {100 * unknown_rows / total:.0f}% of rows hold codes unknown to the ICD {kind} code system "
            f"(e.g. {', '.join(repr(c) for c in examples[:3])}); codes must be written as MIMIC writes them (no dots, leading zeros kept) "
            "- or raise max_unknown_code_share"
        )


def map_ndcs(ndc_ids: np.ndarray, ndc_values: list[str], aux: AuxFiles, options) -> tuple[np.ndarray, list[str], dict]:
    """Per row, the index of its ATC3 class in the returned class list (-1: empty or unmapped NDC),
    and the mapping coverage; each distinct NDC is mapped once."""
    ndcs, remap = dedupe([v.strip() for v in ndc_values])
    rows = np.bincount(remap[ndc_ids[ndc_ids >= 0]], minlength=len(ndcs))
    mapping = map_ndc_to_atc3(
        pd.Series(ndcs + [None], dtype=object),
        load_ndc_to_rxcui(aux.ndc_to_rxcui),
        load_rxcui_to_atc(aux.rxcui_to_atc),
        ndc_fallback=options.ndc_fallback,
        rows=np.append(rows, (ndc_ids < 0).sum()),
    )
    atc3 = mapping.atc3.iloc[:-1]
    codes, code_of_atc = dedupe([a for a in atc3 if isinstance(a, str)])
    code_of_ndc = np.full(len(ndcs) + 1, -1, dtype=np.int32)  # the last entry: an empty NDC
    code_of_ndc[np.flatnonzero(atc3.notna().to_numpy())] = code_of_atc
    remap = np.append(remap, len(ndcs))  # id -1 (no NDC) picks the last entry, also when there is no NDC at all
    return code_of_ndc[remap[ndc_ids]], codes, mapping.coverage


def medication_pairs(visit, start, with_code, mapped, row_code, codes, admissions, aux: AuxFiles, options) -> tuple[CodePairs, dict]:
    """Apply the prescription window and the SMILES requirement to mapped medication rows."""
    kept_by_window = _window_rows(visit, start, with_code, admissions["admittime"].to_numpy("datetime64[ns]").astype(np.int64), options.first_hours)
    in_window = mapped & kept_by_window[options.prescription_window]
    rows_in_window = int(in_window.sum())
    if options.require_smiles:
        smiles = load_atc3_smiles(aux.atc3_smiles)
        in_window &= np.array([c in smiles for c in codes] + [False])[row_code]
    meta = {
        "mapped_rows_within_first_hours": rows_in_window,
        "prescription_rows_by_window": {rule: int((mapped & (visit >= 0) & keep).sum()) for rule, keep in kept_by_window.items()},
    }
    return CodePairs.from_rows(np.where(in_window, visit, -1), row_code, codes), meta


def _window_rows(visit: np.ndarray, start: np.ndarray, with_code: np.ndarray, admit: np.ndarray, first_hours: float) -> dict[str, np.ndarray]:
    """Which medication rows each rule of :data:`PRESCRIPTION_WINDOWS` keeps (see PipelineOptions).

    ``start`` and ``admit`` are nanoseconds (``NO_TIME`` where missing); ``with_code`` marks rows with
    a drug code, among which "first-start-date" finds each admission's earliest start day."""
    has_time = (visit >= 0) & (start != NO_TIME)
    deadline = admit + int(first_hours * 3600 * 1e9)
    first_hours_rows = has_time & (start < deadline[np.maximum(visit, 0)])
    day = (start // (86_400 * 10**9)).astype(np.int32)  # days since 1970: MIMIC's shifted years fit easily
    counted = has_time & with_code
    earliest = np.full(len(admit), np.iinfo(np.int32).max, dtype=np.int32)
    np.minimum.at(earliest, visit[counted], day[counted])
    first_day_rows = has_time & (day == earliest[np.maximum(visit, 0)])
    return {"first-hours": first_hours_rows, "first-start-date": first_day_rows, "all": np.ones(len(visit), dtype=bool)}


def encode_profiles(age: pd.Series, gender: pd.Series, admissions: pd.DataFrame) -> tuple[np.ndarray, dict[str, list[str]]]:
    """Profile value indices per row of ``admissions`` (one visit each; ``age`` and ``gender`` aligned with
    it) and the value names; age in years becomes an age band, missing values become UNKNOWN."""
    fields = pd.DataFrame(
        {
            "age": _age_band(age),
            "gender": gender,
            "insurance": admissions["insurance"],
            "ethnicity": admissions["ethnicity"],
            "marital_status": admissions["marital_status"],
        }
    ).fillna(MISSING)
    values = {f: (list(AGE_BANDS) if f == "age" else sorted(fields[f].unique())) for f in PROFILE_FIELDS}
    codes = np.stack([pd.Categorical(fields[f], categories=values[f]).codes for f in PROFILE_FIELDS], axis=1)
    return codes, values


def _age_band(age: pd.Series) -> pd.Series:
    band = pd.cut(age, bins=[-np.inf, *AGE_BAND_EDGES, np.inf], right=False, labels=list(AGE_BANDS[:-1]))
    return band.astype(object).where(age.notna(), "unknown")


def _ddi_pairs(aux: AuxFiles, options: PipelineOptions) -> tuple[set[tuple[str, str]], str]:
    use_twosides = options.ddi_source == "twosides" or (options.ddi_source == "auto" and aux.twosides_ddi is not None)
    if use_twosides:
        if aux.twosides_ddi is None:
            raise DataError("ddi_source='twosides' but the aux folder has no drug-DDI.csv")
        pairs = twosides_pairs(aux.twosides_ddi, aux.twosides_atc, top_k=options.ddi_top_k, side_effects=options.ddi_side_effects)
        return pairs, f"TWOSIDES {aux.twosides_ddi.name}, {options.ddi_top_k} {options.ddi_side_effects} side effects"
    if aux.ddi_pairs is None:
        raise DataError("ddi_source='pairs' but the aux folder has no ddi_atc3_pairs.csv")
    return load_ddi_pairs(aux.ddi_pairs), f"{aux.ddi_pairs.name} (GAMENet's 40 side effects)"


def icd_names(codes: list[str], kind: str, described: dict[str, str]) -> tuple[list[str], int]:
    """A name for each code of one kind ("diagnoses" or "procedures"): the source's own description
    (``described``), else the ICD tables of :mod:`data_prep.code_names` (``ICD{version}:{code}`` for
    versioned codes, ICD-9 otherwise), else the code itself; and how many codes the tables do not know."""
    out, unnamed = [], 0
    tables: dict[str, dict[str, str]] = {}  # ICD version -> its code_names table, loaded when first needed
    for code in codes:
        if code in described:
            out.append(described[code])
            continue
        version, bare = code[3:].split(":", 1) if code.startswith("ICD") and ":" in code else ("9", code)
        if version not in tables:
            tables[version] = icd_code_names(kind, version) if version in ("9", "10") else {}
        unnamed += bare not in tables[version]
        out.append(code_names.name_for(bare, tables[version], f"icd{version}_{SINGULAR[kind]}"))
    return out, unnamed


def icd_code_names(kind: str, version: str) -> dict[str, str]:
    return {
        ("diagnoses", "9"): code_names.icd9_diagnosis_names,
        ("diagnoses", "10"): code_names.icd10_diagnosis_names,
        ("procedures", "9"): code_names.icd9_procedure_names,
        ("procedures", "10"): code_names.icd10_procedure_names,
    }[(kind, version)]()

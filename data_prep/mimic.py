"""MIMIC-III and MIMIC-IV readers and the standard medication-recommendation pipeline.

The pipeline of GAMENet/SafeDrug as the LEADER paper (Liu et al., "Large Language Model Distilling
Medication Recommendation Model", 2024) uses it, each step an option of :class:`MimicOptions` whose
default is the paper's value:

1. prescriptions whose start is within ``first_hours`` (24) of the admission time (LEADER's rule;
   MIMIC-III start dates have day resolution, so a prescription dated the admission day counts);
2. NDC -> RXCUI -> ATC3 (:mod:`data_prep.aux_maps`), with the ATC table's own NDC column as fallback
   (``ndc_fallback``); medications without SMILES are dropped (``require_smiles``);
3. the ``top_diagnoses`` / ``top_procedures`` / ``top_medications`` most frequent codes (2000 / 1000 /
   300), frequency = number of visits with the code, ties broken by code;
4. a visit is kept when it has every kind of ``required_code_kinds`` (all three by default), a
   patient when it has ``min_visits`` (1: LEADER keeps single-visit patients; SafeDrug used 2).

Deliberate differences from the published preprocessing (GAMENet/SafeDrug ``processing.py``):
visits are ordered by admission time, not by HADM_ID; missing NDCs are dropped, never forward-filled
(``fillna(method="pad")`` there copies one patient's drug into the next patient's rows);
``ndc2RXCUI.txt`` is read with ``ast.literal_eval``; medication frequency counts visits, not
prescription rows; the procedure top-k keeps k codes (``loc[:1000]`` kept 1001); the DDI side
effects are the most frequent ones unless ``ddi_side_effects="least-frequent"`` (see aux_maps).

MIMIC-IV (``hosp/`` layout) writes ``icd_code`` + ``icd_version``: codes are prefixed ``ICD9:`` /
``ICD10:`` so the two systems stay distinct. Its ``race`` column fills the ``ethnicity`` field.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

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
from data_prep import code_names
from data_prep.dataset import Patient, PreparedDataset, Visit, Vocabulary, assemble
from data_prep.tables import DataError, find_table, read_table

CODE_KINDS = ("diagnoses", "procedures", "medications")
PROFILE_FIELDS = ["age", "gender", "insurance", "ethnicity", "marital_status"]
AGE_BANDS = ["<18", "18-39", "40-64", "65-79", "80+", "unknown"]
MISSING = "UNKNOWN"
SINGULAR = {"diagnoses": "diagnosis", "procedures": "procedure"}


@dataclass(frozen=True)
class MimicOptions:
    """The pipeline's choices; defaults are the LEADER paper's (see the module docstring)."""

    first_hours: float | None = 24.0  # None keeps every prescription of the admission
    ndc_fallback: bool = True
    require_smiles: bool = True
    top_diagnoses: int | None = 2000  # None keeps every code
    top_procedures: int | None = 1000
    top_medications: int | None = 300
    required_code_kinds: tuple[str, ...] = CODE_KINDS
    min_visits: int = 1
    ddi_source: Literal["auto", "twosides", "pairs"] = "auto"  # auto: TWOSIDES when drug-DDI.csv is there
    ddi_side_effects: SideEffectSelection = "most-frequent"
    ddi_top_k: int = 40
    split_seed: int = 0

    def __post_init__(self) -> None:
        kinds = tuple(self.required_code_kinds)
        object.__setattr__(self, "required_code_kinds", kinds)
        if not kinds or set(kinds) - set(CODE_KINDS):
            raise ValueError(f"required_code_kinds must be a non-empty subset of {CODE_KINDS}, got {kinds}")
        if self.ddi_side_effects not in SIDE_EFFECT_SELECTIONS:
            raise ValueError(f"ddi_side_effects must be one of {SIDE_EFFECT_SELECTIONS}, got {self.ddi_side_effects!r}")
        if self.ddi_source not in ("auto", "twosides", "pairs"):
            raise ValueError(f"ddi_source must be auto, twosides or pairs, got {self.ddi_source!r}")
        if self.min_visits < 1:
            raise ValueError(f"min_visits must be at least 1, got {self.min_visits}")


@dataclass(frozen=True)
class Layout:
    """Where one MIMIC version keeps what the pipeline reads."""

    name: str
    code_column: str
    versioned_codes: bool
    start_column: str
    ethnicity_column: str
    patient_columns: tuple[str, ...]


MIMIC3 = Layout("mimic3", "icd9_code", False, "startdate", "ethnicity", ("subject_id", "gender", "dob"))
MIMIC4 = Layout("mimic4", "icd_code", True, "starttime", "race", ("subject_id", "gender", "anchor_age", "anchor_year"))
LAYOUTS = {"mimic3": MIMIC3, "mimic4": MIMIC4}
TABLES = ("admissions", "patients", "diagnoses_icd", "procedures_icd", "prescriptions")
NAME_TABLES = ("d_icd_diagnoses", "d_icd_procedures")


@dataclass(frozen=True)
class MimicInputs:
    """The located files of one MIMIC folder and one aux folder (resolved before anything is read)."""

    layout: Layout
    tables: dict[str, Path]
    name_tables: dict[str, Path]  # optional: names fall back to data_prep.code_names
    aux: AuxFiles

    def files(self) -> dict[str, Path]:
        return {**self.tables, **self.name_tables, **self.aux.used()}


def locate(version: str, root: str | Path, aux: str | Path) -> MimicInputs:
    """Find every table before reading any, so a missing one fails fast and the cache key knows them."""
    layout = LAYOUTS[version]
    root = Path(root)
    if layout is MIMIC4 and (root / "hosp").is_dir():
        root = root / "hosp"
    tables = {name: find_table(root, name) for name in TABLES}
    name_tables = {}
    for name in NAME_TABLES:
        try:
            name_tables[name] = find_table(root, name)
        except DataError:
            pass  # names come from data_prep.code_names instead
    return MimicInputs(layout, tables, name_tables, AuxFiles.locate(aux))


# ----- the pipeline ------------------------------------------------------------------------------
def read_mimic(inputs: MimicInputs, options: MimicOptions) -> PreparedDataset:
    """Run the pipeline of the module docstring on located inputs."""
    layout, tables = inputs.layout, inputs.tables
    admissions = _read_admissions(tables["admissions"], layout)
    medications, coverage, rows_in_window = _read_medications(inputs, admissions, options)
    codes = {
        "diagnoses": _read_codes(tables["diagnoses_icd"], layout),
        "procedures": _read_codes(tables["procedures_icd"], layout),
        "medications": medications,
    }
    limits = {"diagnoses": options.top_diagnoses, "procedures": options.top_procedures, "medications": options.top_medications}
    known_visits = set(admissions["hadm_id"])
    codes = {kind: _most_frequent(pairs[pairs["hadm_id"].isin(known_visits)], limits[kind]) for kind, pairs in codes.items()}

    kept = set(known_visits)
    for kind in options.required_code_kinds:
        kept &= set(codes[kind]["hadm_id"])
    visits = admissions[admissions["hadm_id"].isin(kept)].sort_values(["subject_id", "admittime", "hadm_id"])
    visit_counts = visits.groupby("subject_id")["hadm_id"].transform("size")
    visits = visits[visit_counts >= options.min_visits]
    codes = {kind: pairs[pairs["hadm_id"].isin(set(visits["hadm_id"]))] for kind, pairs in codes.items()}

    vocab_codes = {kind: sorted(pairs["code"].unique()) for kind, pairs in codes.items()}
    by_visit = {kind: _codes_by_visit(pairs, vocab_codes[kind]) for kind, pairs in codes.items()}
    profiles, profile_values = _profiles(visits, tables["patients"], layout)
    patients = []
    for subject_id, rows in visits.groupby("subject_id", sort=True):
        patient_visits = tuple(
            Visit(
                diagnoses=by_visit["diagnoses"].get(hadm, ()),
                procedures=by_visit["procedures"].get(hadm, ()),
                medications=by_visit["medications"].get(hadm, ()),
                admit_time=admit.isoformat(),
            )
            for hadm, admit in zip(rows["hadm_id"], rows["admittime"])
        )
        patients.append(Patient(str(subject_id), patient_visits, profiles[subject_id]))

    aux = inputs.aux
    smiles = load_atc3_smiles(aux.atc3_smiles)
    atc_names = load_atc_names(aux.atc_names)
    med_codes = vocab_codes["medications"]
    ddi_pairs, ddi_source = _ddi_pairs(aux, options)
    diag_names, diag_unnamed = _icd_names(inputs, "diagnoses", vocab_codes["diagnoses"])
    proc_names, proc_unnamed = _icd_names(inputs, "procedures", vocab_codes["procedures"])
    return assemble(
        name=layout.name,
        patients=patients,
        diagnoses=Vocabulary("diagnosis", vocab_codes["diagnoses"], diag_names),
        procedures=Vocabulary("procedure", vocab_codes["procedures"], proc_names),
        medications=Vocabulary("medication", med_codes, [atc_names.get(code, f"ATC class {code}") for code in med_codes]),
        profile_fields=list(PROFILE_FIELDS),
        profile_values=profile_values,
        ddi_adj=ddi_adjacency(ddi_pairs, med_codes),
        smiles=[smiles.get(code, []) for code in med_codes],
        seed=options.split_seed,
        meta={
            "source": layout.name,
            "options": dataclasses.asdict(options),
            "mapping_coverage": coverage,
            "mapped_rows_within_first_hours": rows_in_window,
            "admissions": len(admissions),
            "visits": len(visits),
            "ddi_source": ddi_source,
            "unnamed_codes": {"diagnoses": diag_unnamed, "procedures": proc_unnamed},
            "files": {role: str(path) for role, path in inputs.files().items()},
        },
    )


def _read_admissions(path: Path, layout: Layout) -> pd.DataFrame:
    columns = ["subject_id", "hadm_id", "admittime", "insurance", layout.ethnicity_column, "marital_status"]
    table = read_table(path, columns).rename(columns={layout.ethnicity_column: "ethnicity"})
    table = table.dropna(subset=["subject_id", "hadm_id"])
    if table["hadm_id"].duplicated().any():
        raise DataError(f"{path}: hadm_id {table.loc[table['hadm_id'].duplicated(), 'hadm_id'].iloc[0]} appears twice")
    table["admittime"] = _parse_times(table["admittime"], path, "admittime")
    return table.dropna(subset=["admittime"])


def _parse_times(values: pd.Series, path: Path, column: str) -> pd.Series:
    parsed = pd.to_datetime(values, errors="coerce", format="ISO8601")
    bad = values.notna() & parsed.isna()
    if bad.any():
        raise DataError(f"{path}: column {column} holds values that are not date-times, e.g. {values[bad].iloc[0]!r}")
    return parsed


def _read_codes(path: Path, layout: Layout) -> pd.DataFrame:
    """(hadm_id, code) pairs, codes as strings; MIMIC-IV codes prefixed by their ICD version."""
    columns = ["hadm_id", layout.code_column] + (["icd_version"] if layout.versioned_codes else [])
    table = read_table(path, columns, code_columns=[layout.code_column]).dropna()
    code = table[layout.code_column].str.strip()
    if layout.versioned_codes:
        code = _versioned(code, table["icd_version"], path)
    return pd.DataFrame({"hadm_id": table["hadm_id"], "code": code}).drop_duplicates()


def _versioned(code: pd.Series, version: pd.Series, path: Path) -> pd.Series:
    version = version.str.strip()
    bad = ~version.isin(["9", "10"])
    if bad.any():
        raise DataError(f"{path}: column icd_version must be 9 or 10, found {version[bad].iloc[0]!r}")
    return "ICD" + version + ":" + code


def _read_medications(inputs: MimicInputs, admissions: pd.DataFrame, options: MimicOptions) -> tuple[pd.DataFrame, dict, int]:
    path, start_column = inputs.tables["prescriptions"], inputs.layout.start_column
    table = read_table(path, ["hadm_id", start_column, "ndc"], code_columns=["ndc"])
    ndc = table["ndc"].str.strip()
    mapping = map_ndc_to_atc3(
        ndc, load_ndc_to_rxcui(inputs.aux.ndc_to_rxcui), load_rxcui_to_atc(inputs.aux.rxcui_to_atc), ndc_fallback=options.ndc_fallback
    )
    rows = pd.DataFrame({"hadm_id": table["hadm_id"], "code": mapping.atc3}).dropna()
    if options.first_hours is not None:
        start = _parse_times(table.loc[rows.index, start_column], path, start_column)
        admit = rows["hadm_id"].map(admissions.set_index("hadm_id")["admittime"])
        rows = rows[start < admit + pd.Timedelta(hours=options.first_hours)]
    rows_in_window = len(rows)
    if options.require_smiles:
        rows = rows[rows["code"].isin(load_atc3_smiles(inputs.aux.atc3_smiles))]
    return rows.drop_duplicates(), mapping.coverage, rows_in_window


def _most_frequent(pairs: pd.DataFrame, k: int | None) -> pd.DataFrame:
    """Keep the k codes found in the most visits (ties broken by code, so the choice is stable)."""
    if k is None:
        return pairs
    counts = pairs.groupby("code").size().reset_index(name="visits").sort_values(["visits", "code"], ascending=[False, True])
    return pairs[pairs["code"].isin(set(counts["code"].head(k)))]


def _codes_by_visit(pairs: pd.DataFrame, vocabulary: list[str]) -> dict[str, tuple[int, ...]]:
    """hadm_id -> sorted code indices, by one sort and one split rather than a Python loop per row."""
    index = pd.Categorical(pairs["code"], categories=vocabulary).codes
    frame = pd.DataFrame({"hadm_id": pairs["hadm_id"].to_numpy(), "index": index}).sort_values(["hadm_id", "index"])
    hadm, idx = frame["hadm_id"].to_numpy(), frame["index"].to_numpy()
    if not len(hadm):
        return {}
    starts = np.flatnonzero(np.r_[True, hadm[1:] != hadm[:-1]])
    return {h: tuple(chunk.tolist()) for h, chunk in zip(hadm[starts], np.split(idx, starts[1:]))}


def _profiles(visits: pd.DataFrame, patients_path: Path, layout: Layout) -> tuple[dict[str, tuple[int, ...]], dict[str, list[str]]]:
    """Each patient's profile at the last (predicted) visit: age band, gender, and the admission's fields."""
    patients = read_table(patients_path, list(layout.patient_columns)).drop_duplicates("subject_id").set_index("subject_id")
    last = visits.groupby("subject_id").tail(1).set_index("subject_id")
    missing = sorted(set(last.index) - set(patients.index))
    if missing:
        raise DataError(f"{patients_path}: no row for subject_id {missing[0]} (and {len(missing) - 1} more) of the admissions")
    patients = patients.loc[last.index]
    if layout is MIMIC3:
        age = _years_between(patients["dob"], last["admittime"])
    else:
        age = pd.to_numeric(patients["anchor_age"], errors="coerce") + last["admittime"].dt.year - pd.to_numeric(
            patients["anchor_year"], errors="coerce"
        )
    fields = pd.DataFrame(
        {
            "age": _age_band(age),
            "gender": patients["gender"],
            "insurance": last["insurance"],
            "ethnicity": last["ethnicity"],
            "marital_status": last["marital_status"],
        }
    ).fillna(MISSING)
    values = {f: (AGE_BANDS if f == "age" else sorted(fields[f].unique())) for f in PROFILE_FIELDS}
    codes = np.stack([pd.Categorical(fields[f], categories=values[f]).codes for f in PROFILE_FIELDS], axis=1)
    return {sid: tuple(int(c) for c in row) for sid, row in zip(fields.index, codes)}, values


def _years_between(dob: pd.Series, admit: pd.Series) -> pd.Series:
    """Whole years from a date-of-birth string to a time; strings, because MIMIC-III shifts the birth
    dates of patients over 89 three centuries back, beyond pandas' nanosecond range."""
    birth = dob.str.extract(r"^(\d{4})-(\d{2})-(\d{2})").astype(float)
    years = admit.dt.year - birth[0]
    before_birthday = (admit.dt.month < birth[1]) | ((admit.dt.month == birth[1]) & (admit.dt.day < birth[2]))
    return years - before_birthday.astype(float)


def _age_band(age: pd.Series) -> pd.Series:
    band = pd.cut(age, bins=[-np.inf, 18, 40, 65, 80, np.inf], right=False, labels=AGE_BANDS[:-1])
    return band.astype(object).where(age.notna(), "unknown")


def _ddi_pairs(aux: AuxFiles, options: MimicOptions) -> tuple[set[tuple[str, str]], str]:
    use_twosides = options.ddi_source == "twosides" or (options.ddi_source == "auto" and aux.twosides_ddi is not None)
    if use_twosides:
        if aux.twosides_ddi is None:
            raise DataError("ddi_source='twosides' but the aux folder has no drug-DDI.csv")
        pairs = twosides_pairs(aux.twosides_ddi, aux.twosides_atc, top_k=options.ddi_top_k, side_effects=options.ddi_side_effects)
        return pairs, f"TWOSIDES {aux.twosides_ddi.name}, {options.ddi_top_k} {options.ddi_side_effects} side effects"
    if aux.ddi_pairs is None:
        raise DataError("ddi_source='pairs' but the aux folder has no ddi_atc3_pairs.csv")
    return load_ddi_pairs(aux.ddi_pairs), f"{aux.ddi_pairs.name} (GAMENet's 40 side effects)"


def _icd_names(inputs: MimicInputs, kind: str, codes: list[str]) -> tuple[list[str], int]:
    """Names from d_icd_* (version respected), then data_prep.code_names; the code itself as last resort."""
    table_name = "d_icd_diagnoses" if kind == "diagnoses" else "d_icd_procedures"
    names: dict[str, str] = {}
    if table_name in inputs.name_tables:
        layout, path = inputs.layout, inputs.name_tables[table_name]
        columns = [layout.code_column] + (["icd_version"] if layout.versioned_codes else []) + ["long_title"]
        table = read_table(path, columns, code_columns=[layout.code_column]).dropna()
        code = table[layout.code_column].str.strip()
        if layout.versioned_codes:
            code = _versioned(code, table["icd_version"], path)
        names = dict(zip(code, table["long_title"].str.strip()))
    out, unnamed = [], 0
    fallback: dict[str, dict[str, str]] = {}  # ICD version -> code_names table, loaded when first needed
    for code in codes:
        if code in names:
            out.append(names[code])
            continue
        version, bare = code[3:].split(":", 1) if inputs.layout.versioned_codes else ("9", code)
        if version not in fallback:
            fallback[version] = _code_names(kind, version)
        unnamed += bare not in fallback[version]
        out.append(code_names.name_for(bare, fallback[version], f"icd{version}_{SINGULAR[kind]}"))
    return out, unnamed


def _code_names(kind: str, version: str) -> dict[str, str]:
    return {
        ("diagnoses", "9"): code_names.icd9_diagnosis_names,
        ("diagnoses", "10"): code_names.icd10_diagnosis_names,
        ("procedures", "9"): code_names.icd9_procedure_names,
        ("procedures", "10"): code_names.icd10_procedure_names,
    }[(kind, version)]()

"""MIMIC-III and MIMIC-IV: the ``mimic3`` and ``mimic4`` dataset sources.

Each reader finds the five tables it needs (``admissions``, ``patients``, ``diagnoses_icd``,
``procedures_icd``, ``prescriptions``; ``.csv`` or ``.csv.gz``, any header case) and the optional
``d_icd_*`` name tables, streams the three event tables dictionary-encoded
(:func:`data_prep.tables.read_encoded`), and hands (admission, code) pairs and profiles to the shared
pipeline (:mod:`data_prep.pipeline`), whose options (:class:`MimicOptions`) default to the LEADER
paper's choices.

MIMIC-IV (``hosp/`` layout) writes ``icd_code`` + ``icd_version``: codes are prefixed ``ICD9:`` /
``ICD10:`` so the two systems stay distinct. Its ``race`` column fills the ``ethnicity`` field.
What differs between the two releases is a :class:`Layout`, so no step branches on the release.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import numpy as np
import pandas as pd

from data_prep.aux_maps import AuxFiles
from data_prep.dataset import PreparedDataset
from data_prep.mimic_layout import MIMIC3, MIMIC4, Layout
from data_prep.pipeline import (
    CodePairs,
    PipelineOptions,
    check_known_codes,
    dedupe,
    encode_profiles,
    finish_dataset,
    icd_names,
    map_ndcs,
    medication_pairs,
    select_visits,
    unique_ints,
)
from data_prep.sources import DatasetSource, Located
from data_prep.tables import DataError, EncodedTable, find_table, first_line, read_encoded, read_table


@dataclass(frozen=True)
class MimicOptions(PipelineOptions):
    """The shared pipeline's options, as MIMIC-III and MIMIC-IV use them."""


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


def locate(layout: Layout, root: str | Path, aux: str | Path) -> MimicInputs:
    """Find every table before reading any, so a missing one fails fast and the cache key knows them."""
    root = Path(root)
    if layout.subfolder and (root / layout.subfolder).is_dir():
        root = root / layout.subfolder
    tables = {name: find_table(root, name) for name in TABLES}
    name_tables = {}
    for name in NAME_TABLES:
        try:
            name_tables[name] = find_table(root, name)
        except DataError:
            pass  # names come from data_prep.code_names instead
    return MimicInputs(layout, tables, name_tables, AuxFiles.locate(aux))


def read_mimic(inputs: MimicInputs, options: MimicOptions) -> PreparedDataset:
    """Run the pipeline of the module docstring on located inputs."""
    layout, tables = inputs.layout, inputs.tables
    admissions = _read_admissions(tables["admissions"], layout)
    position = {hadm: i for i, hadm in enumerate(admissions["hadm_id"])}
    join_rates: dict[str, dict] = {}
    codes = {}
    for kind, table in (("diagnoses", "diagnoses_icd"), ("procedures", "procedures_icd")):
        codes[kind], join_rates[table] = _read_codes(tables[table], layout, position, kind, options)
    codes["medications"], medication_meta, join_rates["prescriptions"] = _read_medications(inputs, admissions, position, options)
    kept = select_visits(admissions, codes, options, source=f"{layout.name} ({inputs.tables['admissions'].parent})", join_rates=join_rates)
    profiles, profile_values = _profiles(kept.visits, tables["patients"], layout)
    diag_names, diag_unnamed = _icd_names(inputs, "diagnoses", kept.vocabularies["diagnoses"])
    proc_names, proc_unnamed = _icd_names(inputs, "procedures", kept.vocabularies["procedures"])
    return finish_dataset(
        layout.name,
        kept,
        profiles,
        profile_values,
        inputs.aux,
        options,
        names={"diagnoses": diag_names, "procedures": proc_names},
        meta={
            "source": layout.name,
            "options": dataclasses.asdict(options),
            **medication_meta,
            "admissions": len(admissions),
            "visits": len(kept.visits),
            "join_rates": join_rates,
            "unnamed_codes": {"diagnoses": diag_unnamed, "procedures": proc_unnamed},
            "files": {role: str(path) for role, path in inputs.files().items()},
        },
    )


def _read_admissions(path: Path, layout: Layout) -> pd.DataFrame:
    columns = ["subject_id", "hadm_id", "admittime", "insurance", layout.ethnicity_column, "marital_status"]
    table = read_table(path, columns).rename(columns={layout.ethnicity_column: "ethnicity"})
    table = table.dropna(subset=["subject_id", "hadm_id"])
    if table["hadm_id"].duplicated().any():
        twice = table["hadm_id"].duplicated()
        raise DataError(f"{path}: {int(twice.sum()):,} hadm_id(s) appear on more than one row (the first repeat on line {int(twice.idxmax()) + 2}); "
                        "an admissions table holds one row per admission")
    table["admittime"] = _parse_times(table["admittime"], path, "admittime")
    return table.dropna(subset=["admittime"]).reset_index(drop=True)


def _parse_times(values: pd.Series, path: Path, column: str) -> pd.Series:
    parsed = pd.to_datetime(values, errors="coerce", format="ISO8601")
    bad = values.notna() & parsed.isna()
    if bad.any():
        raise DataError(f"{path}: column {column} holds {int(bad.sum()):,} values that are not date-times (the first on line {int(bad.idxmax()) + 2})")
    return parsed


def _admission_of(table: EncodedTable, position: dict[str, int]) -> tuple[np.ndarray, dict]:
    """Per row, the admission position of its hadm_id (-1 when empty or not in admissions), and the
    join rate: rows with an hadm_id, and how many of them join."""
    lookup = np.array([position.get(h, -1) for h in table.values["hadm_id"]] + [-1], dtype=np.int32)
    ids = table.ids["hadm_id"]
    visit = lookup[ids]  # id -1 picks the trailing -1
    with_id = int((ids >= 0).sum())
    return visit, {"rows": with_id, "joined": int((visit >= 0).sum())}


def _read_codes(path: Path, layout: Layout, position: dict[str, int], kind: str, options: MimicOptions) -> tuple[CodePairs, dict]:
    """Distinct (admission, code) pairs, codes as strings; MIMIC-IV codes prefixed by their ICD version."""
    column = layout.code_column
    columns = ["hadm_id", column] + (["icd_version"] if layout.versioned_codes else [])
    table = read_encoded(path, columns, code_columns=[column])
    visit, join_rate = _admission_of(table, position)
    code_ids = table.ids[column]
    valid = (table.ids["hadm_id"] >= 0) & (code_ids >= 0)
    bare = [code.strip() for code in table.values[column]]
    if layout.versioned_codes:
        version_ids = table.ids["icd_version"]
        valid &= version_ids >= 0
        versions = [v.strip() for v in table.values["icd_version"]]
        bad = np.array([v not in ("9", "10") for v in versions] + [False])
        wrong = valid & bad[version_ids]
        if wrong.any():
            raise DataError(f"{path}: column icd_version must be 9 or 10, but {int(wrong.sum()):,} rows hold another value (the first on line {first_line(wrong)})")
        key = code_ids.astype(np.int64) * len(versions) + version_ids
        used, inverse = unique_ints(key[valid], return_inverse=True)
        texts = [f"ICD{versions[k % len(versions)]}:{bare[k // len(versions)]}" for k in used.tolist()]
    else:
        used, inverse = unique_ints(code_ids[valid], return_inverse=True)
        texts = [bare[k] for k in used.tolist()]
    codes, remap = dedupe(texts)
    row_code = np.full(len(code_ids), -1, dtype=np.int32)
    row_code[valid] = remap[inverse]
    check_known_codes(path, column, codes, np.bincount(row_code[valid], minlength=len(codes)), kind, layout.versioned_codes, options)
    return CodePairs.from_rows(visit, row_code, codes), join_rate


def _read_medications(inputs: MimicInputs, admissions: pd.DataFrame, position: dict[str, int], options: MimicOptions) -> tuple[CodePairs, dict, dict]:
    """(admission, ATC3) pairs under the chosen prescription window, the mapping coverage and the rows
    each window rule keeps, and the hadm_id join rate."""
    path, start_column = inputs.tables["prescriptions"], inputs.layout.start_column
    table = read_encoded(path, ["hadm_id", "ndc"], time_columns=[start_column], code_columns=["ndc"])
    visit, join_rate = _admission_of(table, position)
    row_code, codes, coverage = map_ndcs(table.ids["ndc"], table.values["ndc"], inputs.aux, options)
    mapped = (table.ids["hadm_id"] >= 0) & (row_code >= 0)
    if options.prescription_window != "all":
        bad = [row for row in sorted(table.bad_times[start_column]) if mapped[row]]
        if bad:
            raise DataError(f"{path}: column {start_column} holds {len(bad):,} values that are not date-times in rows the run uses (the first on line {bad[0] + 2})")
    with_ndc = np.array([v.strip() not in ("", "0") for v in table.values["ndc"]] + [False])[table.ids["ndc"]]
    pairs, meta = medication_pairs(visit, table.times[start_column], with_ndc, mapped, row_code, codes, admissions, inputs.aux, options)
    return pairs, {"mapping_coverage": coverage, **meta}, join_rate


def _profiles(visits: pd.DataFrame, patients_path: Path, layout: Layout) -> tuple[np.ndarray, dict[str, list[str]]]:
    """The profile at every kept visit: age band then, gender, and that admission's fields."""
    patients = read_table(patients_path, list(layout.patient_columns)).drop_duplicates("subject_id").set_index("subject_id")
    missing = sorted(set(visits["subject_id"]) - set(patients.index))
    if missing:
        raise DataError(f"{patients_path}: {len(missing)} subject(s) of the admissions have no row; check that the table belongs to the same release")
    patients = patients.loc[visits["subject_id"]].set_axis(visits.index)
    if layout.anchored_ages:
        age = pd.to_numeric(patients["anchor_age"], errors="coerce") + visits["admittime"].dt.year - pd.to_numeric(
            patients["anchor_year"], errors="coerce"
        )
    else:
        age = _years_between(patients["dob"], visits["admittime"])
    return encode_profiles(age, patients["gender"], visits)


def _years_between(dob: pd.Series, admit: pd.Series) -> pd.Series:
    """Whole years from a date-of-birth string to a time; strings, because MIMIC-III shifts the birth
    dates of patients over 89 three centuries back, beyond pandas' nanosecond range."""
    birth = dob.str.extract(r"^(\d{4})-(\d{2})-(\d{2})").astype(float)
    years = admit.dt.year - birth[0]
    before_birthday = (admit.dt.month < birth[1]) | ((admit.dt.month == birth[1]) & (admit.dt.day < birth[2]))
    return years - before_birthday.astype(float)


def _versioned(code: pd.Series, version: pd.Series, path: Path) -> pd.Series:
    version = version.str.strip()
    bad = ~version.isin(["9", "10"])
    if bad.any():
        raise DataError(f"{path}: column icd_version must be 9 or 10, but {int(bad.sum()):,} rows hold another value (the first on line {int(bad.idxmax()) + 2})")
    return "ICD" + version + ":" + code


def _icd_names(inputs: MimicInputs, kind: str, codes: list[str]) -> tuple[list[str], int]:
    """Names from d_icd_* (version respected), then the shared ICD tables (:func:`data_prep.pipeline.icd_names`)."""
    table_name = "d_icd_diagnoses" if kind == "diagnoses" else "d_icd_procedures"
    described: dict[str, str] = {}
    if table_name in inputs.name_tables:
        layout, path = inputs.layout, inputs.name_tables[table_name]
        columns = [layout.code_column] + (["icd_version"] if layout.versioned_codes else []) + ["long_title"]
        table = read_table(path, columns, code_columns=[layout.code_column]).dropna()
        code = table[layout.code_column].str.strip()
        if layout.versioned_codes:
            code = _versioned(code, table["icd_version"], path)
        described = dict(zip(code, table["long_title"].str.strip()))
    return icd_names(codes, kind, described)


def _source(layout: Layout, summary: str, root: str) -> DatasetSource:
    def locate_source(paths: Mapping[str, Path]) -> Located:
        inputs = locate(layout, paths["root"], paths["aux"])
        return Located(inputs.files(), lambda options: read_mimic(inputs, options))

    def export(dataset: PreparedDataset, out: Path, *, aux: Path | None = None, rows_per_medication: float | None = None) -> list[Path]:
        from data_prep.export_tables import TableExportOptions, export_tables

        options = TableExportOptions() if rows_per_medication is None else TableExportOptions(rows_per_medication=rows_per_medication)
        return export_tables(dataset, out, layout, aux=aux, options=options)

    return DatasetSource(
        name=layout.name,
        summary=summary,
        options=MimicOptions,
        locate=locate_source,
        paths={"root": root, "aux": "the folder of auxiliary mapping files (ndc2RXCUI.txt, ...)"},
        export=export,
    )


MIMIC3_SOURCE = _source(MIMIC3, "MIMIC-III v1.4 or its open demo", "the MIMIC-III folder")
MIMIC4_SOURCE = _source(MIMIC4, "MIMIC-IV v2 or its open demo", "the MIMIC-IV folder (or the hosp/ folder in it)")

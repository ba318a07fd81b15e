"""Write a prepared dataset (typically the synthetic cohort) as MIMIC-III or MIMIC-IV source tables.

``bench data export --format mimic4|mimic3`` writes the tables the MIMIC readers need (admissions,
patients, diagnoses_icd, procedures_icd, prescriptions) plus ``aux/``, an auxiliary folder in the
published layout (``ndc2RXCUI.txt``, ``ndc2atc_level4.csv.gz``, ``atc_coding.csv.gz``,
``atc3_smiles.csv``, ``ddi_atc3_pairs.csv``) through which every prescription's NDC maps back to its
medication class. Preparing the export with that aux folder gives back the dataset's patients, visits
and code sets (the round-trip test checks the readers on data we generate), and a user can rehearse a
pipeline on it before getting MIMIC credentials.

What the tables carry, per visit: one admission (admit time as in the dataset; discharge six days
later); the diagnosis and procedure codes as ICD-9 (MIMIC-IV: ``icd_version`` 9); for each
medication class, ``rows_per_medication`` prescription rows on average, started within the first 20
hours, each with an NDC of the class. Like the real tables, a visit also has rows outside the
window (started two days or more in, before the discharge, repeating one of the visit's classes, so
the 24-hour rule removes them without changing the visit's set) and rows without an NDC (dropped by
the reader). Stays last six days or end an hour before the patient's next admission. MIMIC-III
start dates have day resolution, as in the full release. Profiles become ``anchor_age`` /
``anchor_year`` (MIMIC-IV) or a date of birth (MIMIC-III) that puts the last visit in the patient's
age band.

NDCs: with ``aux`` (a folder of the published aux files), each class gets the real NDCs that map to
it through ``ndc2RXCUI.txt`` and ``ndc2atc_level4``; a class without any gets made-up NDCs with the
labeler code 99999 (no real labeler), written to the exported aux folder with made-up RXCUIs.
"""

from __future__ import annotations

import gzip
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv

from data_prep.dataset import PreparedDataset
from data_prep.mimic_layout import Layout
from data_prep.atomic import write_atomic
from data_prep.tables import DataError

AGE_OF_BAND = {"<18": 10, "18-39": 30, "40-64": 52, "65-79": 72, "80+": 85}
SUBJECT_BASE, HADM_BASE = 10_000_000, 20_000_000
MADE_UP_LABELER, MADE_UP_RXCUI_BASE = "99999", 990_000_000
NDCS_PER_CLASS = 8
SECONDS_PER_DAY = 86_400
CHUNK_ROWS = 1_000_000


@dataclass(frozen=True)
class TableExportOptions:
    """How many prescription rows the export writes (the code sets do not depend on it)."""

    rows_per_medication: float = 2.0  # mean rows per (visit, class) within the first 20 hours, >= 1
    late_rows_per_visit: float = 1.0  # mean rows started 2-5 days in (removed by the 24-hour rule)
    rows_without_ndc_per_visit: float = 0.5  # mean rows with an empty NDC
    seed: int = 0

    def __post_init__(self) -> None:
        if self.rows_per_medication < 1 or self.late_rows_per_visit < 0 or self.rows_without_ndc_per_visit < 0:
            raise ValueError("rows_per_medication must be >= 1 and the other row rates >= 0")


@dataclass(frozen=True)
class FlatCohort:
    """The dataset as flat arrays: one entry per visit, and (visit, code) pairs per code kind."""

    subject: np.ndarray  # per patient, numeric id
    visit_patient: np.ndarray  # per visit, patient position
    hadm: np.ndarray  # per visit, numeric admission id
    admit: np.ndarray  # per visit, datetime64[s]
    pairs: dict[str, tuple[np.ndarray, np.ndarray]]  # kind -> (visit, vocabulary index)

    @property
    def stay_seconds(self) -> np.ndarray:
        """Six days, or up to an hour before the patient's next admission, whichever is sooner, so
        that stays never overlap (a reader that assigns events to visits by time needs that)."""
        stay = np.full(len(self.admit), 6 * SECONDS_PER_DAY, dtype=np.int64)
        same = self.visit_patient[1:] == self.visit_patient[:-1]
        gap = (self.admit[1:] - self.admit[:-1]).astype(np.int64) - 3600
        stay[:-1][same] = np.minimum(stay[:-1][same], gap[same])
        return stay

    @property
    def discharge(self) -> np.ndarray:
        return self.admit + self.stay_seconds.astype("timedelta64[s]")

    def late_offsets(self, rng: np.random.Generator, visits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Start offsets (seconds) of late prescription rows of ``visits``: two days or more after the
        admission (also for day-resolution start dates) and before the discharge; visits whose stay
        is too short get none. Returns (kept visits mask, offsets of the kept ones)."""
        stay = self.stay_seconds[visits]
        kept = stay > 2 * SECONDS_PER_DAY + 60
        offset = 2 * SECONDS_PER_DAY + (rng.random(int(kept.sum())) * (stay[kept] - 2 * SECONDS_PER_DAY - 60)).astype(np.int64)
        return kept, offset


def flatten(dataset: PreparedDataset) -> tuple[FlatCohort, list]:
    """(cohort, patients in id order); numeric ids in the order of the dataset's patient ids, so the seeded split is the same."""
    order = sorted(range(len(dataset.patients)), key=lambda i: dataset.patients[i].patient_id)
    patients = [dataset.patients[i] for i in order]
    if len(patients) >= HADM_BASE - SUBJECT_BASE:
        raise ValueError(f"{len(patients)} patients: too many for 8-digit subject ids")
    visits = [v for p in patients for v in p.visits]
    visit_patient = np.repeat(np.arange(len(patients)), [len(p.visits) for p in patients])
    admit = np.array([v.admit_time.replace(" ", "T") for v in visits], dtype="datetime64[s]")
    pairs = {}
    for kind in ("diagnoses", "procedures", "medications"):
        lengths = [len(getattr(v, kind)) for v in visits]
        codes = np.fromiter((c for v in visits for c in getattr(v, kind)), dtype=np.int64, count=sum(lengths))
        pairs[kind] = (np.repeat(np.arange(len(visits)), lengths), codes)
    return FlatCohort(
        subject=SUBJECT_BASE + 1 + np.arange(len(patients)),
        visit_patient=visit_patient,
        hadm=HADM_BASE + 1 + np.arange(len(visits)),
        admit=admit,
        pairs=pairs,
    ), patients


# ----- NDCs and the exported aux folder ----------------------------------------------------------
@dataclass(frozen=True)
class NdcCatalogue:
    """NDCs per medication class and the aux rows that map them back."""

    ndcs: list[list[str]]  # per medication index
    ndc_to_rxcui: dict[str, str]
    rxcui_rows: pd.DataFrame  # YEAR, MONTH, NDC, RXCUI, ATC4 rows of ndc2atc_level4


def ndc_catalogue(classes: list[str], aux: str | Path | None) -> NdcCatalogue:
    from data_prep.aux_maps import AuxFiles, load_ndc_to_rxcui, load_rxcui_to_atc, map_ndc_to_atc3

    real: dict[str, list[str]] = {}
    ndc_to_rxcui: dict[str, str] = {}
    rows = pd.DataFrame(columns=["YEAR", "MONTH", "NDC", "RXCUI", "ATC4"])
    if aux is not None:
        files = AuxFiles.locate(aux)
        known = load_ndc_to_rxcui(files.ndc_to_rxcui)
        table = load_rxcui_to_atc(files.rxcui_to_atc)
        ndc = pd.Series(sorted(known))
        atc3 = map_ndc_to_atc3(ndc, known, table, ndc_fallback=False).atc3
        for code, value in zip(ndc, atc3):
            if isinstance(value, str) and len(real.setdefault(value, [])) < NDCS_PER_CLASS:
                real[value].append(code)
        used = {n for c in classes for n in real.get(c, [])}
        ndc_to_rxcui = {n: known[n] for n in sorted(used)}
        raw = pd.read_csv(files.rxcui_to_atc, dtype=str, keep_default_na=False)
        raw.columns = [c.strip().upper() for c in raw.columns]
        raw = raw.rename(columns={"ATC5": "ATC4"})
        rows = raw[raw["RXCUI"].str.strip().isin(set(ndc_to_rxcui.values()))][["YEAR", "MONTH", "NDC", "RXCUI", "ATC4"]]
    ndcs, made_up = [], []
    for i, code in enumerate(classes):
        if real.get(code):
            ndcs.append(real[code])
            continue
        own = [f"{MADE_UP_LABELER}{i:04d}{k:02d}" for k in range(2)]
        rxcui = str(MADE_UP_RXCUI_BASE + i)
        ndc_to_rxcui |= {n: rxcui for n in own}
        made_up.append(("2016", "1", f"{MADE_UP_LABELER}-{i:04d}-00", rxcui, code))
        ndcs.append(own)
    rows = pd.concat([rows, pd.DataFrame(made_up, columns=rows.columns)], ignore_index=True)
    return NdcCatalogue(ndcs, ndc_to_rxcui, rows)


def write_aux_folder(dataset: PreparedDataset, catalogue: NdcCatalogue, folder: Path) -> list[Path]:
    """The aux files that map the exported NDCs back and give the dataset's names, SMILES and DDI graph."""
    meds = dataset.medications
    upper = np.triu(dataset.ddi_adj, 1)
    a, b = np.nonzero(upper)
    contents = {
        "ndc2RXCUI.txt": repr(catalogue.ndc_to_rxcui).encode(),
        "ndc2atc_level4.csv.gz": gzip.compress(catalogue.rxcui_rows.to_csv(index=False).encode(), mtime=0),
        "atc_coding.csv.gz": gzip.compress(pd.DataFrame({"atc_code": meds.codes, "atc_name": meds.names}).to_csv(index=False).encode(), mtime=0),
        "atc3_smiles.csv": pd.DataFrame(
            [(code, s) for code, group in zip(meds.codes, dataset.smiles) for s in group], columns=["atc3", "smiles"]
        ).to_csv(index=False).encode(),
        "ddi_atc3_pairs.csv": pd.DataFrame({"atc3_a": [meds.codes[i] for i in a], "atc3_b": [meds.codes[j] for j in b]})
        .to_csv(index=False)
        .encode(),
    }
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in contents.items():
        write_atomic(folder / name, lambda tmp, data=data: tmp.write_bytes(data))
    return [folder / name for name in contents]


# ----- the tables -------------------------------------------------------------------------------
def export_tables(dataset: PreparedDataset, out: str | Path, layout: Layout, *, aux: str | Path | None = None, options: TableExportOptions = TableExportOptions()) -> list[Path]:
    """Write the tables in ``layout`` (``out/hosp/*.csv.gz`` for MIMIC-IV, ``out/*.CSV.gz`` for MIMIC-III) and ``out/aux/``."""
    bad = [c for c in dataset.diagnoses.codes + dataset.procedures.codes if ":" in c]
    if bad:
        raise DataError(f"export to {layout.name} writes ICD-9 codes without a version prefix; {dataset.name} has {bad[0]!r}")
    out = Path(out)
    cohort, patients = flatten(dataset)
    catalogue = ndc_catalogue(dataset.medications.codes, aux)
    folder = out / layout.subfolder if layout.subfolder else out
    folder.mkdir(parents=True, exist_ok=True)

    def write(table: str, parts) -> Path:
        return _write_table(folder / (f"{table.upper()}.csv.gz" if layout.upper_case else f"{table}.csv.gz"), parts, upper=layout.upper_case)

    written = [
        write("patients", [_patients(dataset, patients, cohort, layout)]),
        write("admissions", [_admissions(dataset, patients, cohort, layout)]),
    ]
    for kind, table in (("diagnoses", "diagnoses_icd"), ("procedures", "procedures_icd")):
        written.append(write(table, [_codes(dataset, cohort, kind, layout)]))
    written.append(write("prescriptions", _prescriptions(dataset, cohort, catalogue, layout, options)))
    return written + write_aux_folder(dataset, catalogue, out / "aux")


def _patients(dataset, patients, cohort: FlatCohort, layout: Layout) -> pa.Table:
    last_admit = cohort.admit[np.r_[np.flatnonzero(np.diff(cohort.visit_patient)), len(cohort.admit) - 1]]
    fields = dataset.profile_fields
    text = [dataset.profile_text(p.profile) for p in patients]
    gender = [t.get("gender", "") for t in text] if "gender" in fields else [""] * len(patients)
    age = np.array([AGE_OF_BAND.get(t.get("age", ""), -1) for t in text])
    year = last_admit.astype("datetime64[Y]").astype(np.int64) + 1970
    columns = {"subject_id": cohort.subject, "gender": gender}
    if layout.anchored_ages:
        columns |= {"anchor_age": np.where(age >= 0, age, None), "anchor_year": year}
    else:
        columns["dob"] = [f"{y - a:04d}-01-01 00:00:00" if a >= 0 else None for y, a in zip(year.tolist(), age.tolist())]
    return pa.table(columns)


def _admissions(dataset, patients, cohort: FlatCohort, layout: Layout) -> pa.Table:
    text = [dataset.profile_text(p.profile) for p in patients]

    def field(name: str) -> list:
        values = [t.get(name) for t in text]
        return [values[i] for i in cohort.visit_patient.tolist()]

    return pa.table(
        {
            "subject_id": cohort.subject[cohort.visit_patient],
            "hadm_id": cohort.hadm,
            "admittime": cohort.admit,
            "dischtime": cohort.discharge,
            "insurance": field("insurance"),
            "marital_status": field("marital_status"),
            layout.ethnicity_column: field("ethnicity"),
        }
    )


def _codes(dataset, cohort: FlatCohort, kind: str, layout: Layout) -> pa.Table:
    visit, code = cohort.pairs[kind]
    vocabulary = pa.array(getattr(dataset, kind).codes)
    seq = np.arange(len(visit)) - np.searchsorted(visit, visit) + 1
    columns = {
        "subject_id": cohort.subject[cohort.visit_patient[visit]],
        "hadm_id": cohort.hadm[visit],
        "seq_num": seq,
        layout.code_column: vocabulary.take(pa.array(code)),
    }
    if layout.versioned_codes:
        columns["icd_version"] = np.full(len(visit), 9)
    return pa.table(columns)


def _prescriptions(dataset, cohort: FlatCohort, catalogue: NdcCatalogue, layout: Layout, options: TableExportOptions):
    """Batches of prescription rows: in-window rows per (visit, class), late rows, rows without NDC."""
    rng = np.random.default_rng(options.seed)
    visit, med = cohort.pairs["medications"]
    n_visits = len(cohort.hadm)
    repeats = 1 + rng.poisson(options.rows_per_medication - 1, len(visit))
    row_visit, row_med = np.repeat(visit, repeats), np.repeat(med, repeats)
    offset = rng.integers(0, 20 * 3600, len(row_visit))
    first_med = np.searchsorted(visit, np.arange(n_visits))
    meds_per_visit = np.bincount(visit, minlength=n_visits)
    late_visit = np.repeat(np.arange(n_visits), rng.poisson(options.late_rows_per_visit, n_visits) * (meds_per_visit > 0))
    late_med = med[first_med[late_visit] + rng.integers(0, 1 << 30, len(late_visit)) % meds_per_visit[late_visit]]
    kept, late_offset = cohort.late_offsets(rng, late_visit)
    late_visit, late_med = late_visit[kept], late_med[kept]
    empty_visit = np.repeat(np.arange(n_visits), rng.poisson(options.rows_without_ndc_per_visit, n_visits))
    row_visit = np.concatenate([row_visit, late_visit, empty_visit])
    row_med = np.concatenate([row_med, late_med, np.full(len(empty_visit), -1)])
    offset = np.concatenate([offset, late_offset, rng.integers(0, 20 * 3600, len(empty_visit))])
    order = np.argsort(row_visit, kind="stable")
    row_visit, row_med, offset = row_visit[order], row_med[order], offset[order]

    counts = np.array([len(n) for n in catalogue.ndcs])
    starts = np.r_[0, np.cumsum(counts)[:-1]]
    ndc_values = pa.array([n for group in catalogue.ndcs for n in group] + [None])
    choice = rng.integers(0, 1 << 30, len(row_med))
    safe_med = np.maximum(row_med, 0)
    ndc_index = np.where(row_med >= 0, starts[safe_med] + choice % counts[safe_med], len(ndc_values) - 1)
    drug_names = pa.array(dataset.medications.names + [""])
    for lo in range(0, len(row_visit), CHUNK_ROWS):
        part = slice(lo, lo + CHUNK_ROWS)
        v = row_visit[part]
        start = cohort.admit[v] + offset[part].astype("timedelta64[s]")
        if layout.dated_starts:
            start = start.astype("datetime64[D]").astype("datetime64[s]")
        yield pa.table(
            {
                "subject_id": cohort.subject[cohort.visit_patient[v]],
                "hadm_id": cohort.hadm[v],
                layout.start_column: start,
                layout.stop_column: start + np.timedelta64(SECONDS_PER_DAY, "s"),
                "drug_type": np.full(len(v), "MAIN"),
                "drug": drug_names.take(pa.array(np.where(row_med[part] >= 0, row_med[part], len(drug_names) - 1))),
                "ndc": ndc_values.take(pa.array(ndc_index[part])),
            }
        )


def _write_table(path: Path, tables, *, upper: bool) -> Path:
    """CSV, gzip level 1, header unquoted (as MIMIC ships it), written atomically."""

    def write(tmp: Path) -> None:
        with gzip.open(tmp, "wb", compresslevel=1) as fh:
            header_written = False
            for table in tables:
                if not header_written:
                    names = [c.upper() if upper else c for c in table.column_names]
                    fh.write((",".join(names) + "\n").encode())
                    header_written = True
                pacsv.write_csv(table, fh, pacsv.WriteOptions(include_header=False, quoting_style="needed"))

    return write_atomic(path, write)

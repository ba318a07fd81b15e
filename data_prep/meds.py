"""MEDS input and output: ``--dataset meds --root DIR`` and ``bench data export --format meds``.

MEDS (Medical Event Data Standard, https://medical-event-data-standard.github.io; PyPI ``meds``) keeps
a dataset as events ``subject_id, time, code, numeric_value`` in ``data/*.parquet`` (each subject in
one shard, sorted by time), with ``metadata/codes.parquet`` (code descriptions),
``metadata/subject_splits.parquet`` (``train`` / ``tuning`` / ``held_out``) and
``metadata/dataset.json``. Event tables may carry extra columns; the MIMIC-IV MEDS ETL
(``MIMIC_IV_MEDS``) keeps ``hadm_id`` on admission, discharge, diagnosis and procedure events and
``insurance``, ``marital_status`` and ``race`` on the admission event.

How the reader turns events into the prepared dataset (the prefixes are :class:`MedsOptions`; the
defaults are the MIMIC-IV MEDS ETL's codes):

- visits: ``HOSPITAL_ADMISSION//...`` events at the admission time. Events are assigned to a visit
  by their ``hadm_id`` where the data carries one, otherwise by time: an event belongs to the
  subject's latest admission that started at or before it, if it is not after that admission's
  discharge (``HOSPITAL_DISCHARGE//...``, matched by ``hadm_id`` or as the subject's first discharge
  after the admission);
- diagnoses / procedures: ``DIAGNOSIS//ICD//{version}//{code}`` and ``PROCEDURE//ICD//...`` become
  ``ICD{version}:{code}``, as the MIMIC-IV reader writes them;
- medications: ``MEDICATION//NDC//{ndc}`` go through the aux files (NDC -> RXCUI -> ATC3) and
  ``MEDICATION//ATC//{code}`` are used directly (their first four characters); the MIMIC-IV ETL
  itself records pharmacy drug *names* (``MEDICATION//START//{name}``), which no public table maps to
  ATC: a MEDS dataset needs NDC or ATC medication events (e.g. an ETL entry for ``hosp/prescriptions``
  writing ``MEDICATION//NDC//{ndc}``). The medication event's time is its start time, so the
  prescription windows (``first-hours`` etc.) apply as for MIMIC;
- profiles: ``GENDER//{value}`` events, ``MEDS_BIRTH`` (age at each visit) and the admission
  event's ``insurance``, ``marital_status`` and ``race`` columns;
- split: ``metadata/subject_splits.parquet`` when present (``use_dataset_split``), else the seeded
  8:1:1 split of every other source. The EHR graph is then built from the dataset's own train set.

Everything after that (top-k codes, required kinds, min visits, SMILES, DDI graph, cache) is the
shared pipeline's (:mod:`data_prep.pipeline`), so the same options mean what they mean for MIMIC.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from data_prep.aux_maps import AuxFiles
from data_prep.dataset import PreparedDataset, cooccurrence_adjacency
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
)
from data_prep.sources import DatasetSource, Located
from data_prep.atomic import write_atomic
from data_prep.tables import NO_TIME, DataError, EncodedColumn

SPLIT_NAMES = {"train": "train", "tuning": "val", "held_out": "test"}
PROFILE_COLUMNS = {"insurance": "insurance", "marital_status": "marital_status", "race": "ethnicity"}


@dataclass(frozen=True)
class MedsOptions(PipelineOptions):
    """The shared pipeline's options plus the code prefixes that say what an event is (defaults: the
    MIMIC-IV MEDS ETL's codes)."""

    admission_prefix: str = "HOSPITAL_ADMISSION"
    """Code prefix of admission events."""
    discharge_prefix: str = "HOSPITAL_DISCHARGE"
    """Code prefix of discharge events."""
    diagnosis_prefix: str = "DIAGNOSIS//ICD//"
    """Code prefix of diagnosis events ({prefix}{version}//{code})."""
    procedure_prefix: str = "PROCEDURE//ICD//"
    """Code prefix of procedure events ({prefix}{version}//{code})."""
    ndc_prefix: str = "MEDICATION//NDC//"
    """Code prefix of NDC medication events (mapped through the aux files)."""
    atc_prefix: str = "MEDICATION//ATC//"
    """Code prefix of ATC medication events (used directly)."""
    gender_prefix: str = "GENDER//"
    """Code prefix of gender events."""
    birth_code: str = "MEDS_BIRTH"
    """Code of the birth event (ages at each visit)."""
    use_dataset_split: bool = True
    """Use metadata/subject_splits.parquet as the split when the dataset has one."""

    def prefixes(self) -> dict[str, str]:
        return {
            "admission": self.admission_prefix,
            "discharge": self.discharge_prefix,
            "diagnoses": self.diagnosis_prefix,
            "procedures": self.procedure_prefix,
            "ndc": self.ndc_prefix,
            "atc": self.atc_prefix,
            "gender": self.gender_prefix,
            "birth": self.birth_code,
        }


@dataclass(frozen=True)
class MedsInputs:
    root: Path
    shards: list[Path]
    codes: Path | None
    splits: Path | None
    aux: AuxFiles

    def files(self) -> dict[str, Path]:
        files = {f"data/{p.relative_to(self.root / 'data')}": p for p in self.shards}
        files |= {role: p for role, p in (("codes", self.codes), ("subject_splits", self.splits)) if p is not None}
        return files | self.aux.used()


def locate_meds(root: str | Path, aux: str | Path) -> MedsInputs:
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: not a folder (expected a MEDS dataset: data/*.parquet and metadata/)")
    shards = sorted((root / "data").rglob("*.parquet")) if (root / "data").is_dir() else []
    if not shards:
        raise DataError(f"{root}: no data/*.parquet (a MEDS dataset keeps its events in data/)")
    metadata = root / "metadata"
    codes = metadata / "codes.parquet"
    splits = metadata / "subject_splits.parquet"
    return MedsInputs(root, shards, codes if codes.is_file() else None, splits if splits.is_file() else None, AuxFiles.locate(aux))


# ----- reading ----------------------------------------------------------------------------------
def read_meds(inputs: MedsInputs, options: MedsOptions) -> PreparedDataset:
    events, kinds, code_values = _read_events(inputs, options)
    prefixes = options.prefixes()
    admissions, position_rows = _admissions(events, kinds, inputs.root)  # per event, its admission (-1: none)

    codes = {}
    for kind in ("diagnoses", "procedures"):
        codes[kind] = _icd_pairs(events, kinds == KIND[kind], position_rows, code_values, prefixes[kind], kind, inputs, options)
    medication, medication_meta = _medication_pairs(events, kinds, position_rows, code_values, admissions, inputs, options)
    codes["medications"] = medication
    selected = {"diagnoses": kinds == KIND["diagnoses"], "procedures": kinds == KIND["procedures"], "medications": (kinds == KIND["ndc"]) | (kinds == KIND["atc"])}
    join_rates = {kind: {"rows": int(rows.sum()), "joined": int((rows & (position_rows >= 0)).sum())} for kind, rows in selected.items()}
    kept = select_visits(admissions, codes, options, source=f"meds ({inputs.root})", join_rates=join_rates)
    profiles, profile_values = _profiles(events, kinds, code_values, kept.visits)
    names = {kind: _names(kept.vocabularies[kind], kind, inputs, prefixes[kind]) for kind in ("diagnoses", "procedures")}
    dataset = finish_dataset(
        "meds",
        kept,
        profiles,
        profile_values,
        inputs.aux,
        options,
        names={kind: n for kind, (n, _) in names.items()},
        meta={
            "source": "meds",
            "options": dataclasses.asdict(options),
            **medication_meta,
            "admissions": len(admissions),
            "visits": len(kept.visits),
            "join_rates": join_rates,
            "unnamed_codes": {kind: unnamed for kind, (_, unnamed) in names.items()},
            "files": {role: str(path) for role, path in inputs.files().items()},
        },
    )
    if options.use_dataset_split and inputs.splits is not None:
        _apply_dataset_split(dataset, inputs.splits)
    return dataset


KIND = {"admission": 0, "discharge": 1, "diagnoses": 2, "procedures": 3, "ndc": 4, "atc": 5, "gender": 6, "birth": 7}


def _read_events(inputs: MedsInputs, options: MedsOptions) -> tuple[pa.Table, np.ndarray, list[str]]:
    """The events the pipeline uses (filtered by code prefix while reading), their kind, and the
    distinct codes (``code`` column replaced by ids into them)."""
    from meds import DataSchema

    for shard in inputs.shards:
        try:
            schema = pq.read_schema(shard)
            DataSchema.validate(schema)
        except Exception as exc:  # the meds package raises its own SchemaValidationError
            raise DataError(f"{shard}: not a MEDS data shard ({type(exc).__name__}: {str(exc).splitlines()[0]})") from None
    prefixes = options.prefixes()
    wanted = None
    for prefix in prefixes.values():
        test = pc.starts_with(pads.field("code"), prefix)
        wanted = test if wanted is None else wanted | test
    names = set(pq.read_schema(inputs.shards[0]).names)
    columns = ["subject_id", "time", "code"] + [c for c in ("hadm_id", *PROFILE_COLUMNS) if c in names]
    try:
        table = pads.dataset([str(p) for p in inputs.shards], format="parquet").to_table(columns=columns, filter=wanted)
    except (pa.ArrowException, OSError) as exc:
        raise DataError(f"{inputs.root / 'data'}: unreadable MEDS shards ({type(exc).__name__}: {str(exc).splitlines()[0]})") from None
    encoded = EncodedColumn()
    encoded.add(table.column("code"))
    code_ids, code_values = encoded.finish()
    kind_of_code = np.full(len(code_values) + 1, -1, dtype=np.int64)
    for i, code in enumerate(code_values):
        kind_of_code[i] = next((KIND[kind] for kind, prefix in prefixes.items() if code.startswith(prefix)), -1)
    table = table.drop_columns(["code"]).append_column("code_id", pa.array(code_ids))
    return table, kind_of_code[code_ids], code_values


def _times(table: pa.Table) -> np.ndarray:
    times = table.column("time").cast(pa.timestamp("ns")).to_numpy()
    return np.where(np.isnat(times), NO_TIME, times.astype(np.int64))


def _hadm(table: pa.Table) -> np.ndarray | None:
    if "hadm_id" not in table.column_names:
        return None
    values = pc.cast(table.column("hadm_id"), pa.string())
    return np.array(values.to_pylist(), dtype=object)


def _admissions(events: pa.Table, kinds: np.ndarray, root: Path) -> tuple[pd.DataFrame, np.ndarray]:
    """The admissions frame (subject_id, hadm_id, admittime and profile fields) and each event's
    admission position (by hadm_id where present, else by time)."""
    subject = events.column("subject_id").to_numpy()
    time = _times(events)
    hadm = _hadm(events)
    rows = np.flatnonzero((kinds == KIND["admission"]) & (time != NO_TIME))
    if not len(rows):
        raise DataError(f"{root}: no admission events with a time (codes starting with the admission prefix); see MedsOptions.admission_prefix")
    ids = hadm[rows] if hadm is not None else np.full(len(rows), None, dtype=object)
    if any(h is None for h in ids):  # no admission ids: number the admissions
        ids = np.array([f"meds-admission-{i}" for i in range(len(rows))], dtype=object)
    frame = pd.DataFrame({"subject_id": subject[rows].astype(str), "hadm_id": ids.astype(str), "admittime": pd.to_datetime(time[rows], unit="ns")})
    for column, field in PROFILE_COLUMNS.items():
        frame[field] = events.column(column).take(pa.array(rows)).to_pylist() if column in events.column_names else None
    duplicated = frame["hadm_id"].duplicated()
    if duplicated.any():
        raise DataError(f"{root}: admission {frame.loc[duplicated, 'hadm_id'].iloc[0]} has more than one admission event")

    position = np.full(len(kinds), -1, dtype=np.int64)
    if hadm is not None:
        index = {h: i for i, h in enumerate(frame["hadm_id"])}
        position = np.array([index.get(h, -1) if h is not None else -1 for h in hadm], dtype=np.int64)
    by_time = (position < 0) & (time != NO_TIME) & (kinds > KIND["discharge"])
    if by_time.any():
        position[by_time] = _by_time(subject, time, kinds, hadm, frame, rows, by_time)
    return frame, position


def _by_time(subject, time, kinds, hadm, frame, admission_rows, which) -> np.ndarray:
    """The admission of each selected event: the subject's latest admission at or before it, unless
    the event is after that admission's discharge."""
    seconds = time // 10**9
    order = np.lexsort((seconds[admission_rows], subject[admission_rows]))
    adm_rows = admission_rows[order]
    key = lambda s, t: s.astype(np.float64) * 1e11 + t  # noqa: E731 - subject-major, exact for ids < 2**53 / 1e11
    adm_key = key(subject[adm_rows], seconds[adm_rows])
    slot = np.searchsorted(adm_key, key(subject[which], seconds[which]), side="right") - 1
    same_subject = (slot >= 0) & (subject[adm_rows][np.maximum(slot, 0)] == subject[which])
    discharge = _discharges(subject, seconds, kinds, hadm, frame, adm_rows)
    inside = same_subject & (seconds[which] <= discharge[np.maximum(slot, 0)])
    position = np.full(int(which.sum()), -1, dtype=np.int64)
    # adm_rows are event rows; their frame position is their rank among admission_rows
    frame_position = np.searchsorted(admission_rows, adm_rows)
    position[inside] = frame_position[slot[inside]]
    return position


def _discharges(subject, seconds, kinds, hadm, frame, adm_rows) -> np.ndarray:
    """Discharge second per admission (in ``adm_rows`` order); no discharge event: open-ended."""
    out = np.full(len(adm_rows), np.iinfo(np.int64).max)
    rows = np.flatnonzero(kinds == KIND["discharge"])
    if not len(rows):
        return out
    if hadm is not None and all(h is not None for h in hadm[rows]):
        index = {h: i for i, h in enumerate(hadm[adm_rows])}
        for row in rows.tolist():
            if hadm[row] in index:
                out[index[hadm[row]]] = seconds[row]
        return out
    for i, row in enumerate(adm_rows.tolist()):  # the subject's first discharge at or after the admission
        later = rows[(subject[rows] == subject[row]) & (seconds[rows] >= seconds[row])]
        if len(later):
            out[i] = seconds[later].min()
    return out


def _icd_pairs(events, selected, position, code_values, prefix, kind, inputs, options) -> CodePairs:
    code_ids = events.column("code_id").to_numpy()
    used = np.unique(code_ids[selected])
    texts = []
    for code in (code_values[i] for i in used.tolist()):
        rest = code[len(prefix) :]
        version, _, bare = rest.partition("//")
        texts.append(f"ICD{version}:{bare}" if bare else rest)
    codes, remap = dedupe(texts)
    lookup = np.full(len(code_values) + 1, -1, dtype=np.int64)
    lookup[used] = remap
    row_code = np.where(selected, lookup[code_ids], -1)
    versioned = all(":" in c and c.startswith("ICD") and c[3:].split(":", 1)[0] in ("9", "10") for c in codes)
    check_known_codes(inputs.root, f"code ({prefix}...)", codes, np.bincount(row_code[row_code >= 0], minlength=len(codes)), kind, versioned, options)
    return CodePairs.from_rows(position, row_code, codes)


def _medication_pairs(events, kinds, position, code_values, admissions, inputs, options) -> tuple[CodePairs, dict]:
    code_ids = events.column("code_id").to_numpy()
    ndc_rows = kinds == KIND["ndc"]
    ndc_of_code = {i: code_values[i][len(options.ndc_prefix) :] for i in np.unique(code_ids[ndc_rows]).tolist()}
    ndc_values = list(ndc_of_code.values())
    ndc_index = np.full(len(code_values) + 1, -1, dtype=np.int64)
    ndc_index[list(ndc_of_code)] = np.arange(len(ndc_values))
    ndc_row_code, classes, coverage = map_ndcs(np.where(ndc_rows, ndc_index[code_ids], -1)[ndc_rows], ndc_values, inputs.aux, options)
    atc_rows = kinds == KIND["atc"]
    atc_text = {i: code_values[i][len(options.atc_prefix) :].strip().upper()[:4] for i in np.unique(code_ids[atc_rows]).tolist()}
    codes, remap = dedupe(classes + list(atc_text.values()))
    row_code = np.full(len(kinds), -1, dtype=np.int64)
    row_code[ndc_rows] = np.where(ndc_row_code >= 0, remap[np.maximum(ndc_row_code, 0)], -1)
    atc_lookup = np.full(len(code_values) + 1, -1, dtype=np.int64)
    atc_lookup[list(atc_text)] = remap[len(classes) :]
    row_code[atc_rows] = atc_lookup[code_ids[atc_rows]]
    medication = ndc_rows | atc_rows
    mapped = medication & (row_code >= 0)
    pairs, meta = medication_pairs(position, _times(events), medication, mapped, row_code, codes, admissions, inputs.aux, options)
    coverage = {**coverage, "atc_events": int(atc_rows.sum())} if atc_rows.any() else coverage
    return pairs, {"mapping_coverage": coverage, **meta}


def _profiles(events, kinds, code_values: list[str], visits: pd.DataFrame):
    """The profile at every visit: gender from GENDER//{value} events, age then from MEDS_BIRTH, the rest
    from the visit's admission event."""
    subject = events.column("subject_id").to_numpy().astype(str)
    times = _times(events)
    gender: dict[str, str] = {}
    rows = np.flatnonzero(kinds == KIND["gender"])
    for sid, code_id in zip(subject[rows].tolist(), events.column("code_id").to_numpy()[rows].tolist()):
        gender.setdefault(sid, code_values[code_id].split("//", 1)[-1])
    rows = np.flatnonzero((kinds == KIND["birth"]) & (times != NO_TIME))
    birth = pd.Series(pd.to_datetime(times[rows], unit="ns"), index=subject[rows])
    subjects = visits["subject_id"].astype(str)
    birth = birth[~birth.index.duplicated()].reindex(subjects).set_axis(visits.index)
    admit = visits["admittime"]
    before_birthday = (admit.dt.month < birth.dt.month) | ((admit.dt.month == birth.dt.month) & (admit.dt.day < birth.dt.day))
    age = admit.dt.year - birth.dt.year - before_birthday.astype(float)
    return encode_profiles(age, pd.Series([gender.get(s) for s in subjects], index=visits.index, dtype=object), visits)


def _names(codes: list[str], kind: str, inputs: MedsInputs, prefix: str) -> tuple[list[str], int]:
    """Descriptions from metadata/codes.parquet, then the shared ICD tables (:func:`data_prep.pipeline.icd_names`)."""
    described: dict[str, str] = {}
    if inputs.codes is not None:
        table = pq.read_table(inputs.codes, columns=["code", "description"]).to_pydict()
        for code, description in zip(table["code"], table["description"]):
            if description and code.startswith(prefix):
                version, _, bare = code[len(prefix) :].partition("//")
                described[f"ICD{version}:{bare}" if bare else code[len(prefix) :]] = description
    return icd_names(codes, kind, described)


def _apply_dataset_split(dataset: PreparedDataset, path: Path) -> None:
    """Replace the seeded split by the dataset's own, and rebuild the EHR graph from its train set."""
    table = pq.read_table(path, columns=["subject_id", "split"]).to_pydict()
    own = {str(s): SPLIT_NAMES.get(part) for s, part in zip(table["subject_id"], table["split"])}
    unknown = sorted({part for part in table["split"] if part not in SPLIT_NAMES})
    if unknown:
        raise DataError(f"{path}: split names {unknown} (expected train, tuning, held_out); use_dataset_split=False ignores the file")
    missing = [p.patient_id for p in dataset.patients if p.patient_id not in own]
    if missing:
        raise DataError(f"{path}: {len(missing)} subjects of the dataset have no split; use_dataset_split=False ignores the file")
    dataset.split = {p.patient_id: own[p.patient_id] for p in dataset.patients}
    train_visits = (v for p in dataset.patients if dataset.split[p.patient_id] == "train" for v in p.visits)
    dataset.ehr_adj = cooccurrence_adjacency(train_visits, dataset.n_medications)
    dataset.meta["split_source"] = str(path)


# ----- writing ----------------------------------------------------------------------------------
def export_meds(dataset: PreparedDataset, out: str | Path, *, aux: str | Path | None = None, options=None) -> list[Path]:
    """Write the dataset as a MEDS dataset (one shard) plus ``aux/``, validated against the ``meds``
    schemas. Events per visit: the admission (with hadm_id, insurance, marital_status, race), one
    NDC medication event per class within the first 20 hours plus late repeats (as the MIMIC table
    export), the discharge (as the MIMIC table export), and the diagnoses and procedures at the discharge time
    (where the MIMIC-IV ETL puts them). Per subject: GENDER//{value} (no time) and MEDS_BIRTH."""
    import meds

    from data_prep.export_tables import AGE_OF_BAND, TableExportOptions, flatten, ndc_catalogue, write_aux_folder

    options = options or TableExportOptions(rows_per_medication=1.0)
    out = Path(out)
    cohort, patients = flatten(dataset)
    catalogue = ndc_catalogue(dataset.medications.codes, aux)
    rng = np.random.default_rng(options.seed)
    text = [dataset.profile_text(p.profile) for p in patients]
    n_visits = len(cohort.hadm)
    discharge = cohort.discharge
    parts: list[dict] = []

    def add(subject, time, code, hadm=None, **extra) -> None:
        n = len(code)
        parts.append({"subject_id": subject, "time": time, "code": code, "hadm_id": hadm if hadm is not None else np.full(n, -1), **extra})

    last = np.r_[np.flatnonzero(np.diff(cohort.visit_patient)), n_visits - 1]
    year = cohort.admit[last].astype("datetime64[Y]").astype(np.int64) + 1970
    age = np.array([AGE_OF_BAND.get(t.get("age", ""), -1) for t in text])
    born = age >= 0
    add(cohort.subject[born], np.array([f"{y - a:04d}-01-01" for y, a in zip(year[born], age[born])], dtype="datetime64[s]"), np.full(born.sum(), meds.birth_code, dtype=object))
    has_gender = np.array(["gender" in t for t in text])
    add(cohort.subject[has_gender], np.full(has_gender.sum(), np.datetime64("NaT"), dtype="datetime64[s]"), np.array([f"GENDER//{t['gender']}" for t in text if "gender" in t], dtype=object))
    visit_subject = cohort.subject[cohort.visit_patient]
    field = {f: [text[p].get(f) for p in cohort.visit_patient.tolist()] for f in ("insurance", "marital_status", "ethnicity")}
    add(visit_subject, cohort.admit, np.full(n_visits, "HOSPITAL_ADMISSION//UNK//UNK", dtype=object), cohort.hadm,
        insurance=field["insurance"], marital_status=field["marital_status"], race=field["ethnicity"])
    add(visit_subject, discharge, np.full(n_visits, "HOSPITAL_DISCHARGE//UNK", dtype=object), cohort.hadm)
    for kind, prefix in (("diagnoses", "DIAGNOSIS//ICD//9//"), ("procedures", "PROCEDURE//ICD//9//")):
        visit, code = cohort.pairs[kind]
        names = np.array([prefix + c for c in getattr(dataset, kind).codes], dtype=object)
        add(visit_subject[visit], discharge[visit], names[code], cohort.hadm[visit])
    visit, med = cohort.pairs["medications"]
    late = np.flatnonzero(rng.random(len(visit)) < options.late_rows_per_visit / np.maximum(np.bincount(visit, minlength=n_visits)[visit], 1))
    kept, late_offset = cohort.late_offsets(rng, visit[late])
    late = late[kept]
    offset = np.r_[rng.integers(0, 20 * 3600, len(visit)), late_offset]
    visit, med = np.r_[visit, visit[late]], np.r_[med, med[late]]
    ndc = np.array([group[0] for group in catalogue.ndcs], dtype=object)
    add(visit_subject[visit], cohort.admit[visit] + offset.astype("timedelta64[s]"), np.array([f"MEDICATION//NDC//{n}" for n in ndc[med]], dtype=object), cohort.hadm[visit])

    columns = {}
    for name in ("subject_id", "time", "code", "hadm_id"):
        columns[name] = np.concatenate([part[name] for part in parts])
    for name in ("insurance", "marital_status", "race"):
        columns[name] = sum((list(part.get(name, [None] * len(part["code"]))) for part in parts), [])
    order = np.lexsort((np.where(np.isnat(columns["time"]), np.iinfo(np.int64).min, columns["time"].astype(np.int64)), columns["subject_id"]))
    table = pa.table(
        {
            "subject_id": pa.array(columns["subject_id"][order], pa.int64()),
            "time": pa.array(columns["time"][order].astype("datetime64[us]"), pa.timestamp("us")),
            "code": pa.array(columns["code"][order], pa.string()),
            "numeric_value": pa.nulls(len(order), pa.float32()),
            "hadm_id": pa.array(np.where(columns["hadm_id"][order] >= 0, columns["hadm_id"][order], 0), pa.int64(), mask=columns["hadm_id"][order] < 0),
            **{name: pa.array([columns[name][i] for i in order.tolist()], pa.string()) for name in ("insurance", "marital_status", "race")},
        }
    )
    meds.DataSchema.validate(table)
    descriptions = [(prefix + c, n) for kind, prefix in (("diagnoses", "DIAGNOSIS//ICD//9//"), ("procedures", "PROCEDURE//ICD//9//"))
                    for c, n in zip(getattr(dataset, kind).codes, getattr(dataset, kind).names)]
    codes = pa.table({"code": [c for c, _ in descriptions], "description": [n for _, n in descriptions],
                      "parent_codes": pa.array([[] for _ in descriptions], pa.list_(pa.string()))})
    meds.CodeMetadataSchema.validate(codes)
    splits = pa.table({"subject_id": pa.array(cohort.subject, pa.int64()),
                       "split": [{"train": meds.train_split, "val": meds.tuning_split, "test": meds.held_out_split}[dataset.split[p.patient_id]] for p in patients]})
    meds.SubjectSplitSchema.validate(splits)
    metadata = {"dataset_name": dataset.name, "etl_name": "medrec-bench export", "etl_version": "1", "meds_version": meds.__version__}
    meds.DatasetMetadataSchema.validate(metadata)
    written = [
        write_atomic(out / "data" / "0.parquet", lambda tmp: pq.write_table(table, tmp)),
        write_atomic(out / "metadata" / "codes.parquet", lambda tmp: pq.write_table(codes, tmp)),
        write_atomic(out / "metadata" / "subject_splits.parquet", lambda tmp: pq.write_table(splits, tmp)),
        write_atomic(out / "metadata" / "dataset.json", lambda tmp: tmp.write_text(json.dumps(metadata, indent=1))),
    ]
    return written + write_aux_folder(dataset, catalogue, out / "aux")


def _locate_source(paths) -> Located:
    inputs = locate_meds(paths["root"], paths["aux"])
    return Located(inputs.files(), lambda options: read_meds(inputs, options))


def _export(dataset: PreparedDataset, out: Path, *, aux: Path | None = None, rows_per_medication: float | None = None) -> list[Path]:
    from data_prep.export_tables import TableExportOptions

    return export_meds(dataset, out, aux=aux, options=TableExportOptions(rows_per_medication=rows_per_medication or 1.0))


SOURCE = DatasetSource(
    name="meds",
    summary="a MEDS dataset (data/*.parquet and metadata/)",
    options=MedsOptions,
    locate=_locate_source,
    paths={"root": "the MEDS dataset folder (holding data/ and metadata/)", "aux": "the folder of auxiliary mapping files (ndc2RXCUI.txt, ...)"},
    export=_export,
)

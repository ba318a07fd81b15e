"""MEDS input and output: ``--dataset meds --root DIR`` and ``bench data export --format meds``.

MEDS (Medical Event Data Standard, https://medical-event-data-standard.github.io; PyPI ``meds``) keeps
a dataset as events ``subject_id, time, code, numeric_value`` in ``data/*.parquet`` (each subject in
one shard, sorted by time), with ``metadata/codes.parquet`` (code descriptions),
``metadata/subject_splits.parquet`` (``train`` / ``tuning`` / ``held_out``) and
``metadata/dataset.json``. Event tables may carry extra columns (``hadm_id``, ``poe_id``, profile fields).

How the reader turns events into the prepared dataset (the prefixes are :class:`MedsOptions`; the
defaults are the MIMIC-IV MEDS ETL's codes). The code column is read once first (every distinct code
and its events, :class:`~data_prep.meds_etl.CodeCensus`); the events of the codes the pipeline uses are
then read with their columns.

- visits: ``HOSPITAL_ADMISSION//...`` events at the admission time. Events are assigned to a visit
  by their ``hadm_id`` where the data carries one, otherwise by time: an event belongs to the
  subject's latest admission that started at or before it, if it is not after that admission's
  discharge (``HOSPITAL_DISCHARGE//...``, matched by ``hadm_id`` or as the subject's first discharge
  after the admission);
- diagnoses / procedures: ``DIAGNOSIS//ICD//{version}//{code}`` and ``PROCEDURE//ICD//...`` become
  ``ICD{version}:{code}``, as the MIMIC-IV reader writes them;
- medications: the events of one shape (:mod:`data_prep.meds_etl`, ``--etl-shape``, detected by
  default): ``MEDICATION//NDC//{ndc}`` / ``MEDICATION//ATC//{code}`` events (any producer), or the
  MIMIC-IV MEDS ETL's pharmacy order starts, whose NDC is the code's last segment (0.2) or comes from
  the user's ``hosp/prescriptions.csv.gz`` through ``poe_id`` (0.1.x). NDCs map through the aux files
  (NDC -> RXCUI -> ATC3), ATC codes are used directly (their first four characters). The event's time
  is the order's start, so the prescription windows (``first-hours`` etc.) apply as for MIMIC;
- profiles: ``GENDER//{value}`` events, ``MEDS_BIRTH`` (age at each visit), and insurance, marital
  status and race from the admission event's columns (ETL 0.1.x) or, where it has none, from their own
  ``INSURANCE//...``, ``MARITAL_STATUS//...``, ``RACE//...`` events at the admission (ETL 0.2);
- split: ``metadata/subject_splits.parquet`` when present (``use_dataset_split``), else the seeded
  8:1:1 split of every other source. The EHR graph is then built from the dataset's own train set.

Everything after that (top-k codes, required kinds, min visits, SMILES, DDI graph, cache) is the
shared pipeline's (:mod:`data_prep.pipeline`), so the same options mean what they mean for MIMIC.
Messages name codes by pattern and events by count, never a subject, admission or value.
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
from data_prep.meds_etl import (
    DESCRIPTION,
    DIFFERENCES,
    ETL_01,
    ETL_SHAPES,
    KIND,
    CodeCensus,
    EtlShape,
    MedicationPlan,
    found_and_expected,
    medication_family,
    medication_rows,
    plan_medications,
)
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
from data_prep.atomic import write_atomic
from data_prep.tables import NO_TIME, DataError, EncodedColumn, describe_read_error

SPLIT_NAMES = {"train": "train", "tuning": "val", "held_out": "test"}
PROFILE_COLUMNS = {"insurance": "insurance", "marital_status": "marital_status", "race": "ethnicity"}  # event column -> profile field
BASE_KINDS = ("admission", "discharge", "diagnoses", "procedures", "gender", "birth")


@dataclass(frozen=True)
class MedsOptions(PipelineOptions):
    """The shared pipeline's options plus the code prefixes that say what an event is (defaults: the
    MIMIC-IV MEDS ETL's codes) and which medication events to read."""

    admission_prefix: str = "HOSPITAL_ADMISSION"
    """Code prefix of admission events."""
    discharge_prefix: str = "HOSPITAL_DISCHARGE"
    """Code prefix of discharge events."""
    diagnosis_prefix: str = "DIAGNOSIS//ICD//"
    """Code prefix of diagnosis events ({prefix}{version}//{code})."""
    procedure_prefix: str = "PROCEDURE//ICD//"
    """Code prefix of procedure events ({prefix}{version}//{code})."""
    etl_shape: EtlShape = "auto"
    """Which medication events to read: auto (detected from the codes), ndc-atc-codes (--ndc-prefix / --atc-prefix events, any MEDS producer), mimic-iv-meds-0.2 (the MIMIC-IV MEDS ETL 0.2: pharmacy START codes ending in the NDC), mimic-iv-meds-0.1 (ETL 0.1.x: pharmacy START codes, NDCs from --prescriptions-file through poe_id)."""
    ndc_prefix: str = "MEDICATION//NDC//"
    """Code prefix of NDC medication events (mapped through the aux files)."""
    atc_prefix: str = "MEDICATION//ATC//"
    """Code prefix of ATC medication events (used directly)."""
    pharmacy_start_prefix: str = "MEDICATION//START//"
    """Code prefix of the MIMIC-IV MEDS ETL's pharmacy order starts ({prefix}{drug}//{ndc} in 0.2, {prefix}{drug} in 0.1.x)."""
    prescriptions_file: str | None = None
    """MIMIC-IV's own hosp/prescriptions.csv.gz, for datasets of the MIMIC-IV MEDS ETL 0.1.x (its pharmacy events carry no NDC): the NDCs of its MAIN rows, joined through poe_id."""
    gender_prefix: str = "GENDER//"
    """Code prefix of gender events."""
    birth_code: str = "MEDS_BIRTH"
    """Code of the birth event (ages at each visit)."""
    insurance_prefix: str = "INSURANCE//"
    """Code prefix of insurance events (read when the admission event has no insurance column)."""
    marital_status_prefix: str = "MARITAL_STATUS//"
    """Code prefix of marital status events (read when the admission event has no marital_status column)."""
    race_prefix: str = "RACE//"
    """Code prefix of race events (read when the admission event has no race column)."""
    use_dataset_split: bool = True
    """Use metadata/subject_splits.parquet as the split when the dataset has one."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.etl_shape not in ETL_SHAPES:
            raise ValueError(f"etl_shape must be one of {ETL_SHAPES}, got {self.etl_shape!r}")

    def prefixes(self) -> dict[str, str]:
        """Each event kind's code prefix, in the order of :data:`~data_prep.meds_etl.KIND` (the first match wins)."""
        return {
            "admission": self.admission_prefix,
            "discharge": self.discharge_prefix,
            "diagnoses": self.diagnosis_prefix,
            "procedures": self.procedure_prefix,
            "ndc": self.ndc_prefix,
            "atc": self.atc_prefix,
            "pharmacy_start": self.pharmacy_start_prefix,
            "gender": self.gender_prefix,
            "birth": self.birth_code,
            "insurance": self.insurance_prefix,
            "marital_status": self.marital_status_prefix,
            "race": self.race_prefix,
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
    """The pipeline of the module docstring: census of the codes, the medication events' shape, then the events used."""
    columns = _columns(inputs)
    census = CodeCensus.of(inputs.shards)
    code_kinds = census.kinds(options.prefixes())
    plan = plan_medications(census, code_kinds, options, inputs.root)
    profile_events = [column for column in PROFILE_COLUMNS if column not in columns]  # fields the admission event lacks
    read = {KIND[k] for k in (*BASE_KINDS, *plan.kinds, *profile_events)}
    wanted = {code: int(kind) for code, kind in zip(census.codes, code_kinds) if kind in read}
    extra = [c for c in ("hadm_id", *PROFILE_COLUMNS) if c in columns]
    if plan.shape == ETL_01:
        if "poe_id" not in columns:
            raise DataError(f"{inputs.root}: --etl-shape {ETL_01} joins the pharmacy events' poe_id to --prescriptions-file, but the events have no poe_id column")
        extra.append("poe_id")
    events, kinds, code_values = _read_events(inputs, wanted, extra)
    admissions, position_rows = _admissions(events, kinds, inputs.root)  # per event, its admission (-1: none)
    _profile_fields_from_events(admissions, events, kinds, position_rows, code_values, profile_events, options)

    prefixes = options.prefixes()
    known = np.isin(code_kinds, list(read))
    codes = {}
    for kind in ("diagnoses", "procedures"):
        codes[kind] = _icd_pairs(events, kinds == KIND[kind], position_rows, code_values, prefixes[kind], kind, inputs, options)
    medication, medication_meta, medication_rate = _medication_pairs(events, kinds, position_rows, code_values, admissions, inputs, options, plan, census)
    codes["medications"] = medication
    join_rates = {kind: {"rows": int((kinds == KIND[kind]).sum()), "joined": int(((kinds == KIND[kind]) & (position_rows >= 0)).sum())} for kind in ("diagnoses", "procedures")}
    join_rates["medications"] = medication_rate
    _check_kinds_left(codes, join_rates, census, known, options, inputs.root)
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
            "files": {role: str(path) for role, path in {**inputs.files(), **SOURCE.option_files(options)}.items()},
        },
    )
    if options.use_dataset_split and inputs.splits is not None:
        _apply_dataset_split(dataset, inputs.splits)
    return dataset


def _columns(inputs: MedsInputs) -> set[str]:
    """The event columns of the shards (validated against the MEDS data schema)."""
    from meds import DataSchema

    names: set[str] = set()
    for shard in inputs.shards:
        try:
            schema = pq.read_schema(shard)
            DataSchema.validate(schema)
        except Exception as exc:  # the meds package raises its own SchemaValidationError
            raise DataError(f"{shard}: not a MEDS data shard ({describe_read_error(exc)})") from None
        names |= set(schema.names)
    return names


def _read_events(inputs: MedsInputs, wanted: dict[str, int], extra: list[str]) -> tuple[pa.Table, np.ndarray, list[str]]:
    """The events of the ``wanted`` codes (code -> kind), their kind, and the distinct codes (``code``
    column replaced by ids into them)."""
    columns = ["subject_id", "time", "code", *extra]
    try:
        table = pads.dataset([str(p) for p in inputs.shards], format="parquet").to_table(columns=columns, filter=pads.field("code").isin(list(wanted)))
    except (pa.ArrowException, OSError) as exc:
        raise DataError(f"{inputs.root / 'data'}: unreadable MEDS shards ({describe_read_error(exc)})") from None
    encoded = EncodedColumn()
    encoded.add(table.column("code"))
    code_ids, code_values = encoded.finish()
    kind_of_code = np.array([wanted[code] for code in code_values] + [-1], dtype=np.int64)
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
        raise DataError(f"{root}: {frame.loc[duplicated, 'hadm_id'].nunique():,} hadm_ids have more than one admission event (codes starting with the admission prefix)")

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


def _medication_pairs(events, kinds, position, code_values, admissions, inputs, options, plan: MedicationPlan, census: CodeCensus) -> tuple[CodePairs, dict, dict]:
    """(admission, ATC3) pairs of the plan's medication events, what the reader recognised and mapped
    (``meta["medication_source"]``), and the medication events' admission join rate."""
    poe_ids = np.array(pc.cast(events.column("poe_id"), pa.string()).to_pylist(), dtype=object) if plan.shape == ETL_01 else None
    rows = medication_rows(plan.shape, events.column("code_id").to_numpy(), kinds, code_values, poe_ids, options)
    carries_ndc = rows.atc < 0
    ndc_class, classes, coverage = map_ndcs(rows.ndc[carries_ndc], rows.ndcs, inputs.aux, options)
    codes, remap = dedupe(classes + rows.atcs)
    row_code = np.full(len(rows.event), -1, dtype=np.int64)
    row_code[carries_ndc] = np.where(ndc_class >= 0, remap[np.maximum(ndc_class, 0)] if len(classes) else -1, -1)
    atc = rows.atc[~carries_ndc]
    row_code[~carries_ndc] = np.where(atc >= 0, remap[len(classes) + np.maximum(atc, 0)] if rows.atcs else -1, -1)
    with_code = (rows.ndc >= 0) | (rows.atc >= 0)
    mapped = row_code >= 0
    visit = position[rows.event]
    n_events = _events(rows.event, np.ones(len(rows.event), dtype=bool))
    counts = {
        "events": n_events,
        "events_with_a_code": _events(rows.event, with_code),
        "events_mapped": _events(rows.event, mapped),
        "events_in_an_admission": _events(rows.event, visit >= 0),
        "events_mapped_in_an_admission": _events(rows.event, mapped & (visit >= 0)),
    }
    if not counts["events_mapped"]:
        without, unknown = n_events - counts["events_with_a_code"], len({rows.ndcs[i] for i in unique_ints(rows.ndc[rows.ndc >= 0]).tolist()})
        causes = [f"{without:,} carry no code ({rows.without_code})"] if without else []
        causes += [f"{'the' if without else 'all'} {unknown:,} distinct NDCs of {'the others' if without else 'the events'} are unknown to the aux files (ndc2RXCUI.txt, ndc2atc_level4 in --aux)"] if unknown else []
        raise DataError(
            f"{inputs.root}: none of the {n_events:,} medication events ({DESCRIPTION[plan.shape]}) maps to an ATC class: "
            f"{', '.join(causes)}; {found_and_expected(census, None, options)}"
        )
    pairs, meta = medication_pairs(visit, _times(events)[rows.event], with_code, mapped, row_code, codes, admissions, inputs.aux, options)
    if rows.atcs:
        coverage = {**coverage, "atc_events": int((rows.atc >= 0).sum())}
    source = {"shape": plan.shape, "description": DESCRIPTION[plan.shape], **counts, "medication_codes_not_read": plan.not_read or "none",
              "differences": DIFFERENCES[plan.shape]}
    rate = {"rows": n_events, "joined": counts["events_in_an_admission"]}
    return pairs, {"medication_source": source, "mapping_coverage": coverage, **meta}, rate


def _events(event: np.ndarray, mask: np.ndarray) -> int:
    """Distinct events among the rows of ``mask`` (an event may have several rows)."""
    return int(np.count_nonzero(np.bincount(event[mask]))) if mask.any() else 0


def _check_kinds_left(codes: dict[str, CodePairs], join_rates: dict, census: CodeCensus, known: np.ndarray, options: MedsOptions, root: Path) -> None:
    """A required kind with no (admission, code) pair fails here, with its own cause, before the
    pipeline's generic "no patient is left" (which is about admissions joining)."""
    flags = {"diagnoses": "--diagnosis-prefix", "procedures": "--procedure-prefix"}
    prefixes = {"diagnoses": options.diagnosis_prefix, "procedures": options.procedure_prefix}
    for kind in options.required_code_kinds:
        if len(codes[kind].visit):
            continue
        rate = join_rates[kind]
        if kind == "medications":
            raise DataError(
                f"{root}: medication events map to ATC classes but none is left for a visit: {rate['joined']:,} of {rate['rows']:,} events fall "
                "within an admission (by hadm_id, else between admission and discharge), and those must start within the prescription window "
                f"(--prescription-window, --first-hours){' and have a class with SMILES (--no-require-smiles)' if options.require_smiles else ''}"
            )
        if not rate["rows"]:
            raise DataError(
                f"{root}: no {kind} events: no code starts with {prefixes[kind]} ({flags[kind]} names another prefix); "
                f"most frequent codes the reader does not use, medications aside: {census.patterns(~known & ~medication_family(census, options)) or 'none'}"
            )
        raise DataError(f"{root}: none of the {rate['rows']:,} {kind} events joins an admission (by hadm_id, else between admission and discharge)")


def _profile_fields_from_events(admissions: pd.DataFrame, events, kinds, position, code_values: list[str], columns: list[str], options: MedsOptions) -> None:
    """Profile fields the admission event has no column for, from their own events (``INSURANCE//{value}``...,
    the first of each admission)."""
    code_ids = events.column("code_id").to_numpy()
    prefixes = options.prefixes()
    for column in columns:
        rows = np.flatnonzero((kinds == KIND[column]) & (position >= 0))
        values = pd.Series([code_values[c][len(prefixes[column]) :] for c in code_ids[rows].tolist()], index=position[rows], dtype=object)
        admissions[PROFILE_COLUMNS[column]] = values[~values.index.duplicated()].reindex(range(len(admissions))).to_numpy()


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
    file_options=("prescriptions_file",),
)

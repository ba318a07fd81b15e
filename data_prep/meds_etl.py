"""The medication events of a MEDS dataset as each producer writes them, and which one a dataset holds.

Shapes (``MedsOptions.etl_shape``, flag ``--etl-shape``), checked against the MIMIC-IV MEDS ETL's
published event configuration (``event_configs.yaml`` of github.com/Medical-Event-Data-Standard/MIMIC_IV_MEDS):

- ``ndc-atc-codes``: ``{ndc_prefix}{ndc}`` (``MEDICATION//NDC//...``, mapped through the aux files) and
  ``{atc_prefix}{code}`` (``MEDICATION//ATC//...``, used directly) events: any MEDS producer, with its
  own prefixes as options;
- ``mimic-iv-meds-0.2``: the ETL's 0.2 release (the MEDS-Extract 0.7 configuration) joins
  ``hosp/pharmacy`` to the MAIN rows of ``hosp/prescriptions`` by ``pharmacy_id`` and writes
  ``MEDICATION//START//{medication}//{ndc}`` at the order's start (and ``MEDICATION//STOP//...`` at its
  stop), ``UNK`` where the NDC is missing or 0. MEDS-Extract 0.7 infers CSV column types, so the
  all-digit NDC column is read as an integer and loses its leading zeros (the configuration says so of
  ``drg_code``): the reader pads it back to 11 digits. eMAR administrations end in the NDC too
  (``MEDICATION//{medication}//{event_txt}//{ndc}``: the same orders again); only START events are read.
  Pharmacy events carry no ``hadm_id``: they join admissions by time;
- ``mimic-iv-meds-0.1``: the 0.1.x releases write ``MEDICATION//START//{medication}`` (drug names, no
  NDC, no ``hadm_id``) with the order's ``poe_id``, and do not extract ``hosp/prescriptions``: the NDCs
  come from the user's own ``hosp/prescriptions.csv.gz`` (``--prescriptions-file``): MAIN rows with an
  NDC other than 0, read as text, matched through ``poe_id``.

Detection (``auto``, the default) reads the code column once (:class:`CodeCensus`: every distinct code
and its event count) and takes the one shape whose events can give NDCs: NDC/ATC-prefix events;
pharmacy START codes ending in an NDC or ``UNK`` (0.2); START codes ending in a drug name with a
prescriptions file given (0.1.x). Two candidates, or START codes of both forms, are ambiguous: the
error says which and asks for ``--etl-shape``. Every failure is one line that names what medication
codes the dataset holds (their three most frequent patterns, values masked), what the reader
expected and the option that fixes it.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from data_prep.pipeline import unique_ints
from data_prep.tables import DataError, read_encoded

EtlShape = Literal["auto", "ndc-atc-codes", "mimic-iv-meds-0.2", "mimic-iv-meds-0.1"]
ETL_SHAPES: tuple[str, ...] = EtlShape.__args__  # type: ignore[attr-defined]
CODES, ETL_02, ETL_01 = ETL_SHAPES[1:]
FORM_SHARE = 0.95  # START codes of one release's form needed to name the release
NDC_DIGITS = 11

# event kinds, by code prefix (MedsOptions.prefixes() in this order); the admission and discharge come first
KIND = {name: i for i, name in enumerate(
    ("admission", "discharge", "diagnoses", "procedures", "ndc", "atc", "pharmacy_start", "gender", "birth", "insurance", "marital_status", "race")
)}
MEDICATION_KINDS = {CODES: ("ndc", "atc"), ETL_02: ("pharmacy_start",), ETL_01: ("pharmacy_start",)}
DESCRIPTION = {
    CODES: "NDC and ATC medication events (--ndc-prefix, --atc-prefix)",
    ETL_02: "the MIMIC-IV MEDS ETL 0.2: pharmacy order starts whose code ends in the NDC",
    ETL_01: "the MIMIC-IV MEDS ETL 0.1.x: pharmacy order starts, NDCs from --prescriptions-file through poe_id",
}
_TIME_JOIN = (
    "the events carry no hadm_id, so they join admissions by time: orders started before the admission (e.g. in the "
    "emergency department) or after the discharge drop out; eMAR administrations and STOP events are not read"
)
DIFFERENCES = {  # how the medication sets differ from the mimic4 reader's on the same patients
    CODES: "they are the producer's NDC and ATC events, joined to admissions by hadm_id where the events carry one, else by time; "
    "they match the mimic4 reader's when the producer wrote every prescriptions row with its hadm_id",
    ETL_02: "only pharmacy orders count, with the NDC of their MAIN prescriptions row (the mimic4 reader reads every prescriptions "
    "row with an NDC, BASE and ADDITIVE rows included, by hadm_id); " + _TIME_JOIN,
    ETL_01: "only pharmacy orders count, with the NDCs of the MAIN rows of --prescriptions-file under their poe_id (the mimic4 reader "
    "reads every prescriptions row with an NDC, BASE and ADDITIVE rows included, by hadm_id, also rows without a poe_id); " + _TIME_JOIN,
}
_KEYWORD = re.compile(r"[A-Z]{2,5}|[A-Z]+(?:_[A-Z]+)+")
_DIGITS = re.compile(r"[0-9]+")


@dataclass(frozen=True)
class CodeCensus:
    """Every distinct code of a dataset and its number of events (one pass over the code column,
    dictionary-encoded, so no other column is read)."""

    codes: list[str]
    events: np.ndarray

    @classmethod
    def of(cls, shards: list[Path]) -> "CodeCensus":
        counts: Counter[str] = Counter()
        for shard in shards:
            for batch in pq.ParquetFile(shard, read_dictionary=["code"]).iter_batches(columns=["code"], batch_size=1 << 20):
                column = batch.column(0)
                if not pa.types.is_dictionary(column.type):
                    column = pc.dictionary_encode(column)
                per_value = np.bincount(column.indices.drop_null().to_numpy(), minlength=len(column.dictionary))
                used = np.flatnonzero(per_value)
                for value, count in zip(column.dictionary.take(pa.array(used)).to_pylist(), per_value[used].tolist()):
                    counts[value] += count
        return cls(list(counts), np.fromiter(counts.values(), dtype=np.int64, count=len(counts)))

    def kinds(self, prefixes: dict[str, str]) -> np.ndarray:
        """Per code, its kind (:data:`KIND`, the first prefix it starts with), -1 for none."""
        return np.array([next((KIND[k] for k, p in prefixes.items() if code.startswith(p)), -1) for code in self.codes], dtype=np.int64)

    def count(self, mask: np.ndarray) -> int:
        return int(self.events[mask].sum())

    def patterns(self, mask: np.ndarray, k: int = 3) -> str:
        """The ``k`` most frequent code patterns among ``mask``, with their events (values masked)."""
        counts: Counter[str] = Counter()
        for i in np.flatnonzero(mask).tolist():
            counts[code_pattern(self.codes[i])] += int(self.events[i])
        return ", ".join(f"{pattern} ({n:,} events)" for pattern, n in sorted(counts.items(), key=lambda item: (-item[1], item[0]))[:k])


def code_pattern(code: str) -> str:
    """A code with its values masked: the first segment and keyword segments (``START``, ``NDC``, ``UNK``)
    kept, numbers as ``{number}``, other text as ``{text}``: ``MEDICATION//START//{text}//{number}``."""
    segments = code.split("//")
    return "//".join(
        [segments[0], *(s if _KEYWORD.fullmatch(s) else "{number}" if _DIGITS.fullmatch(s) else "{text}" for s in segments[1:])]
    )


def start_code_ndc(code: str, prefix: str) -> str | None:
    """The NDC segment of a 0.2 pharmacy START code (``{prefix}{drug}//{ndc}``): its digits, or ``UNK``;
    None when the code ends in a drug name (the 0.1.x form)."""
    rest = code[len(prefix) :]
    if "//" not in rest:
        return None
    last = rest.rsplit("//", 1)[1]
    return last if last == "UNK" or _DIGITS.fullmatch(last) else None


@dataclass(frozen=True)
class MedicationPlan:
    """Which events hold the medications (``shape``, its event ``kinds``) and what else the dataset's
    medication codes hold (``not_read``: patterns of the codes not read)."""

    shape: str
    kinds: tuple[str, ...]
    not_read: str


def plan_medications(census: CodeCensus, kinds: np.ndarray, options, root: Path) -> MedicationPlan:
    """The shape named by ``options.etl_shape``, or the one the codes show (see the module docstring)."""
    family = medication_family(census, options)
    start = kinds == KIND["pharmacy_start"]
    ndc_form = start & np.array([start_code_ndc(c, options.pharmacy_start_prefix) is not None for c in census.codes], dtype=bool)
    events = {
        CODES: census.count((kinds == KIND["ndc"]) | (kinds == KIND["atc"])),
        ETL_02: census.count(ndc_form),
        ETL_01: census.count(start & ~ndc_form),
    }
    shape = options.etl_shape
    if shape == "auto":
        starts = events[ETL_02] + events[ETL_01]
        if starts and FORM_SHARE * starts > max(events[ETL_02], events[ETL_01]):
            raise DataError(
                f"{root}: cannot tell the MIMIC-IV MEDS ETL release: {100 * events[ETL_02] / starts:.0f}% of the {starts:,} pharmacy order "
                f"starts ({options.pharmacy_start_prefix}...) end in an NDC (0.2), the rest in a drug name (0.1.x); "
                f"name it with --etl-shape {ETL_02} or --etl-shape {ETL_01} --prescriptions-file PATH"
            )
        candidates = [s for s in (CODES, ETL_02) if events[s]] + ([ETL_01] if events[ETL_01] and options.prescriptions_file else [])
        if len(candidates) > 1:
            found = " and ".join(f"{events[s]:,} events of {DESCRIPTION[s]}" for s in candidates)
            raise DataError(f"{root}: cannot tell which medication events to read: found {found}; name one with --etl-shape {' or '.join(candidates)}")
        if not candidates and events[ETL_01]:
            raise DataError(_needs_prescriptions(root, events[ETL_01], options))
        if not candidates:
            raise DataError(f"{root}: no medication events the reader knows: {found_and_expected(census, family, options, kinds >= 0)}")
        shape = candidates[0]
    elif not events[shape]:
        raise DataError(f"{root}: --etl-shape {shape} but none of its events ({DESCRIPTION[shape]}): {found_and_expected(census, family, options, kinds >= 0)}")
    if shape == ETL_01 and not options.prescriptions_file:
        raise DataError(_needs_prescriptions(root, events[ETL_01], options))
    if shape != ETL_01 and options.prescriptions_file:
        raise DataError(
            f"{root}: --prescriptions-file is for the MIMIC-IV MEDS ETL 0.1.x's pharmacy events, but this dataset's medications are "
            f"{DESCRIPTION[shape]}: drop --prescriptions-file (or name the shape with --etl-shape)"
        )
    read = np.isin(kinds, [KIND[k] for k in MEDICATION_KINDS[shape]])
    return MedicationPlan(shape, MEDICATION_KINDS[shape], census.patterns(family & ~read))


def medication_family(census: CodeCensus, options) -> np.ndarray:
    """Per code of the census: whether it is a medication code, one whose first segment is a medication prefix's (``MEDICATION`` by default)."""
    heads = {p.split("//", 1)[0] for p in (options.ndc_prefix, options.atc_prefix, options.pharmacy_start_prefix)}
    return np.array([c.split("//", 1)[0] in heads for c in census.codes], dtype=bool)


def found_and_expected(census: CodeCensus, family: np.ndarray | None, options, known: np.ndarray | None = None) -> str:
    """What medication codes the dataset holds and what the reader reads, with the options that change it;
    without medication codes, the most frequent codes outside ``known`` (the kinds the reader recognises)."""
    family = medication_family(census, options) if family is None else family
    if family.any():
        found = f"found {census.patterns(family)}"
    else:
        heads = "/".join(sorted({p.split("//", 1)[0] for p in (options.ndc_prefix, options.atc_prefix, options.pharmacy_start_prefix)}))
        others = census.patterns(np.ones(len(census.codes), dtype=bool) if known is None else ~known)
        found = f"no code starts with {heads} (most frequent other codes: {others or 'none'})"
    start = options.pharmacy_start_prefix
    return (
        f"{found}; expected {options.ndc_prefix}{{ndc}} or {options.atc_prefix}{{code}} (another producer's prefixes: --ndc-prefix, --atc-prefix), "
        f"or the MIMIC-IV MEDS ETL's pharmacy order starts {start}{{drug}}//{{ndc}} (0.2) or {start}{{drug}} with --prescriptions-file (0.1.x) "
        f"(--pharmacy-start-prefix; --etl-shape names the shape)"
    )


def _needs_prescriptions(root: Path, events: int, options) -> str:
    return (
        f"{root}: the pharmacy events are the MIMIC-IV MEDS ETL 0.1.x's ({options.pharmacy_start_prefix}{{drug}}: {events:,} order starts "
        "with drug names and no NDC; that release does not extract hosp/prescriptions): give MIMIC-IV's own hosp/prescriptions.csv.gz "
        "with --prescriptions-file, whose MAIN rows' NDCs are joined to the events through poe_id"
    )


# ----- medication rows ----------------------------------------------------------------------------
@dataclass(frozen=True)
class MedicationRows:
    """One row per medication event (more when a poe_id has several NDCs): ``event`` (its row in the events
    table), ``ndc`` (index into ``ndcs``; -1: none) or ``atc`` (index into ``atcs``; -1: none)."""

    event: np.ndarray
    ndc: np.ndarray
    ndcs: list[str]
    atc: np.ndarray
    atcs: list[str]
    without_code: str  # why an event of this shape may carry no code, for messages


def medication_rows(shape: str, code_ids: np.ndarray, kinds: np.ndarray, code_values: list[str], poe_ids: np.ndarray | None, options) -> MedicationRows:
    if shape == ETL_01:
        return _prescription_rows(np.flatnonzero(kinds == KIND["pharmacy_start"]), poe_ids, Path(options.prescriptions_file).expanduser())
    if shape == ETL_02:
        events = np.flatnonzero(kinds == KIND["pharmacy_start"])
        ndc = _per_code(code_ids[events], len(code_values), lambda i: _padded(start_code_ndc(code_values[i], options.pharmacy_start_prefix)))
        return MedicationRows(events, *ndc, np.full(len(events), -1), [], "codes ending in UNK (no NDC, or NDC 0)")
    ndc_events = np.flatnonzero(kinds == KIND["ndc"])
    atc_events = np.flatnonzero(kinds == KIND["atc"])
    ndc_ids, ndcs = _per_code(code_ids[ndc_events], len(code_values), lambda i: code_values[i][len(options.ndc_prefix) :].strip() or None)
    atc_ids, atcs = _per_code(code_ids[atc_events], len(code_values), lambda i: code_values[i][len(options.atc_prefix) :].strip().upper()[:4] or None)
    return MedicationRows(
        np.r_[ndc_events, atc_events], np.r_[ndc_ids, np.full(len(atc_events), -1)], ndcs, np.r_[np.full(len(ndc_events), -1), atc_ids], atcs,
        "an empty code after the prefix",
    )


def _per_code(code_ids: np.ndarray, n_codes: int, value_of) -> tuple[np.ndarray, list[str]]:
    """Per row, the index of its code's value among the distinct values (-1 where ``value_of`` gives None)."""
    used = np.flatnonzero(np.bincount(code_ids, minlength=n_codes))
    index: dict[str, int] = {}
    lookup = np.full(n_codes, -1, dtype=np.int64)
    for code in used.tolist():
        value = value_of(code)
        if value is not None:
            lookup[code] = index.setdefault(value, len(index))
    return lookup[code_ids], list(index)


def _padded(segment: str | None) -> str | None:
    """An NDC read as an integer back to its 11 digits; ``UNK`` and 0 are no NDC."""
    if segment is None or segment == "UNK" or not segment.strip("0"):
        return None
    return segment.zfill(NDC_DIGITS)


def _prescription_rows(events: np.ndarray, poe_ids: np.ndarray, path: Path) -> MedicationRows:
    """The NDCs of each pharmacy event's poe_id: the MAIN rows of MIMIC-IV's prescriptions table with an
    NDC other than 0 (as text); an event whose poe_id has none gives one row without NDC."""
    table = read_encoded(path, ["poe_id", "drug_type", "ndc"], code_columns=["ndc"])
    ndcs = [v.strip() for v in table.values["ndc"]]
    main = np.array([v.strip().upper() == "MAIN" for v in table.values["drug_type"]] + [False])[table.ids["drug_type"]]
    with_ndc = np.array([v not in ("", "0") for v in ndcs] + [False])[table.ids["ndc"]]
    keep = main & with_ndc & (table.ids["poe_id"] >= 0)
    width = max(len(ndcs), 1)
    pairs = unique_ints(table.ids["poe_id"][keep].astype(np.int64) * width + table.ids["ndc"][keep])
    pair_poe, pair_ndc = pairs // width, pairs % width
    first = np.flatnonzero(np.r_[True, pair_poe[1:] != pair_poe[:-1]]) if len(pair_poe) else np.zeros(0, dtype=np.int64)
    poes = pair_poe[first]
    per_poe = np.diff(np.r_[first, len(pairs)])
    known = pa.array([table.values["poe_id"][i].strip() for i in poes.tolist()], pa.string())
    event_poe = pc.index_in(pa.array(poe_ids[events], pa.string()), value_set=known)
    event_poe = pc.fill_null(event_poe, -1).to_numpy(zero_copy_only=False).astype(np.int64)
    count = np.where(event_poe >= 0, per_poe[np.maximum(event_poe, 0)] if len(per_poe) else 0, 0)
    repeats = np.maximum(count, 1)
    offset = np.arange(int(repeats.sum())) - np.repeat(np.cumsum(repeats) - repeats, repeats)
    pair = np.repeat(np.where(count > 0, first[np.maximum(event_poe, 0)] if len(first) else 0, -1), repeats)
    ndc = np.where(pair >= 0, pair_ndc[np.maximum(pair + offset, 0)] if len(pair_ndc) else -1, -1)
    return MedicationRows(
        np.repeat(events, repeats), ndc, ndcs, np.full(len(ndc), -1), [],
        f"a poe_id without a MAIN row with an NDC in {path.name}",
    )

"""Rewrite a MEDS export of the synthetic cohort (``export_meds``, real NDCs) into what the MIMIC-IV MEDS ETL
writes, release 0.2 or 0.1.x (see ``data_prep.meds_etl``), so the reader is tested on that shape without
any MIMIC data. The export's ``MEDICATION//NDC//{ndc}`` events become pharmacy orders:

- 0.2: ``MEDICATION//START//{drug}//{ndc as an integer}`` (leading zeros lost) without hadm_id, its
  ``MEDICATION//STOP//...`` a day later, and two eMAR administrations ``MEDICATION//{drug}//{event}//{ndc}``
  with hadm_id (the same drugs again); per visit also one order without NDC (``//UNK``); insurance,
  marital status, race and language are their own events at the admission, no longer columns;
- 0.1.x: ``MEDICATION//START//{drug}`` / ``STOP`` with a ``poe_id`` and no hadm_id, eMAR
  ``MEDICATION//{drug}//{event}`` with hadm_id; the NDCs go to ``hosp/prescriptions.csv.gz`` (MAIN rows,
  plus BASE rows with NDC 0 and ADDITIVE rows of another class that the reader must not read, an order
  whose MAIN row has NDC 0, and rows without poe_id).

Both shapes add, per visit, an order of a class the visit does not hold, started half an hour before
the admission (in the emergency department, say): joined by time it belongs to no admission, so the
prepared cohort must not change."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from data_prep.aux_maps import load_ndc_to_rxcui, load_rxcui_to_atc

NDC_PREFIX = "MEDICATION//NDC//"
PROFILE_EVENTS = {"insurance": "INSURANCE", "marital_status": "MARITAL_STATUS", "race": "RACE"}


def drug_name(ndc: str) -> str:
    return f"Drug {ndc[-6:]} 10 mg/5 mL Soln"


def as_mimic_iv_meds(export: Path, out: Path, release: str, seed: int = 0) -> Path | None:
    """Write ``out`` (data/, metadata/ and aux/ linked from ``export``) in the ETL ``release``'s shape
    ("0.2" or "0.1"); for 0.1, also ``out/mimic/hosp/prescriptions.csv.gz``, whose path is returned."""
    rng = np.random.default_rng(seed)
    events = pq.read_table(export / "data" / "0.parquet").to_pandas()
    is_med = events["code"].str.startswith(NDC_PREFIX)
    meds = events[is_med].reset_index(drop=True)
    rest = events[~is_med].reset_index(drop=True)
    meds["ndc"] = meds["code"].str.slice(len(NDC_PREFIX))
    meds["drug"] = meds["ndc"].map(drug_name)
    admissions = rest[rest["code"].str.startswith("HOSPITAL_ADMISSION")]
    ed_orders = _orders_before_admission(admissions, meds, export / "aux", rng)
    orders = pd.concat([meds[["subject_id", "time", "ndc", "drug", "hadm_id"]], ed_orders], ignore_index=True)
    orders["poe_id"] = orders["subject_id"].astype(str) + "-" + (orders.groupby("subject_id").cumcount() + 1).astype(str)
    no_ndc = admissions[["subject_id", "time", "hadm_id"]].assign(time=admissions["time"] + pd.Timedelta(hours=2), ndc=None, drug="Sodium Chloride 0.9% Flush")
    no_ndc["poe_id"] = no_ndc["subject_id"].astype(str) + "-x" + np.arange(len(no_ndc)).astype(str)
    orders = pd.concat([orders, no_ndc], ignore_index=True)

    integer_ndc = orders["ndc"].map(lambda n: "UNK" if n is None else str(int(n)))
    if release == "0.2":
        start = orders["drug"] + "//" + integer_ndc
        emar = orders[orders["hadm_id"].notna()]
        emar_ndc = integer_ndc[emar.index]
        parts = [
            _events(orders, "MEDICATION//START//" + start, hadm=False),
            _events(orders, "MEDICATION//STOP//" + start, hadm=False, after=pd.Timedelta(days=1)),
            _events(emar, "MEDICATION//" + emar["drug"] + "//Administered//" + emar_ndc, after=pd.Timedelta(hours=1)),
            _events(emar, "MEDICATION//" + emar["drug"] + "//Not Given//" + emar_ndc, after=pd.Timedelta(hours=5)),
            rest.drop(columns=list(PROFILE_EVENTS)),
            *(_events(admissions[admissions[c].notna()], f"{code}//" + admissions[c].dropna()) for c, code in PROFILE_EVENTS.items()),
            _events(admissions, pd.Series("LANGUAGE//ENGLISH", index=admissions.index)),
        ]
        prescriptions = None
    else:
        parts = [
            _events(orders, "MEDICATION//START//" + orders["drug"], hadm=False, poe=True),
            _events(orders, "MEDICATION//STOP//" + orders["drug"], hadm=False, poe=True, after=pd.Timedelta(days=1)),
            _events(orders[orders["hadm_id"].notna()], "MEDICATION//" + orders["drug"] + "//Administered", after=pd.Timedelta(hours=1)),
            rest.assign(language=np.where(rest["code"].str.startswith("HOSPITAL_ADMISSION"), "ENGLISH", None)),
        ]
        prescriptions = _write_prescriptions(orders, out / "mimic" / "hosp" / "prescriptions.csv.gz", rng)
    table = pd.concat(parts, ignore_index=True).sort_values(["subject_id", "time"], na_position="first", kind="stable")
    (out / "data").mkdir(parents=True, exist_ok=True)
    pq.write_table(_arrow(table), out / "data" / "0.parquet")
    for folder in ("metadata", "aux"):
        (out / folder).symlink_to(export / folder)
    return prescriptions


def _events(rows: pd.DataFrame, code: pd.Series, *, hadm: bool = True, poe: bool = False, after: pd.Timedelta = pd.Timedelta(0)) -> pd.DataFrame:
    frame = pd.DataFrame({"subject_id": rows["subject_id"], "time": rows["time"] + after, "code": code.reindex(rows.index), "numeric_value": np.nan})
    frame["hadm_id"] = rows["hadm_id"] if hadm else pd.NA
    if poe:
        frame["poe_id"] = rows["poe_id"]
    return frame


def _orders_before_admission(admissions: pd.DataFrame, meds: pd.DataFrame, aux: Path, rng: np.random.Generator) -> pd.DataFrame:
    """Per admission, an order of a class that admission does not hold, half an hour before it."""
    by_rxcui = load_rxcui_to_atc(aux / "ndc2atc_level4.csv.gz").drop_duplicates("rxcui").set_index("rxcui")["atc3"]
    class_of = {ndc: by_rxcui[rxcui] for ndc, rxcui in load_ndc_to_rxcui(aux / "ndc2RXCUI.txt").items()}
    ndc_of_class = {c: n for n, c in sorted(class_of.items())}
    held = meds.assign(atc3=meds["ndc"].map(class_of)).groupby("hadm_id")["atc3"].agg(set)
    rows = []
    for subject, hadm, time in admissions[["subject_id", "hadm_id", "time"]].itertuples(index=False):
        others = sorted(set(ndc_of_class) - held.get(hadm, set()))
        ndc = ndc_of_class[others[int(rng.integers(len(others)))]]
        rows.append((subject, time - pd.Timedelta(minutes=30), ndc, drug_name(ndc), pd.NA))
    return pd.DataFrame(rows, columns=["subject_id", "time", "ndc", "drug", "hadm_id"])


def _write_prescriptions(orders: pd.DataFrame, path: Path, rng: np.random.Generator) -> Path:
    """MIMIC-IV's prescriptions rows of the orders: MAIN with the NDC as text (0 where it has none), BASE
    rows with NDC 0, ADDITIVE rows of another NDC, and rows without a poe_id."""
    main = pd.DataFrame({"poe_id": orders["poe_id"], "drug_type": "MAIN", "drug": orders["drug"], "ndc": orders["ndc"].fillna("0")})
    some = orders.sample(frac=0.3, random_state=int(rng.integers(1 << 30)))
    base = pd.DataFrame({"poe_id": some["poe_id"], "drug_type": "BASE", "drug": "Sodium Chloride 0.9%", "ndc": "0"})
    additive = pd.DataFrame({"poe_id": some["poe_id"], "drug_type": "ADDITIVE", "drug": "Additive", "ndc": orders["ndc"].dropna().sample(len(some), replace=True, random_state=1).to_numpy()})
    unordered = pd.DataFrame({"poe_id": None, "drug_type": "MAIN", "drug": "Loose", "ndc": orders["ndc"].dropna().iloc[:5].to_numpy()})
    table = pd.concat([main, base, additive, unordered], ignore_index=True).sample(frac=1.0, random_state=2)
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(path, "wt") as fh:
        table.assign(subject_id=table["poe_id"].str.split("-").str[0]).to_csv(fh, index=False)
    return path


def _arrow(frame: pd.DataFrame) -> pa.Table:
    columns = {
        "subject_id": pa.array(frame["subject_id"].to_numpy(), pa.int64()),
        "time": pa.array(frame["time"], pa.timestamp("us")),
        "code": pa.array(frame["code"].to_numpy(), pa.string()),
        "numeric_value": pa.array(frame["numeric_value"].astype("float32"), pa.float32()),
        "hadm_id": pa.array(frame["hadm_id"].astype("Int64"), pa.int64()),
    }
    for name in ("poe_id", "insurance", "marital_status", "race", "language"):
        if name in frame:
            columns[name] = pa.array(frame[name].astype(object).where(frame[name].notna(), None).to_list(), pa.string())
    return pa.table(columns)

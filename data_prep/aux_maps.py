"""The auxiliary mappings the published pipelines use (GAMENet, SafeDrug, MICRON, COGNet, LEADER).

- NDC -> RXCUI (``ndc2RXCUI.txt``, a Python dict literal read with ``ast.literal_eval``, never ``eval``)
  -> ATC level 4 (``ndc2atc_level4.csv[.gz]``, last column ``ATC4`` or ``ATC5``) -> first 4 characters =
  the ATC level-3 class used as the medication vocabulary. Where ``ndc2RXCUI.txt`` has no entry for an
  NDC, the NDC column of ``ndc2atc_level4.csv`` itself (hyphenated, normalised to 11 digits) is the
  fallback. Where an RXCUI or NDC has several rows, the first row in file order wins, as in SafeDrug's
  ``drop_duplicates(subset=["RXCUI"])``.
- ATC names (``atc_coding.csv.gz``), SMILES per ATC3 class (``atc3_smiles.csv``).
- The DDI graph: from raw TWOSIDES (``drug-DDI.csv`` + ``drug-atc.csv``) when given, else from the
  processed pairs ``ddi_atc3_pairs.csv``.

Deliberate difference from GAMENet/SafeDrug ``get_ddi_matrix``: those sort side effects by count in
descending order and then keep ``iloc[-40:]``, i.e. the 40 *least* frequent while calling them "top
40". Here ``side_effects="most-frequent"`` (the default) keeps the K most frequent, and
``side_effects="least-frequent"`` reproduces the published graphs. Ties in the count are broken by the
side-effect id, so the selection is deterministic.
"""

from __future__ import annotations

import ast
import csv
import functools
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from data_prep.tables import DataError, read_header, read_table

SideEffectSelection = Literal["most-frequent", "least-frequent"]
SIDE_EFFECT_SELECTIONS = ("most-frequent", "least-frequent")
ATC_CODE = re.compile(r"^[A-Z]\d\d[A-Z]{0,2}\d{0,2}$")


@dataclass(frozen=True)
class AuxFiles:
    """The auxiliary files of one folder; the TWOSIDES pair is optional (``drug-DDI.csv`` is 230 MB)."""

    ndc_to_rxcui: Path
    rxcui_to_atc: Path
    atc_names: Path | None  # optional: medications are then named "ATC class N02B"
    atc3_smiles: Path
    ddi_pairs: Path | None
    twosides_ddi: Path | None
    twosides_atc: Path | None

    @classmethod
    def locate(cls, folder: str | Path) -> "AuxFiles":
        folder = Path(folder)
        if not folder.is_dir():
            raise DataError(f"{folder}: aux folder not found")

        def first(*names: str, required: bool = True) -> Path | None:
            for name in names:
                if (folder / name).is_file():
                    return folder / name
            if required:
                raise DataError(f"{folder}: missing aux file {' or '.join(names)}")
            return None

        files = cls(
            ndc_to_rxcui=first("ndc2RXCUI.txt"),
            rxcui_to_atc=first("ndc2atc_level4.csv.gz", "ndc2atc_level4.csv"),
            atc_names=first("atc_coding.csv.gz", "atc_coding.csv", required=False),
            atc3_smiles=first("atc3_smiles.csv"),
            ddi_pairs=first("ddi_atc3_pairs.csv", required=False),
            twosides_ddi=first("drug-DDI.csv.gz", "drug-DDI.csv", required=False),
            twosides_atc=first("drug-atc.csv", required=False),
        )
        if files.twosides_ddi and not files.twosides_atc:
            raise DataError(f"{folder}: drug-DDI.csv needs drug-atc.csv beside it to map STITCH ids to ATC")
        if not files.twosides_ddi and not files.ddi_pairs:
            raise DataError(f"{folder}: no DDI source (need drug-DDI.csv + drug-atc.csv, or ddi_atc3_pairs.csv)")
        return files

    def used(self) -> dict[str, Path]:
        """The files a prepare actually reads (the TWOSIDES pair wins over the processed pairs)."""
        used = {"ndc_to_rxcui": self.ndc_to_rxcui, "rxcui_to_atc": self.rxcui_to_atc, "atc3_smiles": self.atc3_smiles}
        if self.atc_names:
            used["atc_names"] = self.atc_names
        if self.twosides_ddi:
            used |= {"twosides_ddi": self.twosides_ddi, "twosides_atc": self.twosides_atc}
        else:
            used["ddi_pairs"] = self.ddi_pairs
        return used


# ----- NDC -> ATC3 -------------------------------------------------------------------------------
def memo_by_file(load):
    """Cache a loader per (path, size, mtime): a process that prepares twice parses each file once."""
    cache: dict[tuple, object] = {}

    @functools.wraps(load)
    def cached(path: str | Path):
        path = Path(path)
        try:
            stat = path.stat()
        except OSError:
            return load(path)  # the loader raises the DataError naming the file
        key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
        if key not in cache:
            cache[key] = load(path)
        return cache[key]

    return cached


@memo_by_file
def load_ndc_to_rxcui(path: str | Path) -> dict[str, str]:
    path = Path(path)
    try:
        mapping = ast.literal_eval(path.read_text())
    except (ValueError, SyntaxError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: not a Python dict literal of NDC -> RXCUI ({type(exc).__name__}: {exc})") from None
    if not isinstance(mapping, dict):
        raise DataError(f"{path}: expected a dict literal of NDC -> RXCUI, got a {type(mapping).__name__}")
    # The published file holds one stray entry ('idx': 4203, a pandas index leak): keep NDC keys only.
    ndcs = {k: str(v).strip() for k, v in mapping.items() if isinstance(k, str) and k.isdigit()}
    if not ndcs:
        raise DataError(f"{path}: no entry maps an NDC (a string of digits) to an RXCUI")
    return {ndc: rxcui for ndc, rxcui in ndcs.items() if rxcui}


def normalise_ndc(hyphenated: pd.Series) -> pd.Series:
    """Hyphenated NDCs (4-4-2, 5-3-2, 5-4-1) -> the 11-digit 5-4-2 form MIMIC writes (NA if malformed).

    Vectorised with pyarrow's regex and padding kernels (300k NDCs in a fraction of a second)."""
    text = pa.array(hyphenated.astype(object).where(hyphenated.notna(), None).tolist(), type=pa.string())
    parts = pc.extract_regex(text, r"^(?P<labeler>\d{1,5})-(?P<product>\d{1,4})-(?P<package>\d{1,2})$")
    padded = [pc.utf8_lpad(parts.field(name), width, padding="0") for name, width in (("labeler", 5), ("product", 4), ("package", 2))]
    eleven = pc.if_else(parts.is_valid(), pc.binary_join_element_wise(*padded, ""), pa.scalar(None, pa.string()))
    return pd.Series(eleven.to_pylist(), index=hyphenated.index, dtype=object)


@memo_by_file
def load_rxcui_to_atc(path: str | Path) -> pd.DataFrame:
    """Rows of (ndc11, rxcui, atc3); the ATC column may be called ATC4 or ATC5."""
    path = Path(path)
    header = read_header(path)
    atc_column = next((c for c in ("atc5", "atc4") if c in header), None)
    if atc_column is None:
        raise DataError(f"{path}: missing column ATC5 or ATC4 (the header has: {', '.join(header)})")
    table = read_table(path, ["ndc", "rxcui", atc_column])
    atc = table[atc_column].str.strip().str.upper()
    bad = atc.dropna()[~atc.dropna().str.fullmatch(ATC_CODE)]
    if len(bad):
        raise DataError(f"{path}: column {atc_column} holds {len(bad):,} values that are not ATC codes (the first on line {int(bad.index[0]) + 2})")
    return pd.DataFrame({"ndc11": normalise_ndc(table["ndc"]), "rxcui": table["rxcui"].str.strip(), "atc3": atc.str[:4]})


@dataclass(frozen=True)
class NdcMapping:
    """ATC3 per prescription row (``pd.NA`` where unmapped), and how much of the input was mapped."""

    atc3: pd.Series
    coverage: dict


def map_ndc_to_atc3(
    ndc: pd.Series,
    ndc_to_rxcui: dict[str, str],
    rxcui_atc: pd.DataFrame,
    *,
    ndc_fallback: bool = True,
    rows: np.ndarray | None = None,
) -> NdcMapping:
    """Map 11-digit NDCs to ATC3 via RXCUI, then (``ndc_fallback``) via the NDC column of the ATC table.

    ``ndc`` may be one value per prescription row, or each distinct NDC once with ``rows`` giving
    how many rows it stands for (the fast path: 15 million rows hold a few thousand NDCs); the
    coverage figures count rows either way."""
    by_rxcui = rxcui_atc.dropna(subset=["rxcui", "atc3"]).drop_duplicates("rxcui").set_index("rxcui")["atc3"]
    via_rxcui = ndc.map(ndc_to_rxcui).map(by_rxcui)
    if ndc_fallback:
        by_ndc = rxcui_atc.dropna(subset=["ndc11", "atc3"]).drop_duplicates("ndc11").set_index("ndc11")["atc3"]
        mapped = via_rxcui.fillna(ndc.map(by_ndc))
    else:
        mapped = via_rxcui
    weight = np.ones(len(ndc), dtype=np.int64) if rows is None else np.asarray(rows, dtype=np.int64)
    present = (ndc.notna() & (ndc != "0")).to_numpy()
    coverage = {
        "prescription_rows": int(weight.sum()),
        "rows_with_ndc": int(weight[present].sum()),
        "rows_mapped_via_rxcui": int(weight[via_rxcui.notna().to_numpy()].sum()),
        "rows_mapped": int(weight[mapped.notna().to_numpy()].sum()),
        "distinct_ndcs": ndc[present].nunique(),
        "distinct_ndcs_mapped_via_rxcui": ndc[via_rxcui.notna()].nunique(),
        "distinct_ndcs_mapped": ndc[mapped.notna()].nunique(),
        "ndc_fallback": ndc_fallback,
    }
    return NdcMapping(mapped, coverage)


# ----- names and SMILES --------------------------------------------------------------------------
def load_atc_names(path: str | Path | None) -> dict[str, str]:
    if path is None:
        return {}
    table = read_table(path, ["atc_code", "atc_name"]).dropna()
    return dict(zip(table["atc_code"].str.strip(), table["atc_name"].str.strip()))


def load_atc3_smiles(path: str | Path) -> dict[str, list[str]]:
    """ATC3 -> SMILES in file order (duplicates dropped)."""
    table = read_table(path, ["atc3", "smiles"]).dropna().drop_duplicates()
    bad = table.loc[~table["atc3"].str.fullmatch(r"[A-Z]\d\d[A-Z]"), "atc3"]
    if len(bad):
        raise DataError(f"{path}: column atc3 holds {len(bad):,} values that are not ATC level-3 codes (the first on line {int(bad.index[0]) + 2})")
    return table.groupby("atc3", sort=False)["smiles"].agg(list).to_dict()


# ----- DDI ---------------------------------------------------------------------------------------
def load_ddi_pairs(path: str | Path) -> set[tuple[str, str]]:
    table = read_table(path, ["atc3_a", "atc3_b"]).dropna()
    return set(zip(table["atc3_a"].str.strip(), table["atc3_b"].str.strip()))


def load_stitch_to_atc3(path: str | Path) -> pd.DataFrame:
    """``drug-atc.csv`` (no header; ``CID...,ATC,ATC,...``) -> long table of (stitch, atc3)."""
    path = Path(path)
    rows = []
    with open(path, newline="") as fh:
        for line_number, fields in enumerate(csv.reader(fh), start=1):
            if not fields:
                continue
            stitch, atcs = fields[0].strip(), [a.strip() for a in fields[1:] if a.strip()]
            if not stitch.startswith("CID") or not atcs or not all(ATC_CODE.fullmatch(a) for a in atcs):
                raise DataError(f"{path}: line {line_number} is not 'CID...,ATC,...' (a STITCH id, then ATC codes; {len(fields)} fields)")
            rows += [(stitch, atc[:4]) for atc in atcs]
    return pd.DataFrame(rows, columns=["stitch", "atc3"]).drop_duplicates()


def twosides_pairs(
    ddi_path: str | Path,
    atc_path: str | Path,
    *,
    top_k: int = 40,
    side_effects: SideEffectSelection = "most-frequent",
) -> set[tuple[str, str]]:
    """ATC3 pairs that interact through one of the K selected TWOSIDES side effects."""
    if side_effects not in SIDE_EFFECT_SELECTIONS:
        raise ValueError(f"side_effects must be one of {SIDE_EFFECT_SELECTIONS}, got {side_effects!r}")
    ddi_path = Path(ddi_path)
    table = _read_twosides(ddi_path)
    counts = (
        table.groupby("effect").size().rename("count").reset_index().sort_values(["count", "effect"], ascending=[False, True])
    )
    chosen = counts.head(top_k) if side_effects == "most-frequent" else counts.tail(top_k)
    pairs = table.loc[table["effect"].isin(chosen["effect"]), ["a", "b"]].drop_duplicates()
    stitch_atc = load_stitch_to_atc3(atc_path)
    linked = pairs.merge(stitch_atc.rename(columns={"stitch": "a", "atc3": "atc3_a"}), on="a").merge(
        stitch_atc.rename(columns={"stitch": "b", "atc3": "atc3_b"}), on="b"
    )
    return set(zip(linked["atc3_a"], linked["atc3_b"]))


def _read_twosides(path: Path) -> pd.DataFrame:
    frame = read_table(path, ["stitch 1", "stitch 2", "polypharmacy side effect"])
    return frame.set_axis(["a", "b", "effect"], axis=1).dropna()


def ddi_adjacency(pairs: set[tuple[str, str]], medication_codes: list[str]) -> np.ndarray:
    """Symmetric 0/1 matrix over the medication vocabulary, zero diagonal; pairs outside it are ignored."""
    index = {code: i for i, code in enumerate(medication_codes)}
    adj = np.zeros((len(medication_codes),) * 2, dtype=np.uint8)
    linked = np.array([(index[a], index[b]) for a, b in pairs if a in index and b in index], dtype=np.int64).reshape(-1, 2)
    adj[linked[:, 0], linked[:, 1]] = 1
    adj[linked[:, 1], linked[:, 0]] = 1
    np.fill_diagonal(adj, 0)
    return adj

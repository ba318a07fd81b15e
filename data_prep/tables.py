"""Robust reading of the source tables (MIMIC and the auxiliary files).

The full MIMIC releases ship upper-case headers and ``.csv.gz``; the demos ship lower-case headers
and ``.csv``. :func:`find_table` accepts either, :func:`read_table` lower-cases headers, reads every
column as a string (so ICD codes keep their leading zeros) and turns every way a file can be bad
into one :class:`DataError` that names the file and what is wrong.
"""

from __future__ import annotations

import re
import zlib
from pathlib import Path
from typing import Iterable

import pandas as pd

# A code written as a number: "4019.0", "250.01" would both mean a spreadsheet or pandas converted it.
NUMERIC_CODE = re.compile(r"^\d+\.\d+$")
READ_ERRORS = (EOFError, OSError, zlib.error, UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError)


class DataError(ValueError):
    """Bad input data: one message naming the file (and column or code) and what is wrong."""


def find_table(root: str | Path, name: str) -> Path:
    """``root/name.csv`` or ``root/name.csv.gz``, whatever the case of the file name."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: not a folder (expected the folder holding {name}.csv or {name}.csv.gz)")
    wanted = {f"{name}.csv".lower(), f"{name}.csv.gz".lower()}
    found = sorted(p for p in root.iterdir() if p.name.lower() in wanted)
    if not found:
        raise DataError(f"{root}: missing table {name} (looked for {name}.csv or {name}.csv.gz, any case)")
    return found[0]


def read_table(path: str | Path, columns: Iterable[str], *, code_columns: Iterable[str] = ()) -> pd.DataFrame:
    """Read ``columns`` (lower-case names, headers matched case-insensitively) as strings.

    Empty cells become ``pd.NA``. ``code_columns`` are checked for codes written as numbers.
    """
    path = Path(path)
    columns = list(columns)
    wanted = set(columns)
    try:
        frame = pd.read_csv(
            path,
            usecols=lambda header: header.strip().lower() in wanted,
            dtype=str,
            keep_default_na=False,
            na_values=[""],
            compression="infer",
        )
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except READ_ERRORS as exc:
        raise DataError(f"{path}: unreadable or truncated file ({type(exc).__name__}: {exc})") from None
    frame.columns = [c.strip().lower() for c in frame.columns]
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise DataError(f"{path}: missing column(s) {', '.join(missing)} (the header has: {', '.join(read_header(path))})")
    for column in code_columns:
        check_codes_are_strings(frame[column], path, column)
    return frame[columns]


def check_codes_are_strings(values: pd.Series, path: str | Path, column: str) -> None:
    """Fail on codes that a spreadsheet or a float conversion mangled (``4019.0``; leading zeros lost)."""
    numeric = values.dropna().astype(str)
    numeric = numeric[numeric.str.fullmatch(NUMERIC_CODE)]
    if len(numeric):
        examples = ", ".join(repr(v) for v in numeric.unique()[:3])
        raise DataError(
            f"{path}: column {column} holds codes written as numbers ({examples}, {len(numeric)} rows); "
            "codes must be text exactly as the source writes them (no decimal point, leading zeros kept) - "
            "re-export the table without converting codes to numbers"
        )


def read_header(path: str | Path) -> list[str]:
    """The lower-cased column names of a table."""
    try:
        return [c.strip().lower() for c in pd.read_csv(path, nrows=0).columns]
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except READ_ERRORS as exc:
        raise DataError(f"{path}: unreadable or truncated file ({type(exc).__name__}: {exc})") from None

"""Robust reading of the source tables (MIMIC and the auxiliary files).

The full MIMIC releases ship upper-case headers and ``.csv.gz``; the demos ship lower-case headers
and ``.csv``. :func:`find_table` accepts either. Both readers match headers case-insensitively, read
every column as a string (so ICD codes keep their leading zeros) and turn every way a file can be bad
into one :class:`DataError` that names the file and what is wrong:

- :func:`read_table` gives a pandas frame, for the small tables (admissions, patients, aux files);
- :func:`read_encoded` streams a large event table (15 million prescription rows) through pyarrow's
  CSV reader in blocks and keeps each column dictionary-encoded: an int32 id per row into the
  column's distinct values (or int64 nanoseconds for a time column). Memory is a few bytes per row,
  and anything done per value (mapping an NDC, stripping a code) is done once per distinct value.
"""

from __future__ import annotations

import re
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

# A code written as a number: "4019.0", "250.01" would both mean a spreadsheet or pandas converted it.
NUMERIC_CODE = re.compile(r"^\d+\.\d+$")
READ_ERRORS = (EOFError, OSError, zlib.error, UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError, pa.ArrowException)
BLOCK_BYTES = 16 << 20  # pyarrow CSV block: a few hundred thousand rows per batch
NO_TIME = np.iinfo(np.int64).min  # an empty or unparsable time


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
        raise unreadable(path, exc) from None
    frame.columns = [c.strip().lower() for c in frame.columns]
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise DataError(f"{path}: missing column(s) {', '.join(missing)} (the header has: {', '.join(read_header(path))})")
    for column in code_columns:
        row_ids, values = pd.factorize(frame[column])
        check_codes_are_strings(list(values), row_ids, path, column)
    return frame[columns]


def check_codes_are_strings(values: list, row_ids: np.ndarray, path: str | Path, column: str) -> None:
    """Fail on codes that a spreadsheet or a float conversion mangled (``4019.0``; leading zeros lost).

    ``values`` are a column's distinct values, ``row_ids`` each data row's index into them (-1: empty).
    The message gives rows and a line number, never a value of the file."""
    numeric = [i for i, v in enumerate(values) if isinstance(v, str) and NUMERIC_CODE.fullmatch(v)]
    if numeric:
        rows = np.flatnonzero(np.isin(row_ids, numeric))
        raise DataError(
            f"{path}: column {column} holds codes written as numbers (digits, a decimal point, digits: {len(rows):,} rows, the first "
            f"on line {int(rows[0]) + 2}); codes must be text exactly as the source writes them (no decimal point, leading zeros kept) - "
            "re-export the table without converting codes to numbers"
        )


def first_line(rows: np.ndarray) -> int:
    """The file line of the first ``True`` data row (line 1 is the header)."""
    return int(np.argmax(rows)) + 2


class EncodedColumn:
    """One column as ``ids`` (int32 per row, -1 for an empty cell) into ``values`` (distinct strings,
    in order of first appearance)."""

    def __init__(self) -> None:
        self._index: dict[str, int] = {}
        self._parts: list[np.ndarray] = []

    def add(self, column: pa.ChunkedArray | pa.Array) -> None:
        encoded = pc.dictionary_encode(column)
        chunks = encoded.chunks if isinstance(encoded, pa.ChunkedArray) else [encoded]
        for chunk in chunks:
            remap = np.fromiter(
                (self._index.setdefault(v, len(self._index)) for v in chunk.dictionary.to_pylist()), dtype=np.int32, count=len(chunk.dictionary)
            )
            remap = np.append(remap, np.int32(-1))
            indices = pc.fill_null(chunk.indices, len(chunk.dictionary)).to_numpy(zero_copy_only=False)
            self._parts.append(remap[indices])

    def finish(self) -> tuple[np.ndarray, list[str]]:
        ids = np.concatenate(self._parts) if self._parts else np.zeros(0, dtype=np.int32)
        return ids, list(self._index)


@dataclass
class EncodedTable:
    """The columns of :func:`read_encoded`: ids + distinct values, or parsed times."""

    path: Path
    ids: dict[str, np.ndarray]
    values: dict[str, list[str]]
    times: dict[str, np.ndarray]  # int64 nanoseconds, NO_TIME where empty or unparsable
    bad_times: dict[str, dict[int, str]]  # column -> row -> the text that is not a date-time

    def __len__(self) -> int:
        first = next(iter(self.ids.values()), None) if self.ids else next(iter(self.times.values()))
        return len(first)

    def counts(self, column: str) -> np.ndarray:
        """Rows per distinct value of ``column``."""
        ids = self.ids[column]
        return np.bincount(ids[ids >= 0], minlength=len(self.values[column]))


def read_encoded(
    path: str | Path, columns: Iterable[str], *, time_columns: Iterable[str] = (), code_columns: Iterable[str] = ()
) -> EncodedTable:
    """Stream ``columns`` (lower-case names, headers matched case-insensitively) of a large table.

    ``time_columns`` are parsed to nanoseconds (ISO 8601, as pandas parses them); a value that does
    not parse is remembered in ``bad_times`` so the caller can fail on the rows it actually uses.
    ``code_columns`` are checked for codes written as numbers.
    """
    path = Path(path)
    columns, time_columns = list(columns), list(time_columns)
    header = read_header(path)
    missing = [c for c in columns + time_columns if c not in header]
    if missing:
        raise DataError(f"{path}: missing column(s) {', '.join(missing)} (the header has: {', '.join(header)})")
    raw_names = _raw_header(path)
    by_name = {name: raw_names[header.index(name)] for name in columns + time_columns}
    encoded = {name: EncodedColumn() for name in columns}
    times: dict[str, list[np.ndarray]] = {name: [] for name in time_columns}
    bad: dict[str, dict[int, str]] = {name: {} for name in time_columns}
    try:
        reader = pacsv.open_csv(
            path,
            read_options=pacsv.ReadOptions(block_size=BLOCK_BYTES),
            convert_options=pacsv.ConvertOptions(
                include_columns=list(by_name.values()),
                column_types={raw: pa.string() for raw in by_name.values()},
                strings_can_be_null=True,
                null_values=[""],
                quoted_strings_can_be_null=True,
            ),
        )
        row = 0
        for batch in reader:
            for name in columns:
                encoded[name].add(batch.column(by_name[name]))
            for name in time_columns:
                times[name].append(_parse_time_batch(batch.column(by_name[name]), row, bad[name]))
            row += batch.num_rows
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except READ_ERRORS as exc:
        raise unreadable(path, exc) from None
    ids, values = {}, {}
    for name, column in encoded.items():
        ids[name], values[name] = column.finish()
    table = EncodedTable(path, ids, values, {n: np.concatenate(t) if t else np.zeros(0, np.int64) for n, t in times.items()}, bad)
    for name in code_columns:
        check_codes_are_strings(values[name], ids[name], path, name)
    return table


def _parse_time_batch(column: pa.Array, first_row: int, bad: dict[int, str]) -> np.ndarray:
    """Nanoseconds since the epoch; pyarrow's cast when every value is plain ISO 8601, else pandas."""
    try:
        parsed = pc.cast(column, pa.timestamp("ns")).to_numpy(zero_copy_only=False)
        return np.where(np.isnat(parsed), NO_TIME, parsed.astype(np.int64))
    except pa.ArrowException:
        text = pd.Series(column.to_numpy(zero_copy_only=False), dtype=object)
        parsed = pd.to_datetime(text, errors="coerce", format="ISO8601")
        for i in np.flatnonzero((text.notna() & parsed.isna()).to_numpy()).tolist():
            bad[first_row + i] = text.iloc[i]
        return np.where(parsed.isna().to_numpy(), NO_TIME, parsed.to_numpy().astype("datetime64[ns]").astype(np.int64))


def read_header(path: str | Path) -> list[str]:
    """The lower-cased column names of a table."""
    return [c.strip().lower() for c in _raw_header(path)]


def _raw_header(path: str | Path) -> list[str]:
    try:
        return list(pd.read_csv(path, nrows=0).columns)
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except READ_ERRORS as exc:
        raise unreadable(path, exc) from None


def unreadable(path: Path, error: BaseException) -> DataError:
    """One line for a file that does not parse, naming the file and, for a row with the wrong number of
    fields, its line and column counts; never a value of the file (pyarrow's parse error quotes the whole
    row: ids of credentialed data)."""
    if isinstance(error, pa.ArrowException):
        bad = _first_bad_row(path) if "Expected" in str(error) else None
        if bad is not None:
            expected, actual, line = bad
            where = f"line {line}" if line is not None else "a row"
            return DataError(f"{path}: {where} has {actual} columns where the header has {expected}: a truncated or malformed file; "
                             "download or export it again")
    return DataError(f"{path}: unreadable or truncated file ({describe_read_error(error)})")


def describe_read_error(error: BaseException) -> str:
    """The error's type and what it says, less any data it quotes: of a pyarrow error only its category
    ("CSV parse error", "Empty CSV file": the text before the first colon, which quotes rows after it);
    decompression, encoding and pandas' tokenizer errors name positions and counts, not values."""
    text = str(error).splitlines()[0] if str(error) else ""
    if isinstance(error, pa.ArrowException):
        text = text.split(":")[0]
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def _first_bad_row(path: Path) -> tuple[int, int, int | None] | None:
    """(columns expected, columns found, line) of the first row whose field count differs from the header's:
    read again in one thread, the only way pyarrow numbers rows (on the error path only)."""
    found: list[tuple[int, int, int | None]] = []

    def record(row) -> str:
        found.append((row.expected_columns, row.actual_columns, row.number))
        return "error"

    try:
        for _ in pacsv.open_csv(path, read_options=pacsv.ReadOptions(use_threads=False, block_size=BLOCK_BYTES),
                                parse_options=pacsv.ParseOptions(invalid_row_handler=record)):
            pass
    except READ_ERRORS:
        pass
    return found[0] if found else None

"""CSV files -> typed columns, with errors that name the file, the column and the row.

A file whose values are all numbers takes numpy's C parser (fast, little memory); any
other file goes through the csv module, which also pinpoints what is wrong. Row numbers
count data rows from 1 (the header is line 1, so row N is on line N + 1).
"""

from __future__ import annotations

import csv
import io
import math
import warnings
from dataclasses import dataclass

import numpy as np

from trainer.errors import DataError

# A text column where at least this share of values are numbers is a numeric column with
# bad values, not a categorical one (force categorical with --categorical).
NUMERIC_MAJORITY = 0.5


@dataclass(frozen=True)
class Column:
    """One column of one file: float64 numbers, or text (a numpy str array)."""

    values: np.ndarray

    @property
    def numeric(self) -> bool:
        return bool(self.values.dtype.kind == "f")


@dataclass(frozen=True)
class CsvFile:
    uri: str
    header: tuple[str, ...]
    columns: dict[str, Column]
    rows: int


def parse_csv(uri: str, data: bytes, text_columns: frozenset[str] = frozenset()) -> CsvFile:
    """Parse one CSV file; `text_columns` are kept as text even when they hold numbers."""
    if not data.strip():
        raise DataError(f"data file {uri} is empty")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise DataError(f"data file {uri} is not UTF-8 text (byte {err.start})") from err
    first_line = text.split("\n", 1)[0]
    header = tuple(h.strip() for h in next(csv.reader([first_line])))
    _check_header(uri, header)
    if not text_columns & set(header):
        fast = _parse_numeric(text, len(header))
        if fast is not None:
            return _checked(uri, header, {h: Column(fast[:, i]) for i, h in enumerate(header)})
    return _parse_mixed(uri, header, text, text_columns)


def _check_header(uri: str, header: tuple[str, ...]) -> None:
    seen: set[str] = set()
    for position, name in enumerate(header, start=1):
        if not name:
            raise DataError(f"data file {uri} has an empty column name at position {position}")
        if name in seen:
            raise DataError(f"data file {uri} has column {name!r} twice")
        seen.add(name)


def _parse_numeric(text: str, width: int) -> np.ndarray | None:
    """All-number files, parsed in C; None when anything is not a plain number."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "no data": a header-only file
            array = np.loadtxt(
                io.StringIO(text),
                delimiter=",",
                skiprows=1,
                dtype=np.float64,
                ndmin=2,
                quotechar='"',
                encoding=None,
            )
    except ValueError:
        return None
    if array.shape[0] and array.shape[1] != width:
        return None
    return array.reshape(-1, width)


def _parse_mixed(
    uri: str, header: tuple[str, ...], text: str, text_columns: frozenset[str]
) -> CsvFile:
    width = len(header)
    cells: list[list[str]] = []
    reader = csv.reader(io.StringIO(text))
    next(reader)
    for row_number, row in enumerate(reader, start=1):
        if not row:  # blank line
            continue
        if len(row) != width:
            raise DataError(
                f"data file {uri} row {row_number} has {len(row)} fields, the header has {width}"
            )
        cells.append(row)
    by_column = list(zip(*cells, strict=True)) if cells else [()] * width
    columns: dict[str, Column] = {}
    for name, raw in zip(header, by_column, strict=True):
        strings = np.array([s.strip() for s in raw], dtype=str)
        columns[name] = (
            Column(strings) if name in text_columns else _numeric_or_text(uri, name, strings)
        )
    return _checked(uri, header, columns)


def _numeric_or_text(uri: str, name: str, strings: np.ndarray) -> Column:
    numbers = np.full(strings.shape, np.nan)
    bad: list[int] = []
    for i, s in enumerate(strings):
        try:
            numbers[i] = float(s)
        except ValueError:
            bad.append(i)
    if not bad:
        return Column(numbers)
    if len(strings) - len(bad) >= NUMERIC_MAJORITY * len(strings):
        row = bad[0]
        what = "is empty" if not strings[row] else f"holds {str(strings[row])!r}, not a number"
        raise DataError(f"data file {uri} column {name!r} row {row + 1} {what}")
    return Column(strings)


def _checked(uri: str, header: tuple[str, ...], columns: dict[str, Column]) -> CsvFile:
    rows = 0
    for name in header:
        column = columns[name]
        rows = len(column.values)
        if column.numeric:
            finite = np.isfinite(column.values)
            if not finite.all():
                row = int(np.argmin(finite))
                value = column.values[row]
                what = "NaN" if math.isnan(value) else "infinite"
                raise DataError(f"data file {uri} column {name!r} row {row + 1} is {what}")
    return CsvFile(uri=uri, header=header, columns=columns, rows=rows)

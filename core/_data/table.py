"""Tables: CSV (built in), Parquet (pyarrow) and pandas DataFrames, whole or in chunks.

A :class:`Table` is a set of equally long columns (numpy arrays, values as found in the source:
CSV gives text, Parquet and DataFrames give typed values) with the 1-based row number each row
had in its source, so every message about a value can name the row where the user will find it.
Relative file paths in a table are resolved against ``base_dir``, the table file's folder.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .._errors import DataError

CSV_SUFFIXES = {".csv": ",", ".tsv": "\t"}
PARQUET_SUFFIXES = (".parquet", ".pq")


@dataclass
class Table:
    """Columns of equal length, with each row's number in the source (1-based, header excluded).

    ``columns[name]`` is a numpy array of the column's values as the source holds them: text
    (an object array) from a CSV file, typed values from Parquet or a DataFrame, whole arrays
    in the cells of a DataFrame or dict column. Relative file paths in a table are relative to
    ``base_dir`` (the table file's folder). :meth:`where` names a row for a message.
    """

    columns: dict[str, np.ndarray]
    rows: np.ndarray  # int64 row numbers
    source: str = "<table>"
    base_dir: Path = field(default_factory=Path.cwd)

    @classmethod
    def from_columns(cls, columns: Mapping[str, Sequence[Any]], *, source: str = "<table>",
                     base_dir: str | Path | None = None) -> Table:
        """A table of ``columns`` (name -> values), rows numbered from 1, e.g. to test a codec."""
        return _from_mapping(columns, source, Path(base_dir) if base_dir is not None else Path.cwd())

    def __len__(self) -> int:
        return int(self.rows.shape[0])

    @property
    def names(self) -> list[str]:
        """The column names, in the source's order."""
        return list(self.columns)

    def take(self, positions: Sequence[int] | np.ndarray) -> Table:
        """The rows at ``positions`` (0-based positions in this table), in that order."""
        index = np.asarray(positions, dtype=np.int64)
        return Table({k: v[index] for k, v in self.columns.items()}, self.rows[index],
                     self.source, self.base_dir)

    def where(self, position: int) -> str:
        """``data.csv row 7``: where the user finds the row at 0-based ``position``."""
        return f"{self.source} row {int(self.rows[position])}"


#: Texts that stand for a missing value (as in most CSV exports).
MISSING_TEXTS = frozenset({"", "nan", "NaN", "NAN", "NA", "N/A", "n/a", "null", "NULL", "None"})


def is_missing(value: Any) -> bool:
    """Empty text (or a text in MISSING_TEXTS), None and NaN are missing values."""
    if value is None:
        return True
    if isinstance(value, str):
        return value.strip() in MISSING_TEXTS
    if isinstance(value, float):
        return math.isnan(value)
    if isinstance(value, np.floating):
        return bool(np.isnan(value))
    return False


def _object_array(values: list[Any]) -> np.ndarray:
    out = np.empty(len(values), dtype=object)
    for i, value in enumerate(values):  # one by one: arrays in cells stay whole
        out[i] = value
    return out


def _is_array(value: Any) -> bool:
    """Whether a cell holds an array itself (a numpy array or tensor), kept whole in its cell."""
    return isinstance(value, np.ndarray) or hasattr(value, "detach")


def _from_mapping(data: Mapping[str, Sequence[Any]], source: str, base_dir: Path,
                  first_row: int = 1) -> Table:
    columns: dict[str, np.ndarray] = {}
    length: int | None = None
    for name, values in data.items():
        if isinstance(values, (list, tuple)) and values and _is_array(values[0]):
            array = _object_array(list(values))  # arrays (images) in cells: no stacked copy
        elif isinstance(values, (list, tuple)) and _mixes_booleans(values):
            array = _object_array(list(values))  # true/false kept as such, not cast to 1.0
        else:
            array = np.asarray(values)
        if array.ndim != 1:
            array = _object_array(list(values))
        elif array.dtype.kind in "US":
            array = array.astype(object)  # Python strings, as a CSV file gives: messages show '7'
        if length is not None and array.shape[0] != length:
            raise DataError(f"{source}: column {name!r} has {array.shape[0]} values,"
                            f" the others {length}")
        length = array.shape[0]
        columns[str(name)] = array
    rows = np.arange(first_row, first_row + (length or 0), dtype=np.int64)
    return Table(columns, rows, source, base_dir)


def _mixes_booleans(values: Sequence[Any]) -> bool:
    """Whether ``values`` holds true/false beside other values (rows sent as JSON): numpy would
    make them 1.0 and 0.0, or the text 'True', and a codec could not tell them apart."""
    booleans = sum(isinstance(v, (bool, np.bool_)) for v in values)
    return 0 < booleans < len(values)


def _is_dataframe(obj: Any) -> bool:
    # Duck-typed so that pandas is imported only by the user who passes a DataFrame.
    return hasattr(obj, "columns") and hasattr(obj, "iloc") and hasattr(obj, "to_numpy")


def _dataframe_table(frame: Any, first_row: int = 1) -> Table:
    columns = {str(c): frame[c].to_numpy() for c in frame.columns}
    if len(columns) != len(frame.columns):
        raise DataError("<DataFrame>: column names repeat")
    return _from_mapping(columns, "<DataFrame>", Path.cwd(), first_row)


def _csv_header(reader: Any, path: Path) -> list[str]:
    try:
        header = next(reader)
    except StopIteration:
        raise DataError(f"{path}: the file is empty (a CSV table needs a header row)") from None
    header = [h.strip() for h in header]
    seen: set[str] = set()
    for i, name in enumerate(header):
        if not name:
            raise DataError(f"{path}: column {i + 1} of the header has no name")
        if name in seen:
            raise DataError(f"{path}: column {name!r} appears twice in the header")
        seen.add(name)
    return header


class _Utf8Lines:
    """The lines of a binary file decoded one at a time, so that a byte that is not UTF-8 is
    reported on its own line (a text file decodes ahead, in blocks, and loses the place)."""

    def __init__(self, handle: Any, path: Path):
        self.handle, self.path, self.line = handle, path, 0

    def __iter__(self) -> Iterator[str]:
        for raw in self.handle:
            self.line += 1
            try:
                text = raw.decode("utf-8-sig" if self.line == 1 else "utf-8")
            except UnicodeDecodeError as exc:
                raise DataError(
                    f"{self.path} line {self.line}: not UTF-8 text (byte 0x{raw[exc.start]:02x}"
                    f" at position {exc.start + 1}); save the table as UTF-8") from None
            yield text


def _csv_chunks(path: Path, chunk_rows: int) -> Iterator[Table]:
    delimiter = CSV_SUFFIXES.get(path.suffix.lower(), ",")
    try:
        handle = path.open("rb")
    except OSError as exc:
        raise DataError(f"{path}: cannot open the table ({exc.strerror or exc})") from None
    with handle:
        lines = _Utf8Lines(handle, path)
        reader = csv.reader(lines, delimiter=delimiter)
        try:
            header = _csv_header(reader, path)
            buffer: list[list[str]] = []
            first = 1
            for record in reader:
                if not record:
                    continue  # blank line
                if len(record) != len(header):
                    raise DataError(
                        f"{path} row {first + len(buffer)} (line {reader.line_num}): has"
                        f" {len(record)} fields, the header has {len(header)}")
                buffer.append(record)
                if len(buffer) == chunk_rows:
                    yield _csv_table(header, buffer, path, first)
                    first += len(buffer)
                    buffer = []
            if buffer or first == 1:
                yield _csv_table(header, buffer, path, first)
        except csv.Error as exc:
            raise DataError(f"{path} line {reader.line_num}: not a readable CSV file ({exc})") from None


def _csv_table(header: list[str], records: list[list[str]], path: Path, first_row: int) -> Table:
    columns = {name: _object_array([r[i] for r in records]) for i, name in enumerate(header)}
    rows = np.arange(first_row, first_row + len(records), dtype=np.int64)
    return Table(columns, rows, str(path), path.parent)


def _parquet_chunks(path: Path, chunk_rows: int) -> Iterator[Table]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise DataError(f"{path}: reading Parquet needs pyarrow: pip install 'polymodal[parquet]'") from None
    try:
        parquet = pq.ParquetFile(str(path))
    except Exception as exc:  # noqa: BLE001 - pyarrow raises several kinds for bad files
        raise DataError(f"{path}: not a readable Parquet file ({exc})") from None
    first = 1
    empty = True
    for batch in parquet.iter_batches(batch_size=chunk_rows):
        data = {name: batch.column(i).to_numpy(zero_copy_only=False)
                for i, name in enumerate(batch.schema.names)}
        table = _from_mapping(data, str(path), path.parent, first)
        first += len(table)
        empty = False
        yield table
    if empty:
        names = parquet.schema_arrow.names
        yield Table({n: _object_array([]) for n in names}, np.zeros(0, np.int64), str(path), path.parent)


def iter_table(source: Any, chunk_rows: int = 4096) -> Iterator[Table]:
    """The rows of ``source`` in chunks of at most ``chunk_rows``: a table larger than memory
    is read a chunk at a time (CSV and Parquet files)."""
    if isinstance(source, Table):
        for start in range(0, max(len(source), 1), chunk_rows):
            yield source.take(np.arange(start, min(start + chunk_rows, len(source))))
        return
    if _is_dataframe(source):
        for start in range(0, max(len(source), 1), chunk_rows):
            yield _dataframe_table(source.iloc[start:start + chunk_rows], first_row=start + 1)
        return
    if isinstance(source, Mapping):
        table = _from_mapping(source, "<table>", Path.cwd())
        yield from iter_table(table, chunk_rows)
        return
    if not isinstance(source, (str, Path)):
        raise DataError(f"a table is a CSV or Parquet file path, a pandas DataFrame or a dict of"
                        f" columns, not {type(source).__name__}")
    path = Path(source)
    if not path.is_file():
        raise DataError(f"{path}: no such table file")
    suffix = path.suffix.lower()
    if suffix in CSV_SUFFIXES:
        yield from _csv_chunks(path, chunk_rows)
    elif suffix in PARQUET_SUFFIXES:
        yield from _parquet_chunks(path, chunk_rows)
    else:
        raise DataError(f"{path}: unknown table type {path.suffix!r}; use .csv, .tsv or .parquet")


def read_table(source: Any) -> Table:
    """The whole table ``source`` in memory (training needs every row's values to fit on)."""
    if isinstance(source, Table):
        return source
    chunks = list(iter_table(source, chunk_rows=1 << 20))
    if len(chunks) == 1:
        return chunks[0]
    first = chunks[0]
    columns = {n: np.concatenate([c.columns[n] for c in chunks]) for n in first.columns}
    rows = np.concatenate([c.rows for c in chunks])
    return Table(columns, rows, first.source, first.base_dir)

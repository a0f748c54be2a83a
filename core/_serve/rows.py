"""The rows of one request, as a table the model's codecs read.

A request sends rows of cells (column -> value), as ``predict`` reads a table. A cell of a
column whose codec reads files (:attr:`Codec.reads_files`, the image adapter's) holds either the
file's bytes, ``{"base64": "..."}`` or a multipart file part, or, only when the server was
started with ``--data-root``, a path inside that folder. Sent bytes are written to the server
process's private folder (mode 0700), under a name of their own, and the codec is given their
path, so an uploaded image is read by the
same code and within the same limits (pixels checked from the header) as a file of a table.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
import shutil
import tempfile
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .._errors import PolymodalError
from .._training.inference import BAD_ROW_POLICIES
from .limits import BAD_REQUEST, FORBIDDEN, TOO_LARGE, UNPROCESSABLE, ClientError, Limits

#: Suffixes of the file types known from their first bytes.
_SIGNATURES = ((b"\x89PNG\r\n\x1a\n", ".png"), (b"\xff\xd8\xff", ".jpg"), (b"II*\x00", ".tif"),
               (b"MM\x00*", ".tif"), (b"\x93NUMPY", ".npy"))
_SUFFIX = re.compile(r"\.[A-Za-z0-9]{1,8}$")
#: The largest sent file read on arrival (its codec's ``read_sent``), in the HTTP process: a
#: larger one is written and read in the model process, since decoding it in the event loop
#: would hold up every request being read meanwhile.
READ_ON_ARRIVAL_BYTES = 1 << 20
#: A multipart file part's name: ``COLUMN`` (row 1) or ``COLUMN[ROW]`` (rows from 1).
PART_NAME = re.compile(r"^(?P<column>.+?)(?:\[(?P<row>\d{1,9})\])?$")


@dataclass
class RequestRows:
    """The columns of a request's rows (only those the model reads), what ``on_bad_row`` says of its bad rows, and
    the files it sent, written for the codec (removed by :meth:`close`)."""

    columns: dict[str, list[Any]]
    #: each row's number in the request (from 1; rows skipped here are left out)
    numbers: list[int] = field(default_factory=list)
    on_bad_row: str = "fail"
    #: the files this request sent, written for the codec (removed by :meth:`close`)
    written: list[Path] = field(default_factory=list)
    #: how messages name each written file: its path -> the name it was sent with
    names: dict[str, str] = field(default_factory=dict)
    files: int = 0
    #: rows left out before reaching the model (``skip``): row, column and message
    skipped: list[dict[str, Any]] = field(default_factory=list)
    #: what was tolerated in the rows as sent (a key the model does not read, a column some
    #: rows leave out), counted in rows, beside the notes predicting gives
    notes: dict[str, int] = field(default_factory=dict)

    @property
    def count(self) -> int:
        return len(self.numbers)

    def parts(self, size: int) -> list[RequestRows]:
        """The rows in parts of at most ``size`` rows, in order (the first holds the rows
        skipped while reading); this request still owns, and closes, the written files."""
        if self.count <= size:
            return [self]
        return [RequestRows({c: values[start:start + size] for c, values in self.columns.items()},
                            self.numbers[start:start + size], self.on_bad_row, names=self.names,
                            skipped=self.skipped if start == 0 else [])
                for start in range(0, self.count, size)]

    def close(self) -> None:
        for path in self.written:
            path.unlink(missing_ok=True)
        self.written.clear()


@dataclass(frozen=True)
class Columns:
    """The columns the model's inputs read, and which of them hold file paths."""

    read: tuple[str, ...]
    files: frozenset[str]
    #: how a file sent for a column is read on arrival (its codec's ``read_sent``), for the
    #: file columns one codec reads
    readers: Mapping[str, Callable[[bytes, str], Any]] = field(default_factory=dict)


def _sniffed(data: bytes, filename: str | None) -> str | None:
    """The suffix a sent file is written with, for a codec that reads it by its path: a known
    file type's (by its first bytes), else the sent name's; None where neither says."""
    for signature, suffix in _SIGNATURES:
        if data.startswith(signature):
            return suffix
    found = _SUFFIX.search(filename or "")
    return found.group(0).lower() if found else None


class RowBuilder:
    """Turns a request's body (parsed JSON, and multipart parts) into :class:`RequestRows`."""

    def __init__(self, columns: Columns, limits: Limits, data_root: Path | None):
        self.columns = columns
        self.limits = limits
        self.data_root = data_root.resolve() if data_root is not None else None
        self._folder: Path | None = None

    @property
    def folder(self) -> Path:
        """The process's private folder (mode 0700) of the files requests send: in memory
        (/dev/shm) where the system has it, as a request's files are read at once."""
        if self._folder is None:
            memory = Path("/dev/shm")
            where = str(memory) if memory.is_dir() and os.access(memory, os.W_OK) else None
            self._folder = Path(tempfile.mkdtemp(prefix="polymodal-serve-", dir=where))
        return self._folder

    def close(self) -> None:
        """Remove the folder of sent files (at shutdown)."""
        if self._folder is not None:
            shutil.rmtree(self._folder, ignore_errors=True)
            self._folder = None

    def build(self, body: Any, parts: Mapping[str, tuple[bytes, str | None]] | None = None) -> RequestRows:
        """The rows of ``body`` (``{"rows": [...], "on_bad_row": ...}``) with the file
        ``parts`` (part name -> bytes and file name) placed in their cells."""
        rows, on_bad_row = self._rows(body, parts or {})
        request = RequestRows({c: [] for c in self.columns.read}, on_bad_row=on_bad_row)
        try:
            self._place_parts(rows, parts or {})
            sent = [c for c in self.columns.read if any(c in row for row in rows)]
            request.notes = self._key_notes(rows, sent)
            for index, row in enumerate(rows, start=1):
                try:
                    cells = {c: self._cell(request, index, c, row.get(c)) for c in sent}
                except ClientError as exc:
                    if on_bad_row != "skip" or exc.row is None or exc.status == TOO_LARGE:
                        raise
                    request.skipped.append({"row": exc.row, "column": exc.column,
                                            "message": exc.message})
                    continue
                request.numbers.append(index)
                for column, value in cells.items():
                    request.columns[column].append(value)
            for column in [c for c in self.columns.read if c not in sent]:
                del request.columns[column]  # a column no row sends: the table lacks it
        except BaseException:
            request.close()
            raise
        return request

    def _key_notes(self, rows: list[dict[str, Any]], sent: list[str]) -> dict[str, int]:
        """Rows with keys the model does not read (a misspelt column is one), and rows that
        leave out a column other rows send (read as an empty cell, as null is)."""
        read = set(self.columns.read)
        notes = {}
        for key in sorted({k for row in rows for k in row} - read):
            notes[f"column {key!r} is not one the model reads: ignored"] = sum(key in r for r in rows)
        for column in sent:
            lacking = sum(column not in row for row in rows)
            if lacking:
                notes[f"no key for column {column!r}: read as an empty cell"] = lacking
        return notes

    def _rows(self, body: Any, parts: Mapping[str, Any]) -> tuple[list[dict[str, Any]], str]:
        if not isinstance(body, dict):
            raise ClientError(BAD_REQUEST, 'the body is not a JSON object: send {"rows": [{column:'
                              ' value, ...}, ...]}')
        unknown = sorted(set(body) - {"rows", "on_bad_row"})
        if unknown:
            raise ClientError(BAD_REQUEST, f"unknown field(s) {', '.join(map(repr, unknown))} in"
                              " the body; it takes rows and on_bad_row")
        on_bad_row = body.get("on_bad_row", "fail")
        if on_bad_row not in BAD_ROW_POLICIES:
            raise ClientError(BAD_REQUEST, f"on_bad_row is {on_bad_row!r}; use"
                              f" {' or '.join(BAD_ROW_POLICIES)}")
        if "rows" not in body and not parts:
            raise ClientError(BAD_REQUEST, 'the body has no rows: send {"rows": [{column: value,'
                              ' ...}, ...]}')
        rows = body.get("rows", [])
        if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
            raise ClientError(BAD_REQUEST, "rows must be a list of objects (column -> value)")
        wanted = max([len(rows), *(self._part_row(name) for name in parts)])
        if "rows" in body and wanted > len(rows):  # the rows are given: a part is one of them
            beyond = next(n for n in parts if self._part_row(n) > len(rows))
            raise ClientError(BAD_REQUEST, f"file part {beyond!r} is for row {wanted}, but the"
                              f" request's rows are {len(rows)}: name a part after a row the"
                              " request holds (COLUMN[ROW], from 1)")
        if wanted > self.limits.max_rows:
            raise ClientError(TOO_LARGE, f"{wanted} rows in one request, more than the"
                              f" {self.limits.max_rows} this server takes (--max-rows)")
        if wanted == 0:
            raise ClientError(BAD_REQUEST, "no rows to predict")
        return [dict(r) for r in rows] + [{} for _ in range(wanted - len(rows))], on_bad_row

    def _part_row(self, name: str) -> int:
        found = PART_NAME.match(name)
        if (found is None or found.group("row") is None) and name.endswith("]") and "[" in name \
                and name not in self.columns.files:  # COLUMN[abc]: a row that is no number
            raise ClientError(BAD_REQUEST, f"file part {name!r}: name a part COLUMN (row 1) or"
                              " COLUMN[ROW], ROW a row number from 1")
        row = int(found.group("row")) if found and found.group("row") else 1
        if row < 1:
            raise ClientError(BAD_REQUEST, f"file part {name!r}: rows are numbered from 1")
        return row

    def _place_parts(self, rows: list[dict[str, Any]], parts: Mapping[str, tuple[bytes, str | None]]) -> None:
        for name, (data, filename) in parts.items():
            found = PART_NAME.match(name)
            column = found.group("column") if found else name
            row = self._part_row(name)
            if column not in self.columns.files:
                raise ClientError(UNPROCESSABLE, f"file part {name!r}: column {column!r} is not"
                                  f" one the model reads files from ({self._file_columns()})",
                                  row, column)
            if rows[row - 1].get(column) is not None:
                raise ClientError(BAD_REQUEST, f"file part {name!r} and the row's JSON both give"
                                  f" column {column!r}: give the cell once", row, column)
            rows[row - 1][column] = _Upload(data, filename)

    def _file_columns(self) -> str:
        return ", ".join(map(repr, sorted(self.columns.files))) or "it reads none"

    def _cell(self, request: RequestRows, row: int, column: str, value: Any) -> Any:
        if isinstance(value, str) and len(value) > self.limits.max_string:
            raise ClientError(TOO_LARGE, f"row {row}, column {column!r}: a string of {len(value):,}"
                              f" characters, more than the {self.limits.max_string:,} a cell may"
                              " hold", row, column)
        if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 1023:
            raise ClientError(UNPROCESSABLE, f"row {row}, column {column!r}: an integer of"
                              f" {len(str(abs(value)))} digits, beyond the range of a 64-bit"
                              " float", row, column)
        if column in self.columns.files:
            return self._file_cell(request, row, column, value)
        if isinstance(value, (dict, list)):
            raise ClientError(UNPROCESSABLE, f"row {row}, column {column!r}: holds a JSON"
                              f" {'object' if isinstance(value, dict) else 'array'}; a cell of this"
                              " column is a number, a string, true/false or null", row, column)
        return value

    def _file_cell(self, request: RequestRows, row: int, column: str, value: Any) -> Any:
        if value is None or (isinstance(value, str) and not value.strip()):
            return None  # no file: the codec says what an empty cell means
        if isinstance(value, _Upload):
            return self._saved(request, row, column, value.data, value.filename)
        if isinstance(value, dict):
            return self._saved(request, row, column, *self._decoded(row, column, value))
        if isinstance(value, str):
            path = str(self._server_path(row, column, value))
            request.names[path] = value.strip()  # messages name the path as the client wrote it
            return path
        raise ClientError(UNPROCESSABLE, f"row {row}, column {column!r}: a file cell holds"
                          ' {"base64": "..."} (the file\'s bytes), or a path under the server\'s'
                          f" data root, not a JSON {type(value).__name__}", row, column)

    def _decoded(self, row: int, column: str, value: dict[str, Any]) -> tuple[bytes, str | None]:
        data, filename = value.get("base64"), value.get("filename")
        if set(value) - {"base64", "filename"} or not isinstance(data, str) or \
                not isinstance(filename, (str, type(None))):
            raise ClientError(UNPROCESSABLE, f"row {row}, column {column!r}: a file cell is"
                              ' {"base64": "...", "filename": "optional.png"}', row, column)
        if filename is not None and len(filename) > 255:
            raise ClientError(UNPROCESSABLE, f"row {row}, column {column!r}: a file name of more"
                              " than 255 characters", row, column)
        try:
            return base64.b64decode(data, validate=True), filename
        except (binascii.Error, ValueError):
            raise ClientError(UNPROCESSABLE, f"row {row}, column {column!r}: the base64 text is"
                              " not valid base64", row, column) from None

    def _saved(self, request: RequestRows, row: int, column: str, data: bytes,
               filename: str | None) -> Any:
        """``data`` as read on arrival by its column's codec (``read_sent``), or written to the
        request's private folder: its path, for the codec."""
        request.files += 1
        if request.files > self.limits.max_files:
            raise ClientError(TOO_LARGE, f"more than the {self.limits.max_files} files a request"
                              " may send", row, column)
        suffix = _sniffed(data, filename)
        name = filename or (f"sent {suffix} file" if suffix else "sent file")
        read = self.columns.readers.get(column)  # the codec says what it reads, and refuses
        if read is not None and len(data) <= READ_ON_ARRIVAL_BYTES:
            try:
                value = read(data, name)
            except PolymodalError as exc:
                raise ClientError(UNPROCESSABLE, f"row {row}, column {column!r}: {exc}", row,
                                  column) from None
            if value is not None:
                return value
        path = self.folder / f"{uuid.uuid4().hex}{suffix or ''}"  # a name no other has
        request.written.append(path)
        request.names[str(path)] = name
        with path.open("xb") as handle:
            handle.write(data)
        return str(path)

    def _server_path(self, row: int, column: str, value: str) -> Path:
        """A path a request names: only inside ``--data-root``, links resolved."""
        if self.data_root is None:
            raise ClientError(FORBIDDEN, f"row {row}, column {column!r}: a server-side path, and"
                              " this server reads no server files (it was started without"
                              ' --data-root); send the file\'s bytes as {"base64": "..."} or as a'
                              " multipart file part", row, column)
        if "\x00" in value:
            raise ClientError(UNPROCESSABLE, f"row {row}, column {column!r}: a path with a NUL"
                              " character", row, column)
        try:
            resolved = (self.data_root / value.strip()).resolve()
        except (OSError, RuntimeError):
            raise ClientError(UNPROCESSABLE, f"row {row}, column {column!r}: the path cannot be"
                              " resolved (a loop of links?)", row, column) from None
        if not resolved.is_relative_to(self.data_root):
            raise ClientError(FORBIDDEN, f"row {row}, column {column!r}: the path {value!r} is"
                              " outside the server's data root", row, column)
        return resolved


@dataclass(frozen=True)
class _Upload:
    """A multipart file part placed in a row's cell."""

    data: bytes
    filename: str | None

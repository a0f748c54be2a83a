"""What one request to ``polymodal serve`` may hold, and reading a JSON body within it.

Everything a client sends is bounded before it costs the server memory or time: the body's
bytes (counted as they arrive), the JSON's nesting (scanned before it is parsed, so a deep
``[[[[...`` cannot exhaust the parser's stack), each string's length, the rows per request, and
an image's pixels (the codec's own limit, read from the file's header before it is decoded).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

#: Status codes of the client errors the server answers.
BAD_REQUEST, FORBIDDEN, TOO_LARGE, UNSUPPORTED, UNPROCESSABLE = 400, 403, 413, 415, 422


@dataclass(frozen=True)
class Limits:
    """The bounds of one request (``polymodal serve`` options of the same names)."""

    max_body_bytes: int = 32 * 2**20
    max_rows: int = 1024
    #: the deepest nesting of JSON arrays and objects a body may have (a row's file cell is 3)
    max_depth: int = 8
    #: the longest string other than a file's base64 bytes (which the body size bounds)
    max_string: int = 10_000
    #: files (base64 cells and multipart parts) per request
    max_files: int = 1024


class ClientError(Exception):
    """A request the server refuses: its status, message, and where applicable the row
    (1-based, as messages number rows) and column it is about."""

    def __init__(self, status: int, message: str, row: int | None = None,
                 column: str | None = None):
        super().__init__(message)
        self.status, self.message, self.row, self.column = status, message, row, column

    def __reduce__(self) -> tuple[Any, ...]:  # sent back from the model process
        return ClientError, (self.status, self.message, self.row, self.column)

    def body(self) -> dict[str, Any]:
        error: dict[str, Any] = {"message": self.message}
        if self.row is not None:
            error["row"] = self.row
        if self.column is not None:
            error["column"] = self.column
        return {"error": error}


#: A JSON string (escapes included), and the brackets that open and close arrays and objects.
_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"')
_BRACKET = re.compile(rb"[][{}]")


def nesting_depth(text: bytes, limit: int) -> int:
    """The deepest nesting of arrays and objects in JSON ``text``, counted without parsing it
    (brackets inside strings do not count); stops counting past ``limit``."""
    depth = deepest = 0
    for found in _BRACKET.finditer(_STRING.sub(b'""', text)):
        if found.group() in (b"[", b"{"):
            depth += 1
            if depth > deepest:
                deepest = depth
                if deepest > limit:
                    return deepest
        else:
            depth -= 1
    return deepest


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON value (write null for a missing value)")


def parse_json(text: bytes, limits: Limits, what: str = "the body") -> Any:
    """``text`` parsed as JSON, within ``limits``; a :class:`ClientError` saying what is wrong."""
    brackets = text.count(b"[") + text.count(b"{")  # at most this deep: most bodies stop here
    if brackets > limits.max_depth and nesting_depth(text, limits.max_depth) > limits.max_depth:
        raise ClientError(BAD_REQUEST, f"{what} nests JSON arrays and objects more than"
                          f" {limits.max_depth} deep")
    try:
        value = json.loads(text, parse_constant=_refuse_constant)
    except UnicodeDecodeError:
        raise ClientError(BAD_REQUEST, f"{what} is not UTF-8 text") from None
    except ValueError as exc:  # JSONDecodeError is a ValueError, and so is the refusal above
        raise ClientError(BAD_REQUEST, f"{what} is not valid JSON ({exc})") from None
    return value

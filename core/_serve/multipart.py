"""A multipart body of ``POST /v1/predict``: its ``request`` field (JSON) and its file parts.

The body has been read (within the size limit) before it is parsed here, by Starlette's form
parser (python-multipart), bounded in files, fields and part sizes.
"""

from __future__ import annotations

from collections.abc import MutableMapping
from typing import Any

from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.requests import Request

from .limits import BAD_REQUEST, ClientError, Limits, parse_json


async def read_multipart(scope: MutableMapping[str, Any], body: bytes,
                         limits: Limits) -> tuple[Any, dict[str, tuple[bytes, str | None]]]:
    """The ``request`` field's JSON and the file parts by name, of the multipart ``body``."""
    sent = False

    async def replay() -> dict[str, Any]:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    try:
        form = await Request(scope, replay).form(
            max_files=limits.max_files, max_fields=8, max_part_size=limits.max_body_bytes)
    except HTTPException as exc:  # Starlette's words for a malformed or oversized form
        raise ClientError(exc.status_code, str(exc.detail)) from None
    data: Any = {}
    parts: dict[str, tuple[bytes, str | None]] = {}
    try:
        for name, value in form.multi_items():
            if name in parts or (name == "request" and data):
                raise ClientError(BAD_REQUEST, f"the multipart body has two parts named {name!r}")
            if isinstance(value, UploadFile):
                parts[name] = (await value.read(), value.filename)
            elif name == "request":
                data = parse_json(value.encode(), limits, "the request field")
            else:
                raise ClientError(BAD_REQUEST, f"the multipart body has a text field {name!r};"
                                  " it takes a field 'request' (JSON) and file parts")
    finally:
        await form.close()
    return data, parts

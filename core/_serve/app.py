"""The HTTP API of ``polymodal serve`` (FastAPI, imported only here).

``POST /v1/predict`` takes rows as JSON or multipart, ``GET /v1/metadata`` describes the model,
``GET /health`` counts what was served (batches included), ``GET /ready`` says whether requests
are taken. Every client error is a 4xx JSON body ``{"error": {"message", "row", "column"}}``; a
fault of the server is logged with the request's id and answered 500 without its details.
"""

from __future__ import annotations

import contextlib
import logging
import os
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect

from .batcher import Batcher, QueueFull
from .draining import DRAINING, watch_signals
from .limits import BAD_REQUEST, TOO_LARGE, UNSUPPORTED, ClientError, Limits, parse_json
from .options import ServeOptions
from .predictor import Predictor
from .rows import RowBuilder
from .schema import request_model, response_model

log = logging.getLogger("polymodal.serve")


def create_app(options: ServeOptions, predictor: Predictor | None = None) -> FastAPI:
    """The application serving ``options.model`` (loaded here unless ``predictor`` is given)."""
    predictor = predictor or Predictor(options.model, options.device)
    batcher = Batcher(predictor.run, max_batch=options.max_batch,
                      max_wait=options.max_wait_ms / 1000, max_queue=options.max_queue)
    builder = RowBuilder(predictor.columns, options.limits,
                         Path(options.data_root) if options.data_root else None)

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        watch_signals()
        batcher.start()
        yield
        await batcher.stop()
        builder.close()

    app = FastAPI(title=f"polymodal: {predictor.spec.name}", lifespan=lifespan,
                  description=f"Predictions of the model {Path(options.model).name}.")
    _errors(app)
    _routes(app, options, predictor, batcher, builder)
    return app


def _routes(app: FastAPI, options: ServeOptions, predictor: Predictor, batcher: Batcher,
            builder: RowBuilder) -> None:
    metadata = _metadata(predictor, options)
    body_schema = _documented(app, request_model(predictor))

    @app.post("/v1/predict", response_model=response_model(predictor), openapi_extra={
        "requestBody": {"required": True, "content": {
            "application/json": {"schema": body_schema},
            "multipart/form-data": {"schema": _multipart_schema()}}}})
    async def predict(request: Request) -> JSONResponse:
        """Predict rows: JSON ``{"rows": [...], "on_bad_row": "fail"}``, or multipart with a
        ``request`` field holding that JSON and file parts named ``COLUMN`` or ``COLUMN[ROW]``."""
        if DRAINING.is_set():
            return JSONResponse({"error": {"message": "the server is shutting down",
                                           "request_id": request.state.request_id}}, 503,
                                headers={"Retry-After": "1"})
        body, parts = await _read(request, options.limits)
        rows = builder.build(body, parts)
        try:
            missing = predictor.missing_columns(rows)
            if missing is not None:
                raise missing
            try:
                outcome, batch = await batcher.submit(rows)
            except QueueFull as exc:
                return JSONResponse({"error": {"message": str(exc),
                                               "request_id": request.state.request_id}}, 503,
                                    headers={"Retry-After": str(exc.retry_after)})
        finally:
            rows.close()
        if outcome.fault is not None:
            raise outcome.fault
        if outcome.error is not None:
            raise outcome.error
        return JSONResponse({"request_id": request.state.request_id, "rows": outcome.rows,
                             "skipped": outcome.skipped, "batch": batch.__dict__})

    @app.get("/v1/metadata")
    async def model_metadata() -> dict[str, Any]:
        """The model: its inputs, columns and their types, heads and classes, versions, spec."""
        return metadata

    @app.get("/health")
    async def health() -> dict[str, Any]:
        """The process is up; what it has served, batch by batch."""
        return {"status": "ok", "pid": os.getpid(), "batching": batcher.stats()}

    @app.get("/ready")
    async def ready() -> JSONResponse:
        """200 while requests are taken; 503 while the server drains."""
        if DRAINING.is_set():
            return JSONResponse({"ready": False, "reason": "shutting down"}, 503)
        return JSONResponse({"ready": True})


def from_environment() -> FastAPI:
    """The application of a worker process (uvicorn's factory, ``--workers`` above 1)."""
    options = ServeOptions.from_environment()
    _threads(options)
    return create_app(options)


def _threads(options: ServeOptions) -> None:
    if options.threads:
        import torch

        torch.set_num_threads(options.threads)


class RequestIds:
    """Gives every request an id (``request.state.request_id``, the ``X-Request-ID`` header of
    its answer); a fault is logged with it and answered 500 with the id only. Plain ASGI: a
    request passes through it at the cost of a function call."""

    def __init__(self, app: Any):
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id
        started = False

        async def sending(message: Any) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                message["headers"] = [*message.get("headers", []),
                                      (b"x-request-id", request_id.encode())]
            await send(message)

        try:
            await self.app(scope, receive, sending)
        except ClientDisconnect:  # the client hung up mid-request: no fault, and no one to answer
            log.info("request %s: the client disconnected before sending its body", request_id)
        except Exception:  # noqa: BLE001 - logged with the id, answered without internals
            log.exception("request %s failed", request_id)
            if started:
                raise
            await JSONResponse({"error": {"message": "internal server error",
                                          "request_id": request_id}}, 500)(scope, receive, sending)


def _errors(app: FastAPI) -> None:
    app.add_middleware(RequestIds)

    @app.exception_handler(ClientError)
    async def client_error(request: Request, exc: ClientError) -> JSONResponse:
        body = exc.body()
        body["error"]["request_id"] = request.state.request_id
        return JSONResponse(body, exc.status)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        return JSONResponse({"error": {"message": str(exc.detail),
                                       "request_id": request.state.request_id}},
                            exc.status_code, headers=getattr(exc, "headers", None))


async def _read(request: Request, limits: Limits) -> tuple[Any, dict[str, tuple[bytes, str | None]]]:
    """The body's JSON and file parts, read within ``limits``."""
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind not in ("application/json", "multipart/form-data") and not kind.endswith("+json"):
        raise ClientError(UNSUPPORTED, f"a body of type {kind or 'none'!r}; send"
                          " application/json or multipart/form-data")
    body = await _bounded_body(request, limits)
    if kind != "multipart/form-data":
        return parse_json(body, limits), {}
    return await _multipart(request, body, limits)


async def _bounded_body(request: Request, limits: Limits) -> bytes:
    declared = request.headers.get("content-length")
    too_large = ClientError(TOO_LARGE, f"the body is larger than the {limits.max_body_bytes:,}"
                            " bytes this server takes (--max-body-mb)")
    if declared is not None and declared.isdigit() and int(declared) > limits.max_body_bytes:
        raise too_large
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limits.max_body_bytes:
            raise too_large
        chunks.append(chunk)
    return b"".join(chunks)


async def _multipart(request: Request, body: bytes,
                     limits: Limits) -> tuple[Any, dict[str, tuple[bytes, str | None]]]:
    """A multipart body: its ``request`` field (JSON) and its file parts by name."""
    sent = False

    async def replay() -> dict[str, Any]:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    form = await Request(request.scope, replay).form(
        max_files=limits.max_files, max_fields=8, max_part_size=limits.max_body_bytes)
    data: Any = {}
    parts: dict[str, tuple[bytes, str | None]] = {}
    for name, value in form.multi_items():
        if name in parts or (name == "request" and data):
            raise ClientError(BAD_REQUEST, f"the multipart body has two parts named {name!r}")
        if isinstance(value, UploadFile):
            parts[name] = (await value.read(), value.filename)
        elif name == "request":
            data = parse_json(value.encode(), limits, "the request field")
        else:
            raise ClientError(BAD_REQUEST, f"the multipart body has a text field {name!r}; it"
                              " takes a field 'request' (JSON) and file parts")
    await form.close()
    return data, parts


def _documented(app: FastAPI, model: type[BaseModel]) -> dict[str, Any]:
    """A reference to ``model``'s schema, which (with the schemas it uses) is added to the
    OpenAPI document's components: the server reads the body itself, so FastAPI does not."""
    schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
    used = {**schema.pop("$defs", {}), model.__name__: schema}
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            document = generate()
            document.setdefault("components", {}).setdefault("schemas", {}).update(used)
            app.openapi_schema = document
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return {"$ref": f"#/components/schemas/{model.__name__}"}


def _multipart_schema() -> dict[str, Any]:
    return {"type": "object", "properties": {
        "request": {"type": "string", "description": 'JSON: {"rows": [...], "on_bad_row": ...};'
                    " rows a file part fills may be left out"}},
        "additionalProperties": {"type": "string", "format": "binary",
                                 "description": "A file for column COLUMN of row 1 (part name"
                                 " COLUMN) or of row ROW (COLUMN[ROW])"}}


def _metadata(predictor: Predictor, options: ServeOptions) -> dict[str, Any]:
    from .. import __version__

    state = predictor.state
    inputs = {}
    for bound in predictor.binding.inputs:
        fitted = state["inputs"].get(bound.name, {})
        inputs[bound.name] = {
            "type": getattr(bound.codec.config, "type", None), "columns": bound.codec.columns(),
            "files": bool(getattr(bound.codec, "reads_files", False)),
            "vocabularies": fitted.get("vocabularies", {}),
            "numerical": list(getattr(bound.codec.config, "numerical", None) or [])}
    heads = {b.name: {"type": getattr(b.codec.config, "type", None),
                      "classes": state["heads"].get(b.name, {}).get("classes")}
             for b in predictor.binding.heads}
    return {"model": {"name": predictor.spec.name, "file": Path(options.model).name,
                      "format": "onnx" if options.model.lower().endswith(".onnx") else "safetensors"},
            "inputs": inputs, "heads": heads, "columns": list(predictor.columns.read),
            "versions": {"polymodal": __version__, **predictor.versions},
            "spec": predictor.spec_data, "limits": options.limits.__dict__,
            "batching": {"max_batch": options.max_batch, "max_wait_ms": options.max_wait_ms,
                         "max_queue": options.max_queue}}

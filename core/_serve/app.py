"""The HTTP API of ``polymodal serve`` (FastAPI, imported only here).

``POST /v1/predict`` takes rows as JSON or multipart, ``GET /v1/metadata`` describes the model,
``GET /health`` counts what was served (batches included), ``GET /ready`` says whether requests
are taken. Every client error is a 4xx JSON body ``{"error": {"message", "row", "column"}}``; a
fault of the server is logged with the request's id and answered 500 without its details.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import itertools
import logging
import os
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect

from .batcher import Batcher
from .draining import DRAINING, watch_signals
from .endpoint import Disconnected, PredictEndpoint
from .limits import ClientError
from .model_process import ModelProcess
from .options import ServeOptions
from .predictor import Predictor
from .rows import RowBuilder
from .schema import request_model, response_model

log = logging.getLogger("polymodal.serve")


def create_app(options: ServeOptions, predictor: Predictor | None = None) -> FastAPI:
    """The application serving ``options.model`` (loaded here unless ``predictor`` is given).

    The model runs in a process of its own (:mod:`.model_process`), forked from this one with
    ``options.threads`` torch threads (by default, as many as torch takes). This process keeps
    to one torch thread: it does not run the model, and a process forked from one that has
    started OpenMP's threads hangs in its first parallel region."""
    import torch

    threads = options.threads or torch.get_num_threads()  # the model process's
    if predictor is None:
        torch.set_num_threads(1)  # no OpenMP threads here: see the docstring
        predictor = Predictor(options.model, options.device)
    model = ModelProcess(predictor, threads, max_batch=options.max_batch,
                         max_wait=options.max_wait_ms / 1000)
    batcher = Batcher(model, max_batch=options.max_batch, max_queue=options.max_queue)
    builder = RowBuilder(predictor.columns, options.limits,
                         Path(options.data_root) if options.data_root else None)

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        watch_signals()
        gc.collect()
        gc.freeze()  # the model's objects, made once, are not scanned by every full collection
        batcher.start()  # (and, frozen, are not copied into the model process by a collection)
        model.start()
        yield
        await asyncio.to_thread(model.stop, options.drain_timeout)
        await batcher.stop()
        builder.close()

    app = FastAPI(title=f"polymodal: {predictor.spec.name}", lifespan=lifespan,
                  description=f"Predictions of the model {Path(options.model).name}.")
    _errors(app)
    _routes(app, options, predictor, batcher, builder)
    app.state.model_process = model
    return app


def _routes(app: FastAPI, options: ServeOptions, predictor: Predictor, batcher: Batcher,
            builder: RowBuilder) -> None:
    metadata = _metadata(predictor, options)
    body_schema = _documented(app, request_model(predictor))

    endpoint = PredictEndpoint(predictor, batcher, builder, options.limits)
    app.state.predict = endpoint  # RequestIds answers the route with it, bypassing FastAPI

    @app.post("/v1/predict", response_model=response_model(predictor), openapi_extra={
        "requestBody": {"required": True, "content": {
            "application/json": {"schema": body_schema},
            "multipart/form-data": {"schema": _multipart_schema()}}}})
    async def predict(request: Request) -> Response:
        """Predict rows: JSON ``{"rows": [...], "on_bad_row": "fail"}``, or multipart with a
        ``request`` field holding that JSON and file parts named ``COLUMN`` or ``COLUMN[ROW]``."""
        return _Delegated(endpoint)

    @app.get("/v1/metadata")
    async def model_metadata() -> dict[str, Any]:
        """The model: its inputs, columns and their types, heads and classes, versions, spec."""
        return metadata

    @app.get("/health")
    async def health() -> dict[str, Any]:
        """The process is up; what it has served, batch by batch."""
        return {"status": "ok", "pid": os.getpid(), "model_pid": app.state.model_process.pid,
                "batching": batcher.stats()}

    @app.get("/ready")
    async def ready() -> JSONResponse:
        """200 while requests are taken; 503 while the server drains."""
        if DRAINING.is_set():
            return JSONResponse({"ready": False, "reason": "shutting down"}, 503)
        return JSONResponse({"ready": True})


def from_environment() -> FastAPI:
    """The application of a worker process (uvicorn's factory, ``--workers`` above 1)."""
    return create_app(ServeOptions.from_environment())


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
        request_id = _request_id()
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
            endpoint = getattr(scope["app"].state, "predict", None) if "app" in scope else None
            if endpoint is not None and scope["path"] == "/v1/predict" and scope["method"] == "POST":
                await endpoint(scope, receive, sending)  # the hot route, without FastAPI's layers
            else:
                await self.app(scope, receive, sending)
        except (ClientDisconnect, Disconnected):  # the client hung up mid-request: no fault, and no one to answer
            log.info("request %s: the client disconnected before sending its body", request_id)
        except Exception:  # noqa: BLE001 - logged with the id, answered without internals
            log.exception("request %s failed", request_id)
            if started:
                raise
            await JSONResponse({"error": {"message": "internal server error",
                                          "request_id": request_id}}, 500)(scope, receive, sending)


_ID_PREFIX, _ID_COUNTER = uuid.uuid4().hex[:20], itertools.count()


def _request_id() -> str:
    """An id of 32 hex digits no other request has: a random prefix drawn once per process
    and a count (cheaper than a fresh uuid4, which reads the OS's random source each time)."""
    return f"{_ID_PREFIX}{next(_ID_COUNTER):012x}"


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


class _Delegated(Response):
    """The answer of the FastAPI route of ``/v1/predict`` (reached only where
    :class:`RequestIds` does not answer it first): the endpoint's own."""

    def __init__(self, endpoint: PredictEndpoint):
        super().__init__()
        self.endpoint = endpoint

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await self.endpoint(scope, receive, send)


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
            "numerical": list(getattr(bound.codec.config, "numerical", None) or []),
            "expects": bound.codec.expects(fitted)}
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

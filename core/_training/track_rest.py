"""Runs recorded on an MLflow tracking server through its REST API, without importing MLflow.

For an ``http://`` or ``https://`` tracking URI: the same runs, parameters, tags, metrics and
files as :class:`~.track_mlflow.MlflowBackend` records through MLflow's client, sent as the
server's JSON calls (``/api/2.0/mlflow/...``, :mod:`.mlflow_http`) and the run's files to where
its artifact URI says (:mod:`.mlflow_artifacts`). A tracked run to a server so never pays
MLflow's import (over a second of CPU in a new process). Every method runs in the tracking
session's worker thread (:mod:`.courier`).
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .mlflow_artifacts import Store, store_for
from .mlflow_http import LIBRARY_ONLY, MlflowHttp, RestError
from .track_mlflow import BATCH, PARAM_LENGTH, STATUS, safe_uri

if TYPE_CHECKING:
    from .courier import Metrics

MISSING = "RESOURCE_DOES_NOT_EXIST"


def applies(uri: str) -> bool:
    """Whether runs to ``uri`` go through this backend: a server's URI, unless a setting only
    MLflow's client honours (request signing, an auth plugin) is set."""
    scheme = uri.split("://", 1)[0].lower() if "://" in uri else ""
    return scheme in ("http", "https") and not any(os.environ.get(n) for n in LIBRARY_ONLY)


def _pairs(items: dict[str, Any]) -> list[dict[str, str]]:
    return [{"key": k, "value": str(v)[:PARAM_LENGTH]} for k, v in items.items()]


def _number(value: float) -> float | str:
    """A metric's value as the API's JSON takes it (non-finite values as protobuf's names)."""
    if math.isfinite(value):
        return value
    return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")


class MlflowRestBackend:
    """One tracking server and experiment."""

    def __init__(self, uri: str, experiment: str):
        self.uri, self.experiment = uri, experiment
        self.http = MlflowHttp(uri)
        self.experiment_id: str | None = None
        self.fresh: set[str] = set()  # runs made by this session: no parameters yet
        self.stores: dict[str, Store] = {}  # by run: where its files go

    def open(self) -> None:
        if self.experiment_id is not None:
            return
        found = self._experiment()
        if found is not None and found.get("lifecycle_stage") == "deleted":
            self.http.call("POST", "experiments/restore",
                           {"experiment_id": found["experiment_id"]})
        if found is None:
            try:
                made = self.http.call("POST", "experiments/create", {"name": self.experiment})
                self.experiment_id = str(made["experiment_id"])
                return
            except RestError as exc:  # another process made it meanwhile
                if exc.code != "RESOURCE_ALREADY_EXISTS" or (found := self._experiment()) is None:
                    raise
        self.experiment_id = str(found["experiment_id"])

    def _experiment(self) -> dict[str, Any] | None:
        try:
            return dict(self.http.call("GET", "experiments/get-by-name",
                                       {"experiment_name": self.experiment})["experiment"])
        except RestError as exc:
            if exc.code == MISSING:
                return None
            raise

    def _run(self, run: str) -> dict[str, Any] | None:
        try:
            return dict(self.http.call("GET", "runs/get", {"run_id": run})["run"])
        except RestError as exc:
            if exc.code == MISSING:
                return None
            raise

    def create_run(self, name: str, parent: str | None, resume: str | None) -> str:
        self.open()
        if resume is not None:
            earlier = self._run(resume)  # None: deleted from the store, so a new run
            if earlier is not None and earlier["info"].get("experiment_id") == self.experiment_id:
                self.http.call("POST", "runs/update", {"run_id": resume, "status": "RUNNING"})
                self._keep(resume, earlier["info"])
                return resume
        tags = [{"key": "mlflow.parentRunId", "value": parent}] if parent else []
        made = self.http.call("POST", "runs/create", {
            "experiment_id": self.experiment_id, "run_name": name, "user_id": "unknown",
            "start_time": int(time.time() * 1000), "tags": tags})["run"]["info"]
        run = str(made["run_id"])
        self.fresh.add(run)
        self._keep(run, made)
        return run

    def _keep(self, run: str, info: dict[str, Any]) -> None:
        self.stores[run] = store_for(str(info["artifact_uri"]), self.http)

    def log_params(self, run: str, params: dict[str, Any],
                   tags: dict[str, str] | None = None) -> None:
        # A continued run keeps the parameters it has (MLflow refuses to change one).
        known: set[str] = set()
        if run not in self.fresh:
            earlier = self._run(run) or {}
            known = {p["key"] for p in earlier.get("data", {}).get("params", [])}
        items = _pairs({k: v for k, v in params.items() if k not in known})
        labels = _pairs(tags or {})
        for i in range(0, max(len(items), len(labels)), BATCH):  # one request where they fit
            self._batch(run, params=items[i:i + BATCH], tags=labels[i:i + BATCH])

    def set_tags(self, run: str, tags: dict[str, str]) -> None:
        labels = _pairs(tags)
        for i in range(0, len(labels), BATCH):
            self._batch(run, tags=labels[i:i + BATCH])

    def log_metrics(self, run: str, records: list[Metrics]) -> None:
        items = [{"key": k, "value": _number(float(v)), "timestamp": int(at * 1000),
                  "step": step} for values, step, at in records for k, v in values.items()]
        for i in range(0, len(items), BATCH * 10):
            self._batch(run, metrics=items[i:i + BATCH * 10])

    def _batch(self, run: str, **entries: list[dict[str, Any]]) -> None:
        self.http.call("POST", "runs/log-batch", {"run_id": run, **entries})

    def _store(self, run: str) -> Store:
        if run not in self.stores:  # a run of an earlier session, tagged only till now
            found = self._run(run)
            if found is None:
                raise RestError(404, MISSING, f"run {run} is gone", "runs/get")
            self._keep(run, found["info"])
        return self.stores[run]

    def log_file(self, run: str, path: Path, folder: str | None) -> None:
        self._store(run).file(path, folder)

    def log_text(self, run: str, text: str, name: str) -> None:
        self._store(run).text(text, name)

    def finish(self, run: str, status: str) -> None:
        self.http.call("POST", "runs/update", {"run_id": run, "status": STATUS[status],
                                               "end_time": int(time.time() * 1000)})

    def close(self) -> None:
        for store in self.stores.values():
            store.close()
        self.http.close()

    def describe(self, run: str | None) -> str:
        where = f"MLflow at {safe_uri(self.uri)}, experiment {self.experiment!r}"
        return f"{where}, run {run}" if run else where

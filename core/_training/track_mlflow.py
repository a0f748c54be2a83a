"""Runs recorded in MLflow, through its client (``pip install 'polymodal[mlflow]'``).

Every method runs in the tracking session's worker thread (:mod:`.courier`); MLflow is imported
there, the first time a session sends something. Runs are addressed by id through
``MlflowClient`` (no active run: cv's and tune's runs nest by the ``mlflow.parentRunId`` tag).
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .courier import Metrics

#: MLflow's own HTTP retries wait minutes for a server that is down; the courier retries
#: instead, so that an epoch's records never wait behind them. Its links to a finished run
#: would go to standard output, which ``--json`` keeps for the summary. A user's setting is kept.
SETTINGS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
            "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true"}
#: MLflow's limits: entries in one batch call, length of a parameter's value.
BATCH = 100
PARAM_LENGTH = 6000
STATUS = {"finished": "FINISHED", "failed": "FAILED", "killed": "KILLED"}


class MlflowBackend:
    """One tracking URI and experiment."""

    def __init__(self, uri: str, experiment: str, artifact_root: Path | None):
        self.uri, self.experiment = uri, experiment
        self.artifact_root = artifact_root  # a default local store's artifact folder
        self.client: Any = None
        self.experiment_id: str | None = None
        self.fresh: set[str] = set()  # runs made by this session: no parameters yet

    def open(self) -> None:
        if self.client is not None and self.experiment_id is not None:
            return
        for name, value in SETTINGS.items():
            os.environ.setdefault(name, value)
        from mlflow.tracking import MlflowClient

        # Its notes on creating a new local store's tables are not the run's to show.
        logging.getLogger("mlflow.store.db.utils").setLevel(logging.WARNING)
        self.client = client = MlflowClient(tracking_uri=self.uri)
        found = client.get_experiment_by_name(self.experiment)
        if found is not None and found.lifecycle_stage == "deleted":
            client.restore_experiment(found.experiment_id)
        if found is not None:
            self.experiment_id = found.experiment_id
            return
        root = self.artifact_root.resolve().as_uri() if self.artifact_root else None
        self.experiment_id = client.create_experiment(self.experiment, artifact_location=root)

    def create_run(self, name: str, parent: str | None, resume: str | None) -> str:
        self.open()
        from mlflow.exceptions import MlflowException

        if resume is not None:
            try:
                run = self.client.get_run(resume)
            except MlflowException:
                run = None  # deleted from the store: a new run
            if run is not None and run.info.experiment_id == self.experiment_id:
                self.client.update_run(resume, status="RUNNING")
                return resume
        tags = {"mlflow.parentRunId": parent} if parent else {}
        made = self.client.create_run(self.experiment_id, run_name=name, tags=tags)
        self.fresh.add(made.info.run_id)
        return str(made.info.run_id)

    def log_params(self, run: str, params: dict[str, Any],
                   tags: dict[str, str] | None = None) -> None:
        from mlflow.entities import Param, RunTag

        # A continued run keeps the parameters it has (MLflow refuses to change one).
        known = {} if run in self.fresh else self.client.get_run(run).data.params
        items = [Param(k, str(v)[:PARAM_LENGTH]) for k, v in params.items() if k not in known]
        labels = [RunTag(k, str(v)[:PARAM_LENGTH]) for k, v in (tags or {}).items()]
        for i in range(0, max(len(items), len(labels)), BATCH):  # one request where they fit
            self.client.log_batch(run, params=items[i:i + BATCH], tags=labels[i:i + BATCH])

    def set_tags(self, run: str, tags: dict[str, str]) -> None:
        from mlflow.entities import RunTag

        items = [RunTag(k, str(v)[:PARAM_LENGTH]) for k, v in tags.items()]
        for i in range(0, len(items), BATCH):
            self.client.log_batch(run, tags=items[i:i + BATCH])

    def log_metrics(self, run: str, records: list[Metrics]) -> None:
        from mlflow.entities import Metric

        items = [Metric(k, float(v), int(at * 1000), step)
                 for values, step, at in records for k, v in values.items()]
        for i in range(0, len(items), BATCH * 10):
            self.client.log_batch(run, metrics=items[i:i + BATCH * 10])

    def log_file(self, run: str, path: Path, folder: str | None) -> None:
        self.client.log_artifact(run, str(path), folder)

    def log_text(self, run: str, text: str, name: str) -> None:
        self.client.log_text(run, text, name)

    def finish(self, run: str, status: str) -> None:
        self.client.set_terminated(run, STATUS[status], end_time=int(time.time() * 1000))

    def close(self) -> None:
        pass

    def describe(self, run: str | None) -> str:
        where = f"MLflow at {safe_uri(self.uri)}, experiment {self.experiment!r}"
        return f"{where}, run {run}" if run else where


def safe_uri(uri: str) -> str:
    """The URI without a password."""
    scheme, sep, rest = uri.partition("://")
    if "@" in rest.split("/", 1)[0]:
        credentials, _, host = rest.partition("@")
        rest = credentials.split(":", 1)[0] + ":***@" + host
    return scheme + sep + rest

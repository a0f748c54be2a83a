"""Experiment tracking: a run recorded in MLflow or TensorBoard besides its own files.

A :class:`Session` is one command's connection to a tracker (``train``, ``cv`` or ``tune``):
it makes :class:`TrackedRun` handles and sends what they record through a :class:`Courier`, so
training never waits on the tracker and a tracker that fails costs it nothing but a warning
(what was not sent is listed when the session closes; the run folder's own files hold it all).
A run's id is kept in ``tracking.json`` in its folder, so a resumed run (train ``--resume``, a
rerun cross-validation or study) continues the same run instead of making a new one.

cv and tune group their runs: a parent run for the command (the study), a child run for each
spec and fold (each trial; a trial's folds are its children). They hand :func:`~.engine.train`
a :class:`Slot`: where the run it trains goes.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from .._errors import PolymodalError
from .._files import write_text
from .._options import Track
from .courier import Courier, Job, Metrics

RECORD = "tracking.json"
#: Metrics are sent at most once in this many seconds: epochs that end faster go together in
#: one request (a short run sends all of its epochs as it ends), so that the tracker's work
#: does not take the cores from training; an epoch that ends later than this is sent at once.
METRICS_EVERY = 10.0
PACKAGES = {"mlflow": ("mlflow", "mlflow"), "tensorboard": ("tensorboard", "tensorboard")}


class TrackingError(PolymodalError):
    """A tracker asked for that cannot be used: its package is missing, or the request is bad."""


class Backend(Protocol):
    """What a tracker does; every method runs in the session's worker thread."""

    def open(self) -> None: ...
    def create_run(self, name: str, parent: str | None, resume: str | None) -> str: ...
    def log_params(self, run: str, params: dict[str, Any],
                   tags: dict[str, str] | None = None) -> None: ...
    def set_tags(self, run: str, tags: dict[str, str]) -> None: ...
    def log_metrics(self, run: str, records: list[Metrics]) -> None: ...
    def log_file(self, run: str, path: Path, folder: str | None) -> None: ...
    def log_text(self, run: str, text: str, name: str) -> None: ...
    def finish(self, run: str, status: str) -> None: ...
    def close(self) -> None: ...
    def describe(self, run: str | None) -> str: ...


def target_of(track: Any, spec_track: Track | None) -> Track | None:
    """The tracker asked for: ``track`` (``"mlflow"``, ``"tensorboard"``, ``"none"``, a mapping
    of ``training.track``'s fields, or a :class:`Track`), else the spec's ``training.track``."""
    if track is None:
        return spec_track
    if isinstance(track, Track):
        return track
    if isinstance(track, str):
        if track == "none":
            return None
        track = {"to": track}
    if not isinstance(track, Mapping):
        raise TrackingError(f"track: give mlflow, tensorboard, none or a mapping of"
                            f" training.track's options, not {type(track).__name__}")
    from pydantic import ValidationError

    try:
        return Track.model_validate(dict(track))
    except ValidationError as exc:
        said = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'track'}: {e['msg']}"
                         for e in exc.errors())
        raise TrackingError(f"track: {said}") from None


def is_main_process() -> bool:
    """Whether this process records: under torchrun, rank 0 only."""
    return os.environ.get("RANK", "0") in ("", "0")


def open_session(target: Track | None, home: Path, experiment: str,
                 say: Callable[[str], None]) -> Session | None:
    """A session for ``target`` (None: no tracking, or not the recording process), its default
    store in the folder ``home``. Refuses at once a tracker whose package is missing."""
    if target is None or not is_main_process():
        return None
    module, extra = PACKAGES[target.to]
    if importlib.util.find_spec(module) is None:
        raise TrackingError(f"tracking to {target.to} needs the {module} package:"
                            f" pip install 'polymodal[{extra}]'")
    backend: Backend
    if target.to == "mlflow":
        backend = _mlflow(target, home, target.experiment or experiment)
    else:
        from .track_tensorboard import TensorBoardBackend

        backend = TensorBoardBackend(Path(target.uri) if target.uri else home / "tensorboard")
    return Session(target, backend, say)


def _mlflow(target: Track, home: Path, experiment: str) -> Backend:
    """A tracking server's REST API where the URI is a server's (MLflow is not imported), else
    MLflow's client (a database URI, the default local store). The URI given, else MLflow's
    own ``MLFLOW_TRACKING_URI``, else the local store beside the run."""
    from .track_rest import applies

    given = target.uri or os.environ.get("MLFLOW_TRACKING_URI", "").strip() or None
    if given is not None and applies(given):
        from .mlflow_http import SettingError
        from .track_mlflow import safe_uri
        from .track_rest import MlflowRestBackend

        try:
            return MlflowRestBackend(given, experiment)
        except SettingError as exc:
            raise TrackingError(f"tracking to {safe_uri(given)}: {exc}") from None
    from .track_mlflow import MlflowBackend

    uri = given or f"sqlite:///{(home / 'mlflow.db').resolve()}"
    root = home / "mlartifacts" if given is None else None
    return MlflowBackend(uri, experiment, root)


class Session:
    """One command's tracking: its runs and the courier that sends their records."""

    def __init__(self, target: Track, backend: Backend, say: Callable[[str], None]):
        self.target, self.backend, self.say = target, backend, say
        self.courier = Courier(backend.describe(None), say)
        self.runs: list[TrackedRun] = []
        self.closed = False
        self.metrics_sent = time.monotonic()  # when metrics were last sent (or the start)

    def key(self) -> dict[str, Any]:
        """What a run's record must match to be continued: the same tracker, URI, experiment."""
        backend: Any = self.backend
        from .track_mlflow import safe_uri

        uri = getattr(backend, "uri", None)
        # kept in tracking.json: a password in the URI is not
        where = safe_uri(uri) if uri else str(getattr(backend, "root", ""))
        return {"to": self.target.to, "where": where,
                "experiment": getattr(backend, "experiment", None)}

    def run(self, name: str, record: Path | None, parent: TrackedRun | None = None,
            resume: bool = False) -> TrackedRun:
        """A run named ``name`` (a child of ``parent``), its id kept in the file ``record``;
        with ``resume``, the run that file names, where it is of this tracker."""
        earlier = read_record(record, self.key()) if resume and record is not None else None
        run = TrackedRun(self, name, record, parent, earlier)
        self.runs.append(run)
        self.courier.send("start", name, run.ensure)
        return run

    def existing(self, name: str, run_id: str) -> TrackedRun:
        """A handle on a run recorded earlier (to tag it), without reopening it."""
        return TrackedRun(self, name, None, None, None, run_id)

    def send(self, run: TrackedRun, kind: str, detail: str | list[str],
             call: Callable[[str], None]) -> None:
        """Queue ``call`` with ``run``'s id; ``detail`` says what it records (for the list of
        what was not sent)."""
        def job() -> None:
            call(run.ensure())
        details = [detail] if isinstance(detail, str) else detail
        said = ", ".join(f"{run.name}: {d}" if d else run.name for d in details)
        self.courier.send(kind, said, job)

    def metrics_due(self) -> None:
        """Send every run's held metrics where the last were sent ``METRICS_EVERY`` ago."""
        if time.monotonic() - self.metrics_sent >= METRICS_EVERY:
            for run in self.runs:
                run.send_metrics()

    def close(self) -> list[str]:
        """Wait (bounded) for what is queued; lines saying where the runs are and what was not
        recorded."""
        if self.closed:
            return []
        self.closed = True
        for run in self.runs:
            run.send_metrics()
        self.courier.send("close", "", self.backend.close)
        unsent = [j for j in self.courier.close() if j.kind != "close"]
        return self._summary(unsent)

    def _summary(self, unsent: list[Job]) -> list[str]:
        made = [r for r in self.runs if r.id is not None]
        lines = []
        if made:
            first = made[0]
            more = f" and {len(made) - 1} more run(s)" if len(made) > 1 else ""
            verb = "partly recorded (see below)" if unsent else "recorded"
            lines.append(f"tracking: {verb} in {self.backend.describe(first.id)}{more}")
        if unsent:
            lines.append(f"warning: tracking: not recorded in {self.backend.describe(None)}"
                         f" ({self.courier.first_error or 'no answer in time'}): "
                         + describe_unsent(unsent)
                         + "; the run folder's own files (metrics.csv, metrics.json, the model"
                         " file, reports) hold all of it")
        return lines


@dataclass
class TrackedRun:
    """A run in the tracker; its calls are queued and sent in order."""

    session: Session
    name: str
    record: Path | None
    parent: TrackedRun | None = None
    earlier: str | None = None  # the id of the run to continue
    id: str | None = None
    held: list[tuple[Metrics, str]] = field(default_factory=list)  # metrics not yet queued

    def ensure(self) -> str:
        """The run's id, creating (or reopening) the run first where it is not yet."""
        if self.id is not None:
            return self.id
        if self.parent is not None and self.parent.id is None:
            self.parent.ensure()
        parent = self.parent.id if self.parent is not None else None
        self.id = self.session.backend.create_run(self.name, parent, self.earlier)
        if self.record is not None:
            write_text(self.record, json.dumps({**self.session.key(), "run": self.id}, indent=2))
        return self.id

    def params(self, params: Mapping[str, Any], tags: Mapping[str, Any] | None = None) -> None:
        """Parameters (and tags, in the same request)."""
        values, labels = dict(params), {k: str(v) for k, v in (tags or {}).items()}
        self.session.send(self, "parameters", "", lambda run: self.session.backend.log_params(
            run, values, labels))

    def tags(self, tags: Mapping[str, Any]) -> None:
        values = {k: str(v) for k, v in tags.items()}
        self.session.send(self, "tags", "", lambda run: self.session.backend.set_tags(
            run, values))

    def metrics(self, metrics: Mapping[str, float], step: int, detail: str) -> None:
        """A step's metrics: held, and sent with the others held (:data:`METRICS_EVERY`)."""
        values = {metric_name(k): float(v) for k, v in metrics.items()
                  if isinstance(v, (int, float)) and not isinstance(v, bool)}
        self.held.append(((values, step, time.time()), detail))
        self.session.metrics_due()

    def send_metrics(self) -> None:
        """Queue the metrics held, in one job."""
        if not self.held:
            return
        records, details = [r for r, _ in self.held], [d for _, d in self.held]
        self.held = []
        self.session.metrics_sent = time.monotonic()
        self.session.send(self, "metrics", details, lambda run: self.session.backend.log_metrics(
            run, records))

    def file(self, path: Path, folder: str | None = None) -> None:
        self.send_metrics()  # the epochs are over: what they hold goes first
        if path.is_file():
            self.session.send(self, "files", path.name, lambda run: self.session.backend.log_file(
                run, path, folder))

    def text(self, text: str, name: str) -> None:
        self.session.send(self, "files", name, lambda run: self.session.backend.log_text(
            run, text, name))

    def finish(self, status: str) -> None:
        self.send_metrics()
        self.session.send(self, "end", status, lambda run: self.session.backend.finish(
            run, status))


def read_record(record: Path, key: Mapping[str, Any]) -> str | None:
    """The run id ``record`` keeps, where it is of the tracker ``key`` describes."""
    try:
        data = json.loads(record.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or any(data.get(k) != v for k, v in key.items()):
        return None
    run = data.get("run")
    return run if isinstance(run, str) and run else None


def describe_unsent(jobs: list[Job]) -> str:
    """What the jobs that were not sent would have recorded, grouped by kind."""
    grouped: dict[str, list[str]] = {}
    for job in jobs:
        grouped.setdefault(job.kind, []).append(job.detail)
    names = {"start": "the start of run(s)", "parameters": "parameters of", "tags": "tags of",
             "metrics": "metrics", "files": "files", "end": "the end of"}
    parts = []
    for kind, details in grouped.items():
        shown = ", ".join(details[:6]) + (f" and {len(details) - 6} more" if len(details) > 6
                                          else "")
        parts.append(f"{names.get(kind, kind)} {shown}")
    return "; ".join(parts)


def metric_name(name: str) -> str:
    """A metric name as trackers take it (MLflow: letters, digits, ``_ - . / :`` and spaces)."""
    return re.sub(r"[^\w\-./: ]", "_", name)[:250]


def flat_params(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested plain data as dotted paths; lists as JSON text."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        path = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out.update(flat_params(value, f"{path}."))
        elif isinstance(value, (list, tuple, Mapping)):
            out[path] = json.dumps(value)
        elif value is None:
            out[path] = "null"
        elif isinstance(value, float) and not math.isfinite(value):
            out[path] = str(value)
        else:
            out[path] = value
    return out


def epoch_metrics(row: Mapping[str, Any]) -> dict[str, float]:
    """An epoch's record as metrics.csv's columns (the epoch is the step)."""
    from .report import flat

    return {k: v for k, v in flat(dict(row)).items()
            if k != "epoch" and isinstance(v, (int, float)) and not isinstance(v, bool)}


def end_status(exc: BaseException | None) -> str:
    """How a run ended: finished, killed (interrupted) or failed."""
    if exc is None:
        return "finished"
    return "killed" if isinstance(exc, KeyboardInterrupt) else "failed"


def version_tags(spec: Any) -> dict[str, str]:
    """polymodal's, torch's and each plugin package's version, for a spec's components."""
    import torch

    from .. import __version__
    from .._registry import get_registry

    registry = get_registry()
    tags = {"polymodal.version": __version__, "torch.version": torch.__version__.split("+")[0]}
    for _, config in spec.components():
        record = registry.record_for_config(type(config))
        tags.setdefault(f"plugin.{record.package}", record.version)
    return tags


def hardware_tags(device: Any) -> dict[str, str]:
    """The CPU capability, or the GPU's name."""
    import torch

    if getattr(device, "type", "cpu") == "cuda":
        return {"device": str(device), "gpu": torch.cuda.get_device_name(device)}
    return {"device": str(device), "cpu_capability": torch.backends.cpu.get_cpu_capability()}


@dataclass
class Slot:
    """Where a run that cv or tune trains goes: a child of ``parent`` named ``name``, with
    ``tags``; the run is kept in ``run`` once made, so the caller can add to it."""

    session: Session
    parent: TrackedRun | None
    name: str
    tags: dict[str, str] = field(default_factory=dict)
    files: bool = True  # send the run's files (a trial's model file is removed soon after)
    run: TrackedRun | None = None

"""Runs recorded as TensorBoard event files (``pip install 'polymodal[tensorboard]'``).

A run is a folder under the log folder (a cv or tune run's children are folders inside its
own), written by ``torch.utils.tensorboard.SummaryWriter``: the metrics as scalars by epoch,
the parameters as hyperparameters (TensorBoard's HParams view) with the run's metrics, and the
tags as text. TensorBoard keeps no files: the model file and plot stay in the run folder.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .courier import Metrics

#: HParams' session status for each way a run ends.
STATUS = {"finished": "STATUS_SUCCESS", "failed": "STATUS_FAILURE", "killed": "STATUS_ABORTED"}
EVENTS = "events.out.tfevents.*"


class TensorBoardBackend:
    """One log folder."""

    def __init__(self, root: Path):
        self.root = root
        self.writers: dict[str, Any] = {}
        self.params: dict[str, dict[str, Any]] = {}
        self.declared: set[str] = set()  # runs whose hyperparameters are written

    def open(self) -> None:
        from torch.utils.tensorboard import SummaryWriter  # noqa: F401 - fails without tensorboard

        self.root.mkdir(parents=True, exist_ok=True)

    def create_run(self, name: str, parent: str | None, resume: str | None) -> str:
        self.open()
        from torch.utils.tensorboard import SummaryWriter

        folder = Path(resume) if resume else _free((Path(parent) if parent else self.root)
                                                   / _safe(name))
        folder.mkdir(parents=True, exist_ok=True)
        run = str(folder)
        self.writers[run] = SummaryWriter(run, flush_secs=10)
        return run

    def _writer(self, run: str) -> Any:
        if run not in self.writers:  # a resumed run of an earlier session
            from torch.utils.tensorboard import SummaryWriter

            self.writers[run] = SummaryWriter(run, flush_secs=10)
        return self.writers[run]

    def log_params(self, run: str, params: dict[str, Any],
                   tags: dict[str, str] | None = None) -> None:
        self.params[run] = {k: v if isinstance(v, (bool, int, float, str)) else str(v)
                            for k, v in params.items()}
        if tags:
            self.set_tags(run, tags)

    def set_tags(self, run: str, tags: dict[str, str]) -> None:
        rows = "\n".join(f"| {k} | {v} |" for k, v in tags.items())
        self._writer(run).add_text("tags", f"| tag | value |\n| --- | --- |\n{rows}", 0)

    def log_metrics(self, run: str, records: list[Metrics]) -> None:
        writer = self._writer(run)
        for metrics, step, at in records:
            self._declare(run, metrics)
            for key, value in metrics.items():
                writer.add_scalar(key, value, step, walltime=at)
        writer.flush()

    def _declare(self, run: str, metrics: dict[str, float]) -> None:
        """The run's hyperparameters, with the metrics HParams shows beside them (written once a
        run has metrics: the view needs their names)."""
        if run in self.declared or run not in self.params:
            return
        from torch.utils.tensorboard.summary import hparams

        experiment, start, _ = hparams(self.params[run], {k: 0.0 for k in metrics})
        writer = self._writer(run).file_writer
        writer.add_summary(experiment)
        writer.add_summary(start)
        self.declared.add(run)

    def log_file(self, run: str, path: Path, folder: str | None) -> None:
        pass  # no files in event logs: they stay in the run folder

    def log_text(self, run: str, text: str, name: str) -> None:
        self._writer(run).add_text(name, f"```\n{text}\n```", 0)

    def finish(self, run: str, status: str) -> None:
        from torch.utils.tensorboard.summary import hparams

        writer = self._writer(run)
        if run in self.declared:
            _, _, end = hparams(self.params[run], {})
            end.value[0].metadata.plugin_data.content = _end_content(status)
            writer.file_writer.add_summary(end)
        writer.close()
        self.writers.pop(run, None)

    def close(self) -> None:
        for writer in self.writers.values():
            writer.close()
        self.writers.clear()

    def describe(self, run: str | None) -> str:
        return f"TensorBoard log folder {run or self.root}"


def _end_content(status: str) -> bytes:
    from tensorboard.plugins.hparams import api_pb2, plugin_data_pb2

    data = plugin_data_pb2.HParamsPluginData(version=0)
    data.session_end_info.status = api_pb2.Status.Value(STATUS[status])
    return data.SerializeToString()


def _free(folder: Path) -> Path:
    """``folder``, or where it holds another run's events, ``folder-2``, ``folder-3``, ...: a new
    run never mixes its events with, nor removes, those of an earlier one."""
    candidate, number = folder, 1
    while any(candidate.glob(EVENTS)):
        number += 1
        candidate = folder.with_name(f"{folder.name}-{number}")
    return candidate


def _safe(name: str) -> str:
    """A run's name as one folder name."""
    return re.sub(r"[^\w.\-]+", "_", name).strip("._") or "run"

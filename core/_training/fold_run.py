"""One fold of a cross-validation: trained, scored in one pass, and kept on disk.

:func:`run_fold` trains a spec on every fold but one (as ``polymodal train`` would, its own
validation rows picking the best epoch) and scores the fold left out: each head's metrics,
overall and by the inputs each row holds, and the predictions of its rows beside their true
targets, from one inference pass. ``polymodal cv`` and ``polymodal tune --folds`` both run folds
through it.

A :class:`FoldRecord` is written into the fold's folder as the fold ends (``fold.json``, and
``predictions.csv``), so a cross-validation that stops (killed, failed, interrupted) keeps what
it finished: :class:`FinishedFolds` reuses those records when the same command runs again, and
starts afresh, with a note, where the spec, the table, the folds or the options changed.
"""

from __future__ import annotations

import csv
import hashlib
import json
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .._data.binding import Binding
from .._data.table import Table
from .._errors import SpecError
from .._files import write_text
from .._spec import ModelSpec
from .engine import CHECKPOINT, TrainCall, train_part
from .report import csv_text, json_safe
from .settings import RunSettings
from .tracking import RECORD as TRACKING

if TYPE_CHECKING:
    from .folds import FoldPlan

RECORD = "fold.json"
MODEL = "model.safetensors"
PREDICTIONS = "predictions.csv"
#: What a spec's folder of a cross-validation says it was run with (its spec, table, folds and
#: options), so a rerun knows whether its finished folds are still of the same run.
RUN_KEY = "cv_run.json"


@dataclass
class FoldRecord:
    """What one fold gave: each head's ``metrics``, its metrics ``by_presence`` of the inputs
    (``photo + record``, ``record only``), the ``predictions`` of the fold's rows (with row
    number, fold, group and true targets), and the seconds it took."""

    metrics: dict[str, dict[str, float]]
    by_presence: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    predictions: dict[str, list[Any]] = field(default_factory=dict)
    seconds: float = 0.0
    reused: bool = False  # read back from an earlier run
    #: with ``cv --explain``: head -> input variant (``photo absent``) -> metric -> its drop
    contributions: dict[str, dict[str, dict[str, float]]] | None = None

    def save(self, folder: Path) -> None:
        """The predictions, then the record: a fold with a ``fold.json`` is finished."""
        columns = list(self.predictions)
        write_text(folder / PREDICTIONS, csv_text(columns, zip(*self.predictions.values())))
        write_text(folder / RECORD, json.dumps(json_safe(
            {"metrics": self.metrics, "by_presence": self.by_presence,
             "seconds": round(self.seconds, 3), "contributions": self.contributions}),
            indent=2))

    @classmethod
    def load(cls, folder: Path) -> FoldRecord | None:
        """The record a finished fold left in ``folder``; None where it left none (or a broken
        one: the fold runs again)."""
        try:
            data = json.loads((folder / RECORD).read_text(encoding="utf-8"))
            with (folder / PREDICTIONS).open(newline="", encoding="utf-8") as handle:
                rows = list(csv.reader(handle))
        except (OSError, ValueError):
            return None
        columns: dict[str, list[Any]] = {name: [] for name in rows[0]} if rows else {}
        for row in rows[1:]:
            for name, value in zip(columns, row):
                columns[name].append(value)
        if "row" in columns:
            columns["row"] = [int(v) for v in columns["row"]]
        contributions = data.get("contributions")
        return cls(_numbers(data["metrics"]), data.get("by_presence", {}), columns,
                   float(data.get("seconds", 0.0)), reused=True,
                   contributions=None if contributions is None else {
                       head: _numbers(variants) for head, variants in contributions.items()})


def _numbers(metrics: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, float]]:
    """Metrics read back from JSON: an undefined one (saved as null) is NaN again."""
    return {head: {m: float("nan") if v is None else float(v) for m, v in values.items()}
            for head, values in metrics.items()}


def run_fold(spec: ModelSpec, table: Table, plan: FoldPlan, fold: int, fold_dir: Path,
             settings: RunSettings, say: Callable[[str], None], track: Any = None) -> FoldRecord:
    """Train on every fold but ``fold``, then score ``fold`` in one pass: its metrics and its
    predictions. A checkpoint left in ``fold_dir`` by an interrupted run of this fold is resumed
    from. ``track``: where the fold's training is recorded (a :class:`~.tracking.Slot`, or as
    for ``train``)."""
    from .inference import score

    started = time.perf_counter()
    test_table = table.take(plan.test_positions(fold))
    call = TrainCall(fold_dir / MODEL, fold_dir, resume=(fold_dir / CHECKPOINT).is_file(), say=say)
    result = train_part(spec, table.take(plan.train_positions(fold)), settings, call,
                        plan.split_by, track)
    scored = score(result.model, test_table, on_bad_row=settings.on_bad_row,
                   device=_device(spec, settings))
    predictions = _with_truth(scored.columns, test_table, fold, plan.group_column, Binding(spec))
    return FoldRecord(scored.metrics, scored.by_presence, predictions,
                      time.perf_counter() - started)


def explain_fold(record: FoldRecord, spec: ModelSpec, table: Table, plan: FoldPlan, fold: int,
                 fold_dir: Path, repeats: int, settings: RunSettings) -> None:
    """What each input contributes to the fold's model on the fold's rows (each input absent
    and permuted, as ``polymodal explain`` without its parts), kept in ``record``. A fold
    finished by a run without ``--explain`` is explained from its saved model."""
    from .explain import explain

    found = explain(fold_dir / MODEL, table.take(plan.test_positions(fold)), repeats=repeats,
                    seed=int(settings.option(spec, "seed")), device=_device(spec, settings),
                    on_bad_row=settings.on_bad_row, parts=False)
    record.contributions = found.drops()


def _device(spec: ModelSpec, settings: RunSettings) -> str:
    from .distributed import resolve_device

    return str(resolve_device(str(settings.option(spec, "device"))))


def settled(spec: ModelSpec, table: Table, source: str | None = None) -> ModelSpec:
    """``spec`` with what its heads fix from the whole table before it is cut into folds (the
    class names: a fold whose training rows lack a class still has an output for it)."""
    try:
        return Binding(spec).settle(table)
    except SpecError as exc:
        raise (exc.with_source(source) if source else exc) from None


def say_once(say: Callable[[str], None], shown: set[str],
             leave_out: tuple[str, ...] = ()) -> Callable[[str], None]:
    """``say`` that gives each note (the same for every fold or trial) only the first time, and
    no line that begins as one of ``leave_out``."""
    def said(line: str) -> None:
        if line.startswith(leave_out):
            return
        if line.startswith(("note:", "precision auto:", "warning:")):
            # The same note with other counts (each fold's rows) is said once too.
            key = re.sub(r"\d+", "#", line)
            if key in shown:
                return
            shown.add(key)
        say(line)
    return said


def _with_truth(predicted: dict[str, list[Any]], table: Table, fold: int, group: str | None,
                binding: Binding) -> dict[str, list[Any]]:
    """Prediction columns after the row number, its fold, its group and each true target
    (``COLUMN_true``)."""
    position = {int(r): i for i, r in enumerate(table.rows)}
    at = [position[int(r)] for r in predicted.get("row", [])]
    columns: dict[str, list[Any]] = {"row": [int(r) for r in predicted.get("row", [])],
                                     "fold": [fold + 1] * len(at)}
    if group:
        columns[group] = [_plain(table.columns[group][i]) for i in at]
    for column in dict.fromkeys(c for b in binding.heads for c in b.codec.columns()):
        columns[f"{column}_true"] = [_plain(table.columns[column][i]) for i in at]
    columns.update({k: v for k, v in predicted.items() if k != "row"})
    return columns


def _plain(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


def table_fingerprint(table: Table) -> str:
    """What identifies a table's contents: its columns' names and values, in order."""
    digest = hashlib.sha256(table.source.encode())
    for name, values in table.columns.items():
        digest.update(f"\x1e{name}\x1f".encode())
        for value in values:
            data = value.tobytes() if isinstance(value, np.ndarray) else str(value).encode()
            digest.update(data + b"\x1f")
    digest.update(table.rows.astype(np.int64).tobytes())
    return digest.hexdigest()[:20]


class FinishedFolds:
    """The folds a spec's folder holds from an earlier run of the same cross-validation.

    ``key`` is what the run is: the spec, the table's contents, each row's fold, the options and
    the bad-row policy. Where the folder's key differs, its fold records and checkpoints are
    removed (the fold models are overwritten as the folds run again)."""

    def __init__(self, folder: Path, key: Mapping[str, Any], say: Callable[[str], None]):
        self.folder = folder
        text = json.dumps(json_safe(dict(key)), sort_keys=True, default=str)
        try:
            known = (folder / RUN_KEY).read_text(encoding="utf-8")
        except OSError:
            known = None
        if known is not None and known != text:
            say(f"note: {folder} holds folds of a cross-validation with another spec, table,"
                " folds or options: they are run afresh")
            self._forget()
        write_text(folder / RUN_KEY, text)

    def _forget(self) -> None:
        for fold_dir in self.folder.glob("fold_*"):
            for name in (RECORD, PREDICTIONS, CHECKPOINT, TRACKING):
                (fold_dir / name).unlink(missing_ok=True)

    def record(self, fold: int) -> FoldRecord | None:
        return FoldRecord.load(self.folder / f"fold_{fold + 1}")


def run_key(spec: ModelSpec, table: Table, plan: FoldPlan, settings: RunSettings) -> dict[str, Any]:
    """What makes a spec's cross-validation the same run, for :class:`FinishedFolds`."""
    folds = hashlib.sha256(plan.fold_of_row.astype(np.int64).tobytes()).hexdigest()[:20]
    data = spec.to_dict()
    data.get("training", {}).pop("track", None)  # where it is recorded does not change it
    return {"spec": data, "table": table_fingerprint(table), "folds": folds,
            "split_by": plan.split_by, "options": dict(settings.overrides),
            "on_bad_row": settings.on_bad_row}

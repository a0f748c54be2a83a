"""The record of a training run: one :class:`EpochRecord` per epoch, and where the run stands.

``EpochRecord.to_dict()`` is the form users see (``TrainResult.history``, ``metrics.json``, one
row of ``metrics.csv``) and the form a checkpoint keeps; ``from_dict`` reads it back.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from .._errors import SpecError
from .._spec import unknown_metric


@dataclass
class Validation:
    """An epoch's metrics on the validation rows."""

    loss: float  # the heads' losses, weighted as in training
    heads: dict[str, dict[str, float]]  # head -> metric -> value (each head's own loss too)
    #: head -> inputs each row holds (``photo + record``) -> {"rows", "metrics"}; only where
    #: some validation rows lack an input
    by_presence: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    #: ``fusion.auxiliary``: each head's per-input copy (``head@input``) -> metric -> value
    auxiliary: dict[str, dict[str, float]] = field(default_factory=dict)
    #: validation rows whose outputs were not numbers (NaN or infinite): a diverged model
    nonfinite_rows: int = 0


@dataclass
class EpochRecord:
    epoch: int
    train_loss: float  # mean over every training row of every process
    lr: float  # the learning rate the epoch started with (the first parameter group's)
    seconds: float
    rows_per_s: float
    val: Validation | None = None

    def to_dict(self) -> dict[str, Any]:
        row: dict[str, Any] = {"epoch": self.epoch, "train_loss": self.train_loss, "lr": self.lr,
                               "seconds": self.seconds, "rows_per_s": self.rows_per_s}
        if self.val is not None:
            row["val"] = {"loss": self.val.loss, **self.val.heads}
            if self.val.by_presence:
                row["val_by_presence"] = self.val.by_presence
            if self.val.auxiliary:
                row["val_auxiliary"] = self.val.auxiliary
        return row

    @classmethod
    def from_dict(cls, row: dict[str, Any]) -> EpochRecord:
        val = None
        if "val" in row:
            heads = {k: v for k, v in row["val"].items() if k != "loss"}
            val = Validation(row["val"]["loss"], heads, row.get("val_by_presence", {}),
                             row.get("val_auxiliary", {}))
        return cls(row["epoch"], row["train_loss"], row["lr"], row["seconds"], row["rows_per_s"], val)

    def value(self, metric: str) -> float:
        """The monitored ``metric`` (``loss`` or ``head.name``); without validation rows, the
        training loss."""
        if self.val is None:
            return self.train_loss
        if metric == "loss":
            return self.val.loss
        head, name = metric.split(".", 1)
        value = self.val.heads.get(head, {}).get(name)
        if value is None:
            raise SpecError([unknown_metric(head, name, sorted(self.val.heads.get(head, {})))])
        return float(value)


@dataclass
class Progress:
    """Where a run stands after its last finished epoch: what a checkpoint restores."""

    history: list[EpochRecord] = field(default_factory=list)
    best_epoch: int = 0
    best_value: float = math.nan
    stale: int = 0  # epochs since the best one

    @property
    def epoch(self) -> int:
        """The last finished epoch (0 before the first)."""
        return self.history[-1].epoch if self.history else 0

    def add(self, record: EpochRecord, value: float, higher_is_better: bool) -> bool:
        """Add an epoch's record and its monitored value; whether it is the best so far."""
        self.history.append(record)
        improved = self.best_epoch == 0 or (
            value > self.best_value if higher_is_better else value < self.best_value)
        if improved:
            self.best_epoch, self.best_value, self.stale = record.epoch, value, 0
        else:
            self.stale += 1
        return improved

    def out_of_patience(self, patience: int | None) -> bool:
        if not patience:
            return False
        return self.stale >= patience

    def dicts(self) -> list[dict[str, Any]]:
        return [r.to_dict() for r in self.history]

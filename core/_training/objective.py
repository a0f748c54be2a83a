"""Which way is better for the monitored metric, and its value on validation rows: the one
place training, cross-validation and search ask. Directions come from what each head declares."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .._data.binding import Binding
    from .._options import TrainingOptions


def monitored(training: TrainingOptions, binding: Binding) -> tuple[str, bool]:
    """The metric that picks a run's best epoch and compares trials (``early_stopping.metric``),
    and whether higher is better (``mode: auto``: as its head declares)."""
    stopping = training.early_stopping
    if stopping.mode != "auto":
        return stopping.metric, stopping.mode == "max"
    return stopping.metric, binding.higher_is_better(stopping.metric)


def weighted_loss(metrics: Mapping[str, Mapping[str, float]], loss_weights: Mapping[str, float]) -> float:
    """The validation ``loss``: each head's loss weighted by ``loss_weights`` (default 1)."""
    return float(sum(loss_weights.get(h, 1.0) * m["loss"] for h, m in metrics.items()))


def value_of(metrics: dict[str, dict[str, float]], metric: str, spec: Any) -> float:
    """The value of ``metric`` (``loss`` or ``HEAD.NAME``) in per-head metrics, as the engine
    reads it on validation rows."""
    if metric == "loss":
        return weighted_loss(metrics, spec.training.loss_weights)
    head, name = metric.split(".", 1)
    return float(metrics.get(head, {}).get(name, math.nan))

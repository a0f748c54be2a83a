"""Which way is better for a metric, and its value: the one place cross-validation and search
ask. Directions come from what each head declares, as the training engine reads them."""

from __future__ import annotations

import math
from typing import Any

from .._data.binding import Binding


def monitored(spec: Any) -> tuple[str, bool]:
    """The metric that picks a run's best epoch and compares trials (``early_stopping.metric``),
    and whether higher is better."""
    stopping = spec.training.early_stopping
    if stopping.mode != "auto":
        return stopping.metric, stopping.mode == "max"
    return stopping.metric, Binding(spec).higher_is_better(stopping.metric)


def value_of(metrics: dict[str, dict[str, float]], metric: str, spec: Any) -> float:
    """The value of ``metric`` (``loss`` or ``HEAD.NAME``) in per-head metrics, as the engine
    reads it on validation rows (``loss``: the heads' losses weighted by ``loss_weights``)."""
    if metric == "loss":
        weights = spec.training.loss_weights
        return float(sum(weights.get(h, 1.0) * m["loss"] for h, m in metrics.items()))
    head, name = metric.split(".", 1)
    return float(metrics.get(head, {}).get(name, math.nan))

"""Which way is better for a metric: the one place cross-validation and search ask.

It follows the training engine's rule (``early_stopping.mode``, else a metric's name); once heads
declare each metric's direction, this is what to point at them.
"""

from __future__ import annotations

import math
from typing import Any

from .engine import higher_is_better


def monitored(spec: Any) -> tuple[str, bool]:
    """The metric that picks a run's best epoch and compares trials (``early_stopping.metric``),
    and whether higher is better."""
    stopping = spec.training.early_stopping
    higher = higher_is_better(stopping.metric) if stopping.mode == "auto" else stopping.mode == "max"
    return stopping.metric, higher


def higher(metric: str) -> bool:
    """Whether higher is better for a reported metric (``loss``, ``accuracy``, ``rmse``, ...)."""
    return higher_is_better(metric)


def value_of(metrics: dict[str, dict[str, float]], metric: str, spec: Any) -> float:
    """The value of ``metric`` (``loss`` or ``HEAD.NAME``) in per-head metrics, as the engine
    reads it on validation rows (``loss``: the heads' losses weighted by ``loss_weights``)."""
    if metric == "loss":
        weights = spec.training.loss_weights
        return float(sum(weights.get(h, 1.0) * m["loss"] for h, m in metrics.items()))
    head, name = metric.split(".", 1)
    return float(metrics.get(head, {}).get(name, math.nan))

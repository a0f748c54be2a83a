"""Metrics of classification, multi-label classification and regression, with numpy only
(no scikit-learn), each declared with its direction.

Heads pick theirs from here in their target codecs (``declared_metrics``, and the function
that computes them); every function takes plain arrays.
"""

from __future__ import annotations

import math

import numpy as np

from polymodal.plugin import Metric


def confusion_matrix(target: np.ndarray, predicted: np.ndarray, classes: int) -> np.ndarray:
    """``[true class, predicted class]`` counts."""
    matrix = np.zeros((classes, classes), dtype=np.int64)
    np.add.at(matrix, (np.asarray(target, np.int64), np.asarray(predicted, np.int64)), 1)
    return matrix


def binary_auroc(positive: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve (the Mann-Whitney U statistic, ties counted half); NaN when
    only one class is present."""
    positive = np.asarray(positive, bool)
    n_pos = int(positive.sum())
    n_neg = positive.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return math.nan
    order = np.argsort(scores, kind="mergesort")
    sorted_scores = np.asarray(scores)[order]
    ranks = np.empty(len(scores), dtype=np.float64)
    # Average ranks over runs of equal scores (1-based).
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_scores)) + 1]
    ends = np.r_[starts[1:], len(scores)]
    for start, end in zip(starts, ends):
        ranks[order[start:end]] = (start + end + 1) / 2.0
    u = ranks[positive].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


CLASSIFICATION_METRICS = (
    Metric("accuracy", higher_is_better=True,
           description="Share of rows whose most probable class is right."),
    Metric("balanced_accuracy", higher_is_better=True,
           description="Mean recall of the classes present."),
    Metric("macro_f1", higher_is_better=True,
           description="Mean F1 of the classes present in target or prediction."),
    Metric("auroc", higher_is_better=True,
           description="Area under the ROC curve. With more than two classes: each class"
           " against the rest, averaged over the classes that have rows in the rows evaluated"
           " (a class with no row there is left out; one with one or two rows makes the"
           " average noisy). Not defined when the rows hold one class only."),
)
MULTILABEL_METRICS = (
    Metric("subset_accuracy", higher_is_better=True,
           description="Share of rows with every label right."),
    Metric("hamming_accuracy", higher_is_better=True,
           description="Share of right label decisions."),
    Metric("micro_f1", higher_is_better=True, description="F1 over every label decision."),
    Metric("macro_f1", higher_is_better=True,
           description="Mean F1 of the labels present in target or prediction."),
    Metric("auroc", higher_is_better=True,
           description="Mean area under the ROC curve of the labels with both outcomes."),
)
REGRESSION_METRICS = (
    Metric("rmse", higher_is_better=False,
           description="Root mean squared error, in the target's units."),
    Metric("mae", higher_is_better=False,
           description="Mean absolute error, in the target's units."),
    Metric("r2", higher_is_better=True, description="Coefficient of determination."),
)


def _undefined(metrics: tuple[Metric, ...]) -> dict[str, float]:
    """Every metric NaN (no rows to compute them on)."""
    return {m.name: math.nan for m in metrics}


def classification_metrics(probabilities: np.ndarray, target: np.ndarray) -> dict[str, float]:
    """accuracy, balanced_accuracy (mean recall of the classes present), macro_f1 (over the
    classes present in target or prediction), auroc (binary; one-vs-rest macro average for
    more classes, over classes present)."""
    probabilities = np.asarray(probabilities, np.float64)
    target = np.asarray(target, np.int64)
    if target.size == 0:
        return _undefined(CLASSIFICATION_METRICS)
    classes = probabilities.shape[1]
    predicted = probabilities.argmax(axis=1)
    matrix = confusion_matrix(target, predicted, classes)
    true_counts = matrix.sum(axis=1)
    predicted_counts = matrix.sum(axis=0)
    hits = np.diag(matrix)
    present = true_counts > 0
    recall = hits[present] / true_counts[present]
    seen = present | (predicted_counts > 0)
    f1 = 2 * hits[seen] / (true_counts[seen] + predicted_counts[seen])
    if classes == 2:
        auroc = binary_auroc(target == 1, probabilities[:, 1])
    else:
        scores = [binary_auroc(target == c, probabilities[:, c]) for c in range(classes)]
        valid = [s for s in scores if not math.isnan(s)]
        auroc = float(np.mean(valid)) if valid else math.nan
    return {
        "accuracy": float(hits.sum() / target.size),
        "balanced_accuracy": float(recall.mean()),
        "macro_f1": float(f1.mean()),
        "auroc": auroc,
    }


def multilabel_metrics(probabilities: np.ndarray, target: np.ndarray,
                       threshold: float = 0.5) -> dict[str, float]:
    """For ``[N, labels]`` probabilities and 0/1 targets: subset_accuracy (every label of a row
    right), hamming_accuracy (share of right label decisions), micro_f1, macro_f1 (over the
    labels present in target or prediction), auroc (macro average over the labels with both
    positive and negative rows)."""
    probabilities = np.asarray(probabilities, np.float64)
    target = np.asarray(target) >= 0.5
    if target.shape[0] == 0:
        return _undefined(MULTILABEL_METRICS)
    predicted = probabilities >= threshold
    hits = (predicted & target).sum(axis=0)
    true_counts, predicted_counts = target.sum(axis=0), predicted.sum(axis=0)
    seen = (true_counts + predicted_counts) > 0
    per_label_f1 = 2 * hits[seen] / (true_counts[seen] + predicted_counts[seen])
    total = true_counts.sum() + predicted_counts.sum()
    scores = [binary_auroc(target[:, i], probabilities[:, i]) for i in range(target.shape[1])]
    valid = [s for s in scores if not math.isnan(s)]
    return {
        "subset_accuracy": float((predicted == target).all(axis=1).mean()),
        "hamming_accuracy": float((predicted == target).mean()),
        "micro_f1": float(2 * hits.sum() / total) if total else 1.0,
        "macro_f1": float(per_label_f1.mean()) if seen.any() else 1.0,
        "auroc": float(np.mean(valid)) if valid else math.nan,
    }


def regression_metrics(predicted: np.ndarray, target: np.ndarray) -> dict[str, float]:
    """rmse, mae and r2 (1 - residual / total sum of squares; over every output)."""
    if len(target) == 0:
        return _undefined(REGRESSION_METRICS)
    predicted = np.asarray(predicted, np.float64).reshape(len(predicted), -1)
    target = np.asarray(target, np.float64).reshape(len(target), -1)
    error = predicted - target
    total = ((target - target.mean(axis=0)) ** 2).sum()
    r2 = 1.0 - float((error**2).sum() / total) if total > 0 else math.nan
    return {
        "rmse": float(np.sqrt((error**2).mean())),
        "mae": float(np.abs(error).mean()),
        "r2": r2,
    }

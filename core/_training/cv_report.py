"""What a cross-validation found, and how it reads: each spec's scores fold by fold
(:class:`SpecScores`), and the run's result (:class:`CVResult`) as a JSON summary and as the
table ``polymodal cv`` prints (mean ± sd over the folds, the paired differences between specs,
the metrics by the inputs each row holds, what each input contributes)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .._data.binding import Binding
from .._spec import ModelSpec
from .folds import FoldPlan
from .inference import presence_table
from .report import aligned, json_safe

if TYPE_CHECKING:
    from .fold_run import FoldRecord


@dataclass
class SpecScores:
    """One spec's scores on the held-out folds: ``folds[k][head][metric]``."""

    name: str
    spec: ModelSpec
    source: str | None = None
    folds: list[dict[str, dict[str, float]]] = field(default_factory=list)
    seconds: float = 0.0
    predictions: Path | None = None
    #: per fold: head -> presence pattern of its inputs -> {"rows", "metrics"}
    by_presence: list[dict[str, dict[str, dict[str, Any]]]] = field(default_factory=list)
    #: per fold (with ``explain``): head -> input variant -> metric -> its drop
    contributions: list[dict[str, dict[str, dict[str, float]]]] = field(default_factory=list)

    def add(self, record: FoldRecord, explained: bool) -> None:
        """The next fold's record (with its contributions, where folds are explained)."""
        self.folds.append(record.metrics)
        self.by_presence.append(record.by_presence)
        if explained:
            self.contributions.append(record.contributions or {})
        self.seconds += record.seconds

    def values(self, head: str, metric: str) -> np.ndarray:
        return np.array([f.get(head, {}).get(metric, math.nan) for f in self.folds], np.float64)

    def metrics(self) -> dict[str, list[str]]:
        """Metric names by head, in the order the heads report them."""
        names: dict[str, list[str]] = {}
        for fold in self.folds:
            for head, values in fold.items():
                names.setdefault(head, [])
                names[head] += [m for m in values if m not in names[head]]
        return names

    def mean_sd(self) -> dict[str, dict[str, tuple[float, float]]]:
        return {head: {m: mean_sd(self.values(head, m)) for m in metrics}
                for head, metrics in self.metrics().items()}

    def presence_summary(self) -> dict[str, dict[str, dict[str, Any]]]:
        """Each head's metrics by presence pattern: rows over every fold, and each metric's mean
        and sd over the folds that hold such rows."""
        out: dict[str, dict[str, dict[str, Any]]] = {}
        for fold in self.by_presence:
            for head, kinds in fold.items():
                for kind, found in kinds.items():
                    entry = out.setdefault(head, {}).setdefault(kind, {"rows": 0, "values": {}})
                    entry["rows"] += found["rows"]
                    for metric, value in found["metrics"].items():
                        entry["values"].setdefault(metric, []).append(
                            math.nan if value is None else value)
        for kinds in out.values():
            for entry in kinds.values():
                values = entry.pop("values")
                pairs = {m: mean_sd(np.array(v, np.float64)) for m, v in values.items()}
                entry["mean"] = {m: v[0] for m, v in pairs.items()}
                entry["sd"] = {m: v[1] for m, v in pairs.items()}
        return out

    def contribution_summary(self) -> dict[str, dict[str, dict[str, tuple[float, float]]]]:
        """head -> input variant -> metric -> mean and sd of its drop over the folds."""
        gathered: dict[str, dict[str, dict[str, list[float]]]] = {}
        for fold in self.contributions:
            for head, variants in fold.items():
                for label, drops in variants.items():
                    for metric, drop in drops.items():
                        gathered.setdefault(head, {}).setdefault(label, {}).setdefault(
                            metric, []).append(drop)
        return {head: {label: {m: mean_sd(np.array(v, np.float64)) for m, v in drops.items()}
                       for label, drops in variants.items()}
                for head, variants in gathered.items()}


def mean_sd(values: np.ndarray) -> tuple[float, float]:
    """Mean and sample standard deviation over the folds where the value is defined (an AUROC
    is not where a fold holds one class only)."""
    defined = values[~np.isnan(values)]
    if len(defined) == 0:
        return math.nan, math.nan
    return float(defined.mean()), float(defined.std(ddof=1)) if len(defined) > 1 else math.nan


@dataclass
class CVResult:
    """What a cross-validation produced; ``scores[0]`` is the first spec, the one the others
    are compared with."""

    output: Path
    plan: FoldPlan
    rows: int
    scores: list[SpecScores]
    seconds: float
    hint: str | None = None
    absent: str | None = None  # classes of the first head's target missing from some fold
    untrained: str | None = None  # classes missing from some fold's training rows
    unread: str | None = None  # rows some spec cannot read, left out of every spec (skip)
    #: where the runs were recorded in an experiment tracker, and what could not be sent
    tracking: list[str] = field(default_factory=list)

    def differences(self, other: SpecScores) -> dict[str, dict[str, dict[str, Any]]]:
        """Fold-by-fold differences first spec minus ``other``: mean, sd, and in how many folds
        the first spec was better (by each metric's direction)."""
        first = self.scores[0]
        binding = Binding(first.spec)
        out: dict[str, dict[str, dict[str, Any]]] = {}
        for head, metrics in first.metrics().items():
            for metric in metrics:
                delta = first.values(head, metric) - other.values(head, metric)
                defined = delta[~np.isnan(delta)]
                higher = binding.higher_is_better(f"{head}.{metric}")
                better = int((defined > 0).sum() if higher else (defined < 0).sum())
                mean, sd = mean_sd(delta)
                out.setdefault(head, {})[metric] = {"mean": mean, "sd": sd, "first_better": better,
                                                    "folds": int(len(defined))}
        return out

    def summary(self) -> dict[str, Any]:
        first = self.scores[0]
        return json_safe({
            "output": str(self.output), "rows": self.rows, "folds": self.plan.folds,
            "fold_rows": np.bincount(self.plan.fold_of_row, minlength=self.plan.folds).tolist(),
            "grouped_by": self.plan.group_column, "folds_from_column": self.plan.from_column,
            "stratified_by": self.plan.stratified_by, "seconds": round(self.seconds, 1),
            "specs": {s.name: {
                "source": s.source, "seconds": round(s.seconds, 1), "folds": s.folds,
                "mean": {h: {m: v[0] for m, v in ms.items()} for h, ms in s.mean_sd().items()},
                "sd": {h: {m: v[1] for m, v in ms.items()} for h, ms in s.mean_sd().items()},
                "by_presence": s.presence_summary(), "folds_by_presence": s.by_presence,
                "contributions": {h: {label: {m: {"drop": v[0], "drop_sd": v[1]}
                                              for m, v in drops.items()}
                                      for label, drops in variants.items()}
                                  for h, variants in s.contribution_summary().items()},
                "folds_contributions": s.contributions,
                "predictions": str(s.predictions) if s.predictions else None,
            } for s in self.scores},
            "differences": {f"{first.name} - {s.name}": self.differences(s) for s in self.scores[1:]},
            "note": self.hint,
            "absent_classes": self.absent,
            "untrained_classes": self.untrained,
            "rows_left_out": self.unread,
        })

    def _metric_notes(self) -> list[str]:
        """How each head computes each metric (as the head declares), and in how many folds a
        metric could not be computed (left out of its mean)."""
        first = self.scores[0]
        binding = Binding(first.spec)
        lines = ["", "metrics, as each head computes them:"]
        for head, metrics in first.metrics().items():
            said = {m.name: m.description for m in binding.head_codec(head).declared_metrics}
            for metric in metrics:
                undefined = max(int(np.isnan(s.values(head, metric)).sum()) for s in self.scores)
                whose = " of some spec" if len(self.scores) > 1 else ""
                gap = (f" Not defined in {undefined} of {self.plan.folds} fold(s){whose}: left"
                       " out of the mean." if undefined else "")
                text = said.get(metric, "the head's loss" if metric == "loss" else "")
                lines.append(f"  {head}.{metric}: {text}{gap}".rstrip())
        return lines

    def _presence_lines(self) -> list[str]:
        """Each spec's head metrics by the inputs each row holds, mean ± sd over the folds."""
        lines = []
        for spec in self.scores:
            for head, kinds in spec.presence_summary().items():
                shown = {k: {"rows": v["rows"], "metrics": {
                    m: _pm(v["mean"][m], v["sd"][m]) for m in v["mean"]}} for k, v in kinds.items()}
                lines += ["", f"head {head}, {spec.name}, by the inputs each row holds"
                          " (mean ± sd over folds):", presence_table(shown)]
        return lines

    def _contribution_lines(self) -> list[str]:
        """Each spec's per-input drops (``--explain``), mean ± sd over the folds."""
        lines = []
        for spec in self.scores:
            for head, variants in spec.contribution_summary().items():
                metrics = list(next(iter(variants.values()), {}))
                rows = [["drop in", *metrics]]
                rows += [[label, *(_pm(*drops[m], signed=True) for m in metrics)]
                         for label, drops in variants.items()]
                lines += ["", f"head {head}, {spec.name}, what each input contributes on the"
                          " held-out fold (drop with the input absent or permuted; mean ± sd"
                          " over folds):"]
                lines += ["  " + line for line in aligned(rows)]
        return lines

    def table(self) -> str:
        """Each head's metrics as mean ± sd over the folds, one column a spec, then the paired
        differences of the first spec with each other one."""
        lines = [f"{self.rows} rows, {self.plan.describe()}; {self.seconds:.0f} s"]
        lines += [f"note: {n}" for n in (self.unread, self.hint, self.absent, self.untrained)
                  if n]
        first = self.scores[0]
        others = {s.name: self.differences(s) for s in self.scores[1:]}
        for head, metrics in first.metrics().items():
            header = [f"head {head}", *(s.name for s in self.scores),
                      *(f"{first.name} - {name}" for name in others)]
            rows = [header]
            for metric in metrics:
                cells = [metric]
                for s in self.scores:
                    cells.append(_pm(*mean_sd(s.values(head, metric))))
                for diff in others.values():
                    d = diff[head][metric]
                    cells.append(f"{_pm(d['mean'], d['sd'], signed=True)}"
                                 f" ({d['first_better']}/{d['folds']} better)")
                rows.append(cells)
            lines.append("")
            lines += aligned(rows)
        lines += self._presence_lines()
        lines += self._contribution_lines()
        lines += self._metric_notes()
        if len(self.scores) > 1:
            lines.append("\ndifferences are paired by fold (first spec minus the other); 'better'"
                         " follows each metric's direction; training took "
                         + ", ".join(f"{s.name} {s.seconds:.0f} s" for s in self.scores))
        return "\n".join(lines)


def _pm(mean: float, sd: float, signed: bool = False) -> str:
    if math.isnan(mean):
        return "-"
    text = f"{mean:+.4f}" if signed else f"{mean:.4f}"
    return text + (f" ± {sd:.4f}" if not math.isnan(sd) else "")


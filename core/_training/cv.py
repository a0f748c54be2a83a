"""Cross-validation behind ``polymodal cv`` and :func:`polymodal.cv`.

The table is cut into K folds once (rows of one group stay in one fold; optionally each fold gets
the same share of every class of the first head's target). For each fold a model is trained on
the other folds, as ``polymodal train`` would train it (its own validation rows, drawn from the
training folds and grouped the same way, pick the best epoch), then scored on the fold left out
and asked for its predictions there. Several specs run on the same folds, so their scores can be
compared fold by fold (paired differences).

What a run leaves in its folder: ``report.json`` (everything), ``scores.csv`` (one line per
spec, fold, head and metric), ``folds.csv`` (each row's fold), ``oof_predictions.csv`` (the
pooled out-of-fold predictions; one file per spec when several are compared) and, per spec and
fold, the model file and its training logs. A fold's checkpoint is removed when the fold ends,
unless asked to keep it.
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .._assembly import plan as plan_model
from .._data.binding import Binding
from .._data.table import Table, is_missing, read_table
from .._errors import DataError, OutputError, SpecError
from .._files import write_text
from .._output_lock import output_lock
from .._spec import ModelSpec, load_spec
from .engine import CHECKPOINT, with_options
from .fold_run import FinishedFolds, FoldRecord, explain_fold, run_fold, run_key
from .folds import (
    SPLIT_HINT_START,
    FoldPlan,
    assign_folds,
    folds_from_column,
    group_column,
    group_hint,
    group_keys,
    group_like_columns,
)
from .inference import fail_on, presence_table
from .report import aligned, csv_text, json_safe
from .track_groups import CvTracking


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


SpecLike = ModelSpec | str | Path | Mapping[str, Any]


def cv(
    spec: SpecLike,
    data: Any,
    *,
    folds: int | None = None,
    group_by: str | None = None,
    fold_column: str | None = None,
    stratify: bool = False,
    compare: Sequence[SpecLike] = (),
    output: str | Path | None = None,
    options: Mapping[str, Any] | None = None,
    on_bad_row: str = "fail",
    keep_checkpoints: bool = False,
    explain: int = 0,
    progress: bool = False,
    log: Callable[[str], None] | None = None,
    on_fold: Callable[[str, int, dict[str, dict[str, float]]], None] | None = None,
    track: Any = None,
) -> CVResult:
    """Cross-validate ``spec`` (and each spec in ``compare``, on the same folds) on the table
    ``data``: K models (``folds``, default 5), each trained on K-1 folds and scored on the
    fold left out.

    Folds keep the groups of ``group_by`` (default: the spec's ``training.group_by``) together,
    or are named by ``fold_column`` (each fold's validation split then keeps the groups of
    ``group_by`` whole); ``stratify`` balances the classes of the first head's
    target over the folds. ``options`` override every spec's ``training`` section (``{"epochs":
    3}``); the folds are drawn from ``training.seed``. Results go to ``output`` (default:
    ``<spec name>.cv`` in the current folder). ``on_fold(spec_name, fold, metrics)`` is called
    as each fold is scored. With ``explain`` (a number of repeats), each fold's model is also
    explained on its held-out fold: what each input contributes (absent and permuted), in the
    report as mean ± sd over the folds. ``track`` records the cross-validation in an
    experiment tracker (as for :func:`polymodal.train`; default: the first spec's
    ``training.track``): a parent run, a child run for each spec and fold.
    """
    say = log or (lambda _: None)
    started = time.perf_counter()
    specs = _named([spec, *compare])
    first = specs[0][1]
    out = Path(output) if output is not None else Path(f"{first.name}.cv")
    table = read_table(data)
    options = {k: v for k, v in (options or {}).items() if v is not None}
    for _, each, source in specs:  # every spec, before the first one's folds train
        try:
            Binding(each).require_columns(table, targets=True)
            plan_model(each)  # its parts connect
            with_options(each, options)  # and take the options
        except SpecError as exc:
            raise (exc.with_source(source) if source else exc) from None
    table, unread = _readable_by_every_spec(table, specs, on_bad_row)
    if unread:
        say(f"note: {unread}")
    # Each head's classes from the whole table: every fold's model has an output for each.
    specs = [(name, settled(each, table, source), source) for name, each, source in specs]
    first = specs[0][1]
    seed = int(options.get("seed", first.training.seed))
    plan = plan_folds(table, first, folds=folds, group_by=group_by, fold_column=fold_column,
                      stratify=stratify, seed=seed)
    hint = None
    if plan.split_by is None:
        hint = _fold_hint(table, [s for _, s, _ in specs], plan.from_column)
        if hint:
            say(f"note: {hint}")
    absent, untrained = _absent_classes(table, first, plan), untrained_classes(table, first, plan)
    for note in (absent, untrained):
        if note:
            say(f"note: {note}")
    if (out / "study.db").exists() or (out / "trials").is_dir():  # a search's folder
        raise OutputError(f"{out}: this folder holds a hyperparameter search (study.db,"
                          " trials/); give the cross-validation another -o")
    # One cross-validation a folder: another one there would mix its folds into this report.
    with output_lock(out, what="cross-validation folder", note=say), \
            CvTracking.opened(track, first, out, say) as tracking:
        _write_folds(out, table, plan)
        say(f"{len(table)} rows, {plan.describe()}; results in {out}")
        if tracking is not None:
            tracking.start(specs, plan, len(table), options)
        scores: list[SpecScores] = []

        def result() -> CVResult:
            return CVResult(out, plan, len(table), scores, time.perf_counter() - started, hint,
                            absent, untrained, unread)

        for name, each, source in specs:
            predictions = out / ("oof_predictions.csv" if len(specs) == 1
                                 else f"{name}_oof_predictions.csv")
            try:
                scores.append(_run_spec(name, each, source, table, plan, out, predictions,
                                        options, on_bad_row, keep_checkpoints, explain, progress,
                                        say, on_fold, tracking))
            except BaseException:
                if scores:  # the specs that finished keep their report
                    _write_report(result())
                    say(f"note: the report in {out} holds the specs that finished"
                        f" ({', '.join(s.name for s in scores)}); a rerun reuses every finished"
                        " fold")
                raise
        finished = result()
        _write_report(finished)
        if tracking is not None:
            tracking.result = finished
    finished.tracking = tracking.lines if tracking is not None else []
    return finished


def _readable_by_every_spec(table: Table, specs: list[tuple[str, ModelSpec, str | None]],
                            policy: str) -> tuple[Table, str | None]:
    """The rows every spec can read, checked before any fold trains. A bad row stops the run
    here under ``fail`` (naming the spec that cannot read it); under ``skip`` it is left out of
    every spec, so that compared specs are scored on the same rows (a spec that reads an input
    alone cannot read the rows that lack it). Also: a note saying what was left out."""
    bad: dict[int, str] = {}
    by_spec: dict[str, int] = {}
    for name, spec, source in specs:
        found = Binding(spec).check(table, None, targets=True).bad
        if found and policy == "fail":
            where = f"spec {source or name}: " if len(specs) > 1 else ""
            try:
                fail_on(found, policy, len(table), among="in the table")
            except DataError as exc:
                raise DataError(f"{where}{exc}") from None
        by_spec[name] = len(found)
        for position, message in found.items():
            bad.setdefault(position, message)
    if not bad:
        return table, None
    counts = ", ".join(f"{name} {count}" for name, count in by_spec.items() if count)
    first = next(iter(sorted(bad.items())))[1]
    note = (f"{len(bad)} of {len(table)} rows are left out (--on-bad-row skip): rows some spec"
            f" cannot read ({counts}; e.g. {first})")
    if len(specs) > 1:
        note += "; every spec is scored on the same rows, so the comparison is paired"
    keep = np.array([p for p in range(len(table)) if p not in bad], dtype=np.int64)
    return table.take(keep), note


def _named(specs: Sequence[SpecLike]) -> list[tuple[str, ModelSpec, str | None]]:
    """Each spec loaded, with a name unique among them (its ``name``, else its file's stem,
    else numbered) and its file."""
    loaded = [(load_spec(s), str(s) if isinstance(s, (str, Path)) else None) for s in specs]
    names = [s.name for s, _ in loaded]
    if len(set(names)) < len(names):
        stems = [Path(src).stem if src else None for _, src in loaded]
        if None not in stems and len(set(stems)) == len(stems):
            names = [str(s) for s in stems]
        else:
            names = [n if names.count(n) == 1 else f"{n}_{i + 1}" for i, n in enumerate(names)]
    return [(n, s, src) for n, (s, src) in zip(names, loaded)]


def settled(spec: ModelSpec, table: Table, source: str | None = None) -> ModelSpec:
    """``spec`` with what its heads fix from the whole table before it is cut into folds (the
    class names: a fold whose training rows lack a class still has an output for it)."""
    try:
        return Binding(spec).settle(table)
    except SpecError as exc:
        raise (exc.with_source(source) if source else exc) from None


def plan_folds(table: Table, spec: ModelSpec, *, folds: int | None, group_by: str | None,
               fold_column: str | None, stratify: bool, seed: int) -> FoldPlan:
    """The folds of ``table``: named by ``fold_column``, or drawn with ``seed`` keeping the
    groups of ``group_by`` (default: the spec's ``training.group_by``) together."""
    group = group_column(group_by, spec.training.group_by)
    if fold_column is not None:
        if stratify:
            raise DataError("--stratify needs folds to draw; --fold-column names them")
        fold_of_row = folds_from_column(table, fold_column, folds)
        if group:  # it splits each fold's training rows for validation: groups stay whole
            _check_groups_in_one_fold(table, group, fold_of_row, fold_column)
        return FoldPlan(fold_of_row, int(fold_of_row.max()) + 1, fold_column, from_column=True,
                        split_by=group)
    folds = 5 if folds is None else folds
    groups = group_keys(table, group, "group the folds by") if group else None
    strata, stratified_by = _strata(table, spec) if stratify else (None, None)
    fold_of_row = assign_folds(len(table), folds, groups=groups, strata=strata, seed=seed,
                               source=table.source)
    return FoldPlan(fold_of_row, folds, group, stratified_by=stratified_by, split_by=group)


def _check_groups_in_one_fold(table: Table, group: str, fold_of_row: np.ndarray,
                              fold_column: str) -> None:
    """Each group of ``group`` lies in one fold of ``fold_column``: a group in two folds would
    be trained on and scored on."""
    folds_of: dict[str, set[int]] = {}
    for key, fold in zip(group_keys(table, group, "group the validation split by"), fold_of_row):
        folds_of.setdefault(key, set()).add(int(fold))
    split = sorted(k for k, f in folds_of.items() if len(f) > 1)
    if split:
        raise DataError(f"{table.source}: group {split[0]!r} of column {group!r} has rows in"
                        f" {len(folds_of[split[0]])} folds of column {fold_column!r}"
                        f" ({len(split)} such group(s)): its rows would be trained on and scored"
                        " on; name folds that keep each group whole")


def _first_target(spec: ModelSpec) -> tuple[str, str, bool]:
    """The first head, its target column, and whether it holds classes (as the head says):
    whose classes folds are balanced and checked by."""
    bound = Binding(spec).heads[0]
    return bound.name, bound.codec.columns()[0], bound.codec.holds_classes()


def _class_of_row(table: Table, column: str) -> np.ndarray:
    return np.array([str(v).strip() if not is_missing(v) else "" for v in table.columns[column]],
                    dtype=object)


def _strata(table: Table, spec: ModelSpec) -> tuple[np.ndarray, str]:
    """The classes to balance: the values of the first head's target column."""
    head, column, classes = _first_target(spec)
    if not classes:
        raise DataError(f"--stratify balances the classes of the first head's target, and head"
                        f" {head!r} ({spec.heads[head].describe()}) predicts no classes")
    return _class_of_row(table, column), column


def _absent_classes(table: Table, spec: ModelSpec, plan: FoldPlan) -> str | None:
    """Which classes of the first head's target (where it holds classes) have no row in some
    fold: their metrics there (a recall, an AUROC) cannot count them."""
    _, column, classes = _first_target(spec)
    if not classes:
        return None
    values = _class_of_row(table, column)
    absent = {c: [k + 1 for k in range(plan.folds) if not (values[plan.fold_of_row == k] == c).any()]
              for c in sorted(set(values) - {""})}
    said = [f"{c!r} in fold(s) {', '.join(map(str, f))}" for c, f in absent.items() if f]
    if not said:
        return None
    return (f"column {column!r} has no row of class {'; '.join(said[:3])}"
            f"{' (and more)' if len(said) > 3 else ''} of {plan.folds}: metrics there leave the"
            " class out (recall, one-vs-rest AUROC)"
            + ("" if plan.from_column or plan.stratified_by else
               "; --stratify gives each fold its share"))


#: Fewer training rows of a class than this in a fold's training rows is noted: the model
#: there learns the class from almost nothing (and its own validation split may take some).
FEW_TRAINING_ROWS = 5


def untrained_classes(table: Table, spec: ModelSpec, plan: FoldPlan) -> str | None:
    """Which classes of the first head's target no training row of some fold holds (every row
    of the class lies in that fold): that fold's model never learns the class, and its rows
    there are scored as they are. Also the classes that a fold's training rows hold fewer than
    :data:`FEW_TRAINING_ROWS` of."""
    _, column, classes = _first_target(spec)
    if not classes:
        return None
    values = _class_of_row(table, column)
    lacking, few = [], []
    for fold in range(plan.folds):
        names, counts = np.unique(values[plan.fold_of_row != fold], return_counts=True)
        trained = dict(zip(names.tolist(), counts.tolist()))
        missing = sorted(set(values[plan.fold_of_row == fold]) - set(trained) - {""})
        if missing:
            lacking.append(f"fold {fold + 1}: {', '.join(map(repr, missing[:3]))}"
                           + (" and more" if len(missing) > 3 else ""))
        scarce = sorted((c, n) for c, n in trained.items() if c != "" and n < FEW_TRAINING_ROWS)
        if scarce:
            few.append(f"fold {fold + 1}: " + ", ".join(f"{c!r} ({n})" for c, n in scarce[:3])
                       + (" and more" if len(scarce) > 3 else ""))
    said = []
    if lacking:
        said.append(f"the training rows of some folds hold no row of a class of column {column!r}"
                    f" ({'; '.join(lacking)}): that fold's model has an output for the class but"
                    " never learns it, and scores its rows as they are (its recall there is 0)")
    if few:
        said.append(f"the training rows of some folds hold fewer than {FEW_TRAINING_ROWS} rows of"
                    f" a class of column {column!r} ({'; '.join(few)}), before their validation"
                    " split takes its share: that fold's model can hardly learn the class;"
                    " --stratify, or groups that spread the class, give every fold more of it")
    return "; ".join(said) or None


def _fold_hint(table: Table, specs: list[ModelSpec], named: bool) -> str | None:
    """The note where rows are split row by row (the folds, or with folds a column names, each
    fold's validation rows) and a column looks like groups."""
    found = group_like_columns(table, set().union(*(Binding(s).columns() for s in specs)))
    if not found:
        return None
    if named:
        return group_hint(found, "each fold's validation rows are drawn", "pass --group-by"
                          " {column} (each group must then lie within one fold)")
    return group_hint(found, "the folds are drawn", "pass --group-by {column}, or --fold-column"
                      " FOLD_COLUMN to name the folds yourself")


def _write_folds(out: Path, table: Table, plan: FoldPlan) -> None:
    # The fold column or the groups' column, and the groups' column beside a fold column.
    shown = list(dict.fromkeys(c for c in (plan.group_column, plan.split_by) if c))
    header = ["row", "fold", *(f"{c}_value" if c in ("row", "fold") else c for c in shown)]
    rows = ([int(row), int(fold) + 1, *(table.columns[c][i] for c in shown)]
            for i, (row, fold) in enumerate(zip(table.rows, plan.fold_of_row)))
    write_text(out / "folds.csv", csv_text(header, rows))


def _run_spec(name: str, spec: ModelSpec, source: str | None, table: Table, plan: FoldPlan,
              out: Path, predictions_file: Path, options: Mapping[str, Any], policy: str,
              keep_checkpoints: bool, explain: int,
              progress: bool, say: Callable[[str], None],
              on_fold: Callable[[str, int, dict[str, dict[str, float]]], None] | None,
              tracking: CvTracking | None = None) -> SpecScores:
    scores = SpecScores(name, spec, source)
    predictions: dict[str, list[Any]] = {}
    shown: set[str] = set()
    finished = FinishedFolds(out / name, run_key(spec, table, plan, options, policy), say)
    for fold in range(plan.folds):
        where = f"{name} fold {fold + 1}/{plan.folds}"
        fold_dir = out / name / f"fold_{fold + 1}"

        def say_in_fold(line: str, where: str = where) -> None:
            say(f"{where}: {line}")

        record = finished.record(fold)
        slot = tracking.slot(name, fold) if tracking is not None and record is None else None
        if record is None:
            record = _fold(spec, source, table, plan, fold, fold_dir, options, policy, progress,
                           say_once(say_in_fold, shown, leave_out=(SPLIT_HINT_START,)),
                           keep_checkpoints, slot or "none")
        if tracking is not None:
            tracking.fold_done(slot, name, fold, fold_dir, record.metrics)
        scores.folds.append(record.metrics)
        scores.by_presence.append(record.by_presence)
        if explain:
            if record.contributions is None:
                explain_fold(record, spec, table, plan, fold, fold_dir, explain, options, policy)
                record.save(fold_dir)
            scores.contributions.append(record.contributions or {})
        scores.seconds += record.seconds
        for column, values in record.predictions.items():
            predictions.setdefault(column, []).extend(values)
        said = "; ".join(f"{head} " + ", ".join(f"{m} {v:.4f}" for m, v in values.items())
                         for head, values in record.metrics.items())
        say(f"{where}: {said}" + (" (finished in an earlier run: reused)" if record.reused else ""))
        if on_fold is not None:
            on_fold(name, fold, record.metrics)
    scores.predictions = predictions_file
    _write_predictions(predictions_file, predictions)
    return scores


def _fold(spec: ModelSpec, source: str | None, table: Table, plan: FoldPlan, fold: int,
          fold_dir: Path, options: Mapping[str, Any], policy: str, progress: bool,
          say: Callable[[str], None], keep_checkpoints: bool, track: Any = None) -> FoldRecord:
    """Run one fold and keep its record in its folder."""
    try:
        record = run_fold(spec, table, plan, fold, fold_dir, options, policy, progress, say,
                          track)
    except SpecError as exc:
        raise (exc.with_source(source) if source else exc) from None
    record.save(fold_dir)
    if not keep_checkpoints:
        (fold_dir / CHECKPOINT).unlink(missing_ok=True)
    return record


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


def _write_predictions(path: Path, columns: dict[str, list[Any]]) -> None:
    order = np.argsort(np.asarray(columns.get("row", []), np.int64), kind="stable")
    write_text(path, csv_text(list(columns), ([values[i] for values in columns.values()]
                                              for i in order)))


def _write_report(result: CVResult) -> None:
    out = result.output
    write_text(out / "report.json", json.dumps(result.summary(), indent=2))
    write_text(out / "report.txt", result.table() + "\n")
    write_text(out / "scores.csv", csv_text(
        ["spec", "fold", "head", "metric", "value"],
        ([scores.name, fold, head, m, v] for scores in result.scores
         for fold, metrics in enumerate(scores.folds, start=1)
         for head, values in metrics.items() for m, v in values.items())))
    if any(any(s.by_presence) for s in result.scores):
        write_text(out / "scores_by_inputs.csv", csv_text(
            ["spec", "fold", "head", "inputs", "rows", "metric", "value"],
            ([scores.name, fold, head, kind, found["rows"], m, v] for scores in result.scores
             for fold, heads in enumerate(scores.by_presence, start=1)
             for head, kinds in heads.items() for kind, found in kinds.items()
             for m, v in found["metrics"].items())))

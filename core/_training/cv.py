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
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .._assembly import plan as plan_model
from .._data.binding import Binding
from .._data.table import Table, read_table
from .._errors import SpecError
from .._files import write_text
from .._spec import ModelSpec, load_spec
from .cv_report import CVResult, SpecScores
from .fold_classes import absent_classes, untrained_classes
from .fold_run import FinishedFolds, FoldRecord, explain_fold, run_fold, run_key, say_once, settled
from .folds import SPLIT_HINT_START, group_hint, group_like_columns
from .readable import readable_rows
from .run_folder import RunFolder
from .settings import FoldSettings, RunSettings
from .track_groups import CvTracking

SpecLike = ModelSpec | str | Path | Mapping[str, Any]
#: ``on_fold(spec_name, fold, metrics)``: called as each fold is scored.
OnFold = Callable[[str, int, dict[str, dict[str, float]]], None]


def cv(spec: SpecLike, data: Any, *, folds: int | None = None, group_by: str | None = None,
       fold_column: str | None = None, stratify: bool = False, compare: Sequence[SpecLike] = (),
       output: str | Path | None = None, options: Mapping[str, Any] | None = None,
       on_bad_row: str = "fail", keep_checkpoints: bool = False, explain: int = 0,
       progress: bool = False, log: Callable[[str], None] | None = None,
       on_fold: OnFold | None = None, track: Any = None) -> CVResult:
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
    return cross_validate([spec, *compare], data, FoldSettings(folds, group_by, fold_column, stratify),
                          RunSettings(options or {}, on_bad_row, keep_checkpoints, output, track,
                                      progress), explain=explain, log=log, on_fold=on_fold)


def cross_validate(specs: Sequence[SpecLike], data: Any, folding: FoldSettings,
                   settings: RunSettings, *, explain: int = 0,
                   log: Callable[[str], None] | None = None,
                   on_fold: OnFold | None = None) -> CVResult:
    """:func:`cv` with its settings as objects (as ``polymodal cv`` maps its options): the
    first of ``specs`` is compared with the others."""
    run = _CrossValidation(settings, explain, log or (lambda _: None), on_fold)
    run.prepare(_named(specs), read_table(data), folding)
    return run.run()


class _CrossValidation:
    """One cross-validation: its specs, table and folds checked before any fold trains, then
    each spec's folds run (or reused from an earlier run) and the report written."""

    def __init__(self, settings: RunSettings, explain: int, say: Callable[[str], None],
                 on_fold: OnFold | None):
        self.settings, self.explain, self.say, self.on_fold = settings, explain, say, on_fold
        self.started = time.perf_counter()
        self.scores: list[SpecScores] = []
        self.notes: dict[str, str | None] = {}
        self.tracking: CvTracking | None = None

    def prepare(self, specs: list[tuple[str, ModelSpec, str | None]], table: Table,
                folding: FoldSettings) -> None:
        """Every spec checked against the table, the rows all of them read, and the folds."""
        self.folder = RunFolder(self.settings.folder(specs[0][1], "cv"), "cv",
                                self.settings.keep_checkpoints)
        for _, each, source in specs:  # every spec, before the first one's folds train
            try:
                Binding(each).require_columns(table, targets=True)
                plan_model(each)  # its parts connect
                self.settings.resolved(each)  # and take the options
            except SpecError as exc:
                raise (exc.with_source(source) if source else exc) from None
        table, unread = readable_rows(table, specs, self.settings.on_bad_row)
        self._note("unread", unread)
        # Each head's classes from the whole table: every fold's model has an output for each.
        self.specs = [(name, settled(each, table, source), source) for name, each, source in specs]
        first = self.specs[0][1]
        self.table = table
        self.plan = folding.plan(table, first, int(self.settings.option(first, "seed")))
        if self.plan.split_by is None:
            self._note("hint", _fold_hint(table, [s for _, s, _ in self.specs],
                                          self.plan.from_column))
        self._note("absent", absent_classes(table, first, self.plan))
        self._note("untrained", untrained_classes(table, first, self.plan))
        self.folder.refuse_other_kind()

    def _note(self, kind: str, note: str | None) -> None:
        self.notes[kind] = note
        if note:
            self.say(f"note: {note}")

    def result(self) -> CVResult:
        return CVResult(self.folder.path, self.plan, len(self.table), self.scores,
                        time.perf_counter() - self.started, self.notes.get("hint"),
                        self.notes["absent"], self.notes["untrained"], self.notes["unread"])

    def run(self) -> CVResult:
        """Each spec's folds, in a folder locked while they run; the report."""
        out, say = self.folder.path, self.say
        with self.folder.lock(say), CvTracking.opened(self.settings.track, self.specs[0][1], out,
                                                     say) as tracking:
            self.tracking = tracking
            self._write_folds()
            say(f"{len(self.table)} rows, {self.plan.describe()}; results in {out}")
            if tracking is not None:
                tracking.start(self.specs, self.plan, len(self.table), self.settings.overrides)
            for name, spec, source in self.specs:
                try:
                    self.scores.append(self._spec(name, spec, source))
                except BaseException:
                    if self.scores:  # the specs that finished keep their report
                        self._write_report(self.result())
                        say(f"note: the report in {out} holds the specs that finished"
                            f" ({', '.join(s.name for s in self.scores)}); a rerun reuses every"
                            " finished fold")
                    raise
            finished = self.result()
            self._write_report(finished)
            if tracking is not None:
                tracking.result = finished
        finished.tracking = tracking.lines if tracking is not None else []
        return finished

    def _spec(self, name: str, spec: ModelSpec, source: str | None) -> SpecScores:
        """One spec's folds, and its pooled out-of-fold predictions."""
        scores = SpecScores(name, spec, source)
        predictions: dict[str, list[Any]] = {}
        shown: set[str] = set()
        finished = FinishedFolds(self.folder.path / name,
                                 run_key(spec, self.table, self.plan, self.settings), self.say)
        for fold in range(self.plan.folds):
            record = self._fold(scores, fold, finished, shown)
            for column, values in record.predictions.items():
                predictions.setdefault(column, []).extend(values)
        order = np.argsort(np.asarray(predictions.get("row", []), np.int64), kind="stable")
        scores.predictions = self.folder.write_csv(
            "oof_predictions.csv" if len(self.specs) == 1 else f"{name}_oof_predictions.csv",
            list(predictions), ([values[i] for values in predictions.values()] for i in order))
        return scores

    def _fold(self, scores: SpecScores, fold: int, finished: FinishedFolds,
              shown: set[str]) -> FoldRecord:
        """One fold of a spec: run (or reused), explained where asked, added to ``scores``."""
        name, spec = scores.name, scores.spec
        where = f"{name} fold {fold + 1}/{self.plan.folds}"
        fold_dir = self.folder.path / name / f"fold_{fold + 1}"
        record = finished.record(fold)
        tracking = self.tracking
        slot = tracking.slot(name, fold) if tracking is not None and record is None else None
        if record is None:
            say = say_once(lambda line: self.say(f"{where}: {line}"), shown,
                           leave_out=(SPLIT_HINT_START,))
            try:
                record = run_fold(spec, self.table, self.plan, fold, fold_dir, self.settings, say,
                                  slot or "none")
            except SpecError as exc:
                raise (exc.with_source(scores.source) if scores.source else exc) from None
            record.save(fold_dir)
            self.folder.drop_checkpoints([fold_dir])
        if tracking is not None:
            tracking.fold_done(slot, name, fold, fold_dir, record.metrics)
        if self.explain and record.contributions is None:
            explain_fold(record, spec, self.table, self.plan, fold, fold_dir, self.explain,
                         self.settings)
            record.save(fold_dir)
        scores.add(record, explained=bool(self.explain))
        said = "; ".join(f"{head} " + ", ".join(f"{m} {v:.4f}" for m, v in values.items())
                         for head, values in record.metrics.items())
        self.say(f"{where}: {said}"
                 + (" (finished in an earlier run: reused)" if record.reused else ""))
        if self.on_fold is not None:
            self.on_fold(name, fold, record.metrics)
        return record

    def _write_folds(self) -> None:
        # The fold column or the groups' column, and the groups' column beside a fold column.
        plan, table = self.plan, self.table
        shown = list(dict.fromkeys(c for c in (plan.group_column, plan.split_by) if c))
        header = ["row", "fold", *(f"{c}_value" if c in ("row", "fold") else c for c in shown)]
        self.folder.write_csv("folds.csv", header, (
            [int(row), int(fold) + 1, *(table.columns[c][i] for c in shown)]
            for i, (row, fold) in enumerate(zip(table.rows, plan.fold_of_row))))

    def _write_report(self, result: CVResult) -> None:
        out, folder = result.output, self.folder
        write_text(out / "report.json", json.dumps(result.summary(), indent=2))
        write_text(out / "report.txt", result.table() + "\n")
        folder.write_csv("scores.csv", ["spec", "fold", "head", "metric", "value"], (
            [scores.name, fold, head, m, v] for scores in result.scores
            for fold, metrics in enumerate(scores.folds, start=1)
            for head, values in metrics.items() for m, v in values.items()))
        if any(any(s.by_presence) for s in result.scores):
            folder.write_csv("scores_by_inputs.csv",
                             ["spec", "fold", "head", "inputs", "rows", "metric", "value"], (
                [scores.name, fold, head, kind, found["rows"], m, v] for scores in result.scores
                for fold, heads in enumerate(scores.by_presence, start=1)
                for head, kinds in heads.items() for kind, found in kinds.items()
                for m, v in found["metrics"].items()))


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

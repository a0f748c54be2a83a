"""Hyperparameter search on Optuna, behind ``polymodal tune`` and :func:`polymodal.tune`.

A trial puts values drawn from the spec's ``search`` section into the spec, trains it as
``polymodal train`` would (or cross-validates it with ``folds``) and gives Optuna the
early-stopping metric: the best epoch's value on the validation rows, or its mean over the
held-out folds. Bad trials are pruned from their per-epoch (or per-fold) values by Optuna's
median pruner. The study lives in an Optuna RDB storage (``sqlite:///RUN/study.db`` by
default): rerunning the command continues it, and several processes or machines given the same
storage URL and study name work on it at once. The first trial of a new study is the spec as
written, where its values lie in the search space, so the search reports what it gained.

Optuna is an optional dependency (``pip install 'polymodal[tune]'``), imported only by the
study's side (:mod:`.study`) and where results are written.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import socket
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from .._data.binding import Binding
from .._data.table import Table, read_table
from .._errors import (
    ConnectionMismatch,
    DivergedError,
    PolymodalError,
    SpecError,
    first_line,
    out_of_memory,
)
from .._files import atomic_path, write_text
from .._output_lock import remove_stale_locks
from .._search import label, plain_data, put
from .._spec import ModelSpec, load_spec
from . import objective
from .cv_report import SpecScores
from .engine import Hooks, TrainCall, train_part
from .fold_run import MODEL, run_fold, say_once, settled
from .folds import FoldPlan, group_keys
from .readable import readable_rows
from .run_folder import RunFolder
from .settings import FoldSettings, RunSettings
from .study import (
    Ranks,
    SearchSettings,
    TuneError,
    best_trial,
    enqueue_baseline,
    finished_count,
    open_study,
    optuna_module,
    quiet,
    safe_url,
    suggest,
)
from .track_groups import TuneTracking
from .tracking import Slot
from .tune_report import TuneResult, draw_plots, keep_by_inputs, tune_result, write_summary

__all__ = ["TuneError", "TuneResult", "tune"]


class TrialFailed(PolymodalError):
    """A trial whose values do not train: its loss diverged, or its model did not fit in
    memory. The trial fails; the study goes on."""


#: Errors that fail one trial (its combination of values does not fit together, diverges or
#: does not fit in memory) but not the study: a bad table or a broken plugin fails every trial,
#: and stops the run.
TRIAL_ERRORS = (SpecError, ConnectionMismatch, TrialFailed)
#: A run stops after this many failed trials in a row.
MAX_FAILURES_IN_A_ROW = 5


def tune(spec: ModelSpec | str | Path | Mapping[str, Any], data: Any, *, trials: int,
         folds: int | None = None, group_by: str | None = None, fold_column: str | None = None,
         stratify: bool = False, storage: str | None = None, study: str | None = None,
         timeout: float | None = None, output: str | Path | None = None,
         options: Mapping[str, Any] | None = None, pruning: bool = True,
         sampler_seed: int | None = None, heartbeat: int = 60, on_bad_row: str = "fail",
         keep_checkpoints: bool = False, log: Callable[[str], None] | None = None,
         track: Any = None) -> TuneResult:
    """Search the spec's ``search`` space until the study has ``trials`` finished (completed
    or pruned) trials, or ``timeout`` seconds have passed; write the results to ``output``
    (default: ``<spec name>.tune``).

    ``folds`` scores each trial by cross-validation (the mean of the metric over the held-out
    folds; ``group_by``, ``fold_column`` and ``stratify`` as for :func:`polymodal.cv`).
    ``storage`` is an Optuna RDB URL (default: ``sqlite:///OUTPUT/study.db``) and ``study``
    the study's name (default: the spec's name); processes sharing both share the study.
    ``heartbeat`` (seconds) is how often a running trial tells the storage it is alive: a trial
    whose process died is failed and retried after twice that. ``track`` records the study in
    an experiment tracker (as for :func:`polymodal.train`; default: the spec's
    ``training.track``): a parent run, a child run for each trial.
    """
    return run_search(spec, data, SearchSettings(trials, storage, study, timeout, pruning,
                                             sampler_seed, heartbeat),
                  FoldSettings(folds, group_by, fold_column, stratify),
                  RunSettings(options or {}, on_bad_row, keep_checkpoints, output, track), log=log)


def run_search(spec: ModelSpec | str | Path | Mapping[str, Any], data: Any, search: SearchSettings,
           folding: FoldSettings, settings: RunSettings, *,
           log: Callable[[str], None] | None = None) -> TuneResult:
    """:func:`tune` with its settings as objects (as ``polymodal tune`` maps its options)."""
    optuna = optuna_module()
    trials = _Trials.prepare(load_spec(spec), data, search, folding, settings,
                             log or (lambda _: None))
    if not trials.ranks.main:
        trials.follow()
        followed = tune_result(None, trials.folder.path, trials.study_name, trials.url,
                               trials.metric, trials.higher, 0, [])
        followed.is_main = False
        return followed
    return trials.lead_study(optuna, search)


def _check_overrides(options: Mapping[str, Any], space: Mapping[str, Any]) -> None:
    """A command-line override of a training option the search varies would make every trial
    the same there, and the best spec written out would not be what scored."""
    for option in options:
        if f"training.{option}" in space:
            flag = "--" + option.replace("_", "-")
            raise TuneError(f"{flag} sets training.{option}, which the spec's search varies:"
                            f" leave {flag} out, or take training.{option} out of the search")


def _fold_plan(table: Table, spec: ModelSpec, folding: FoldSettings,
               settings: RunSettings) -> FoldPlan | None:
    """The folds trials are cross-validated on; None where they use one validation split."""
    if folding.asked:
        return folding.plan(table, spec, int(settings.option(spec, "seed")))
    if folding.stratify:
        raise TuneError("--stratify balances classes over folds: give --folds too")
    if spec.training.val_fraction <= 0:
        raise SpecError([("training.val_fraction", "0 leaves no validation rows to compare"
                          " trials on; set it above 0, or cross-validate with --folds")])
    return None


def check_connections(spec: ModelSpec) -> None:
    """Every end of a range and every choice, put into the spec on its own, connects (the spec
    check validates them; this plans the model too), before any trial runs."""
    from .._assembly import plan, refuse_too_large
    from .._search import candidates

    base = plain_data(spec)
    problems = []
    for path, distribution in (spec.search or {}).items():
        for at, value in candidates(distribution):
            try:
                candidate = load_spec(put(base, path, value))
                plan(candidate)
            except SpecError as exc:
                said = "; ".join(exc.problem_lines())
                problems.append((f"search.{path}{at}", f"{label(value)} does not connect: {said}"))
                continue
            try:
                refuse_too_large(candidate)  # a trial could not even allocate it
            except SpecError as exc:
                said = "; ".join(exc.problem_lines())
                problems.append((f"search.{path}{at}", f"{label(value)} is too large: {said}"))
    if problems:
        raise SpecError(problems)


class _Pruned(Exception):
    """Raised inside a trial that Optuna decided to prune."""


class _Trials:
    """A search's trial executor: builds each trial's spec, trains it (or cross-validates it),
    keeps the trial folders small, and writes what the study found."""

    def __init__(self, spec: ModelSpec, table: Table, plan: FoldPlan | None, folder: RunFolder,
                 settings: RunSettings, split_by: str | None, say: Callable[[str], None]):
        self.spec, self.table, self.plan, self.folder = spec, table, plan, folder
        self.settings, self.split_by, self.say = settings, split_by, say
        self.metric, self.higher = objective.monitored(spec.training, Binding(spec))
        self.base = plain_data(spec)
        self.shown: set[str] = set()  # notes said once, not once a trial
        self.rows_note: str | None = None  # the rows left out of every trial (skip)
        self.error: str | None = None  # why this process's last trial failed
        self.tracking: TuneTracking | None = None  # the study's runs in a tracker (rank 0)
        self.slot: Slot | None = None  # where the running trial's training is recorded
        self.url, self.study_name = "", spec.name
        self.ranks = Ranks(str(settings.option(spec, "device")))

    @classmethod
    def prepare(cls, spec: ModelSpec, data: Any, search: SearchSettings, folding: FoldSettings,
                settings: RunSettings, say: Callable[[str], None]) -> _Trials:
        """The search checked before any trial runs: its space, the table and the folds."""
        if not spec.search:
            raise SpecError([("search", "missing: name the spec paths to search over, e.g."
                              " `search: {training.lr: {type: float, low: 0.0001, high: 0.01,"
                              " log: true}}`")])
        if search.trials < 1:
            raise TuneError(f"--trials {search.trials}: run at least one trial")
        check_connections(spec)
        _check_overrides(settings.overrides, spec.search)
        folder = RunFolder(settings.folder(spec, "tune"), "tune", settings.keep_checkpoints)
        table = read_table(data)
        Binding(spec).require_columns(table, targets=True)
        table, unread = readable_rows(table, [(spec.name, spec, None)], settings.on_bad_row)
        if unread:
            say(f"note: {unread}")
        plan = _fold_plan(table, spec, folding, settings)
        if plan is not None:  # every fold's model has an output for each class of the table
            spec = settled(spec, table)
        folder.refuse_other_kind()
        split_by = folding.split_column(spec)
        if plan is None and split_by:  # a missing column is found now, not in the first trial
            group_keys(table, split_by, "group the validation split by")
        folder.path.mkdir(parents=True, exist_ok=True)
        trials = cls(spec, table, plan, folder, settings, split_by, say)
        trials.rows_note = unread
        trials.url = search.storage or f"sqlite:///{(folder.path / 'study.db').resolve()}"
        trials.study_name = search.study or spec.name
        return trials

    # -- the study's side (rank 0) ---------------------------------------------------------
    def lead_study(self, optuna: Any, search: SearchSettings) -> TuneResult:
        """Open the study, run trials until it has enough, and write what it found."""
        out, name = self.folder.path, self.study_name
        opened = open_study(optuna, search, self.url, name, self.metric, self.higher,
                            self.plan is not None)
        tracking: TuneTracking | None = None
        try:
            tracking = self.tracking = TuneTracking.open(self.settings.track, self.spec, out,
                                                         name, self.say)
            if tracking is not None:
                tracking.start(self.spec, name, self.metric, opened.direction.name.lower(),
                               search.trials, self.plan.folds if self.plan else None,
                               safe_url(self.url), self.settings.overrides)
            ran = self.lead(opened, search.trials, search.timeout)
        except BaseException as exc:
            # What the study holds so far is written before the run stops (no best model is
            # retrained on the way out).
            with contextlib.suppress(Exception):
                write_summary(opened, self.folder, self.metric)
            if tracking is not None:
                tracking.finish(out, None, exc)
            raise
        finally:
            self.ranks.finish()
        result = tune_result(opened, out, name, self.url, self.metric, self.higher, ran,
                             [*([self.rows_note] if self.rows_note else []),
                              *self.write_results(optuna, opened)])
        if tracking is not None:
            result.tracking = tracking.finish(out, best_trial(opened))
        return result

    def lead(self, study: Any, trials: int, timeout: float | None) -> int:
        optuna = optuna_module()
        with quiet(optuna):
            optuna.storages.fail_stale_trials(study)  # trials of a process that died
        if self.tracking is not None:  # their runs are failed too, now that the study says so
            self.tracking.stale(study)
        self._tidy_failed(study)
        enqueue_baseline(study, self.spec, self.say)
        finished = finished_count(study)
        if finished >= trials:
            self.say(f"the study already has {finished} finished trial(s) (--trials {trials}):"
                     " nothing to run; raise --trials to run more")
            return 0
        self.say(f"study {study.study_name!r}: {finished} of {trials} trial(s) finished;"
                 f" comparing trials by {self.metric} ({'higher' if self.higher else 'lower'}"
                 " is better)")
        started, ran, failures = time.monotonic(), 0, 0
        while finished_count(study) < trials:
            if timeout is not None and time.monotonic() - started >= timeout:
                self.say(f"--timeout {timeout:g} s reached")
                break
            with quiet(optuna):
                study.optimize(self.objective, n_trials=1, catch=TRIAL_ERRORS)
            ran += 1
            self.keep_best_model(study)
            if self.tracking is not None:
                self.tracking.check_best(best_trial(study))
            failures = failures + 1 if self.error else 0
            if failures >= MAX_FAILURES_IN_A_ROW:
                raise TuneError(f"{failures} trials in a row failed; the last one: {self.error}"
                                f"{self._best_so_far(study)}")
        return ran

    def _best_so_far(self, study: Any) -> str:
        """Where the best model of a search that stops early is (its trial's folder)."""
        best = best_trial(study)
        if best is None:
            return ""
        model = self.trial_dir(best.number) / MODEL  # a trial by folds keeps none
        kept = f", its model {model}" if model.is_file() else ""
        return (f". The best trial so far is trial {best.number} ({self.metric}"
                f" {best.value:.4f}): its spec is in best.yaml{kept}")

    def _tidy_failed(self, study: Any) -> None:
        """What killed trials left in this folder: their checkpoints (unless kept) and the lock
        files no live run holds."""
        for trial in study.trials:
            if trial.state.name == "FAIL":
                folder = self.trial_dir(trial.number)
                self.folder.drop_checkpoints([folder, *folder.glob("fold_*")])
        trials = self.folder.path / "trials"
        removed = remove_stale_locks(trials) if trials.is_dir() else []
        if removed:
            self.say(f"note: removed {len(removed)} lock file(s) of trials whose run had ended")

    def objective(self, trial: Any) -> float:
        optuna = optuna_module()
        self.error, self.slot = None, None
        values = suggest(trial, self.spec.search or {})
        trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
        shown = ", ".join(f"{p}={label(v)}" for p, v in values.items())
        self.say(f"trial {trial.number}: {shown}")
        try:
            spec_data = self._spec_data(values)
            trial.set_user_attr("spec", json.dumps(spec_data))
            self.ranks.share((trial.number, spec_data))
            if self.tracking is not None and self.plan is not None:
                self.tracking.trial_run(trial.number, values, self.trial_dir(trial.number))
            value = self._run(trial.number, spec_data,
                              lambda step, v, last: self._report(trial, step, v, last))
        except _Pruned:
            self.say(f"trial {trial.number}: pruned")
            if self.tracking is not None:
                self.tracking.ended(trial.number, self.slot, "pruned", None)
            raise optuna.TrialPruned() from None
        except TRIAL_ERRORS as exc:
            self._failed(trial, str(exc))
            raise
        except KeyboardInterrupt:  # Optuna records the trial failed: say why, not "killed?"
            self._failed(trial, "interrupted (Ctrl-C); a rerun of the command goes on with new"
                         " trials")
            raise
        except (DivergedError, MemoryError, RuntimeError) as exc:
            if isinstance(exc, RuntimeError) and not out_of_memory(exc):
                raise
            why = (f"its model did not fit in memory ({first_line(exc, 200)})"
                   if not isinstance(exc, DivergedError) else first_line(exc, 400))
            self._failed(trial, why)
            raise TrialFailed(why) from None
        finally:
            self.folder.drop_checkpoints([self.trial_dir(trial.number)])
        if not math.isfinite(value):
            self._failed(trial, f"{self.metric} is {value}")
            raise SpecError([("", f"trial {trial.number}: {self.error}")])
        self.say(f"trial {trial.number}: {self.metric} {value:.4f}")
        if self.tracking is not None:
            self.tracking.ended(trial.number, self.slot, "complete", value)
        return value

    def _failed(self, trial: Any, error: str) -> None:
        self.error = error
        trial.set_user_attr("error", error)
        self.say(f"trial {trial.number} failed: {error}")
        if self.tracking is not None:
            self.tracking.ended(trial.number, self.slot, "failed", None, error)

    def _report(self, trial: Any, step: int, value: float, last: bool) -> bool:
        trial.report(value, step)
        # The last step is the trial's result: pruning it would save nothing.
        return bool(self.ranks.share(not last and trial.should_prune()))

    # -- the other processes under torchrun --------------------------------------------------
    def follow(self) -> None:
        try:
            while (job := self.ranks.share(None)) is not None:
                number, spec_data = job
                try:
                    self._run(number, spec_data,
                              lambda step, v, last: bool(self.ranks.share(None)))
                except (_Pruned, DivergedError, *TRIAL_ERRORS):
                    pass  # rank 0 records it
        finally:
            self.ranks.finish()

    # -- both -----------------------------------------------------------------------------
    def _spec_data(self, values: Mapping[str, Any]) -> dict[str, Any]:
        data = self.base
        for path, value in values.items():
            data = put(data, path, value)
        return data

    def trial_spec(self, spec_data: Mapping[str, Any]) -> ModelSpec:
        spec = load_spec(spec_data)
        spec._folder = self.spec._folder  # relative paths in it are read where the spec was
        return spec

    def trial_dir(self, number: int) -> Path:
        return self.folder.path / "trials" / f"trial_{number}"

    def _run(self, number: int, spec_data: Mapping[str, Any],
             report: Callable[[int, float, bool], bool]) -> float:
        """Train trial ``number``; ``report(step, value, last)`` after each epoch (or fold)
        says whether to prune."""
        spec = self.trial_spec(spec_data)
        say = say_once(lambda line: self.say(f"trial {number}: {line}"), self.shown)
        if self.plan is None:
            return self._trained(number, spec, say, report)
        return self._cross_validated(number, spec, self.plan, say, report)

    def _trained(self, number: int, spec: ModelSpec, say: Callable[[str], None],
                 report: Callable[[int, float, bool], bool]) -> float:
        """A trial scored on one validation split: the best epoch's value."""
        folder, pruned = self.trial_dir(number), []
        epochs = int(self.settings.option(spec, "epochs"))

        def on_epoch(row: dict[str, Any], value: float) -> str | None:
            if report(row["epoch"], value, row["epoch"] >= epochs):
                pruned.append(row["epoch"])
                return "pruned, worse than the median of earlier trials at this epoch"
            return None

        self.slot = self.tracking.trial_slot(number) if self.tracking is not None else None
        call = TrainCall(folder / MODEL, folder, say=say, hooks=Hooks(on_epoch=on_epoch))
        result = train_part(spec, self.table, self.settings, call, self.split_by,
                            self.slot or "none")
        if pruned:
            raise _Pruned()
        keep_by_inputs(folder, result.best.get("val_by_presence", {}), "validation rows")
        return result.best_value

    def _cross_validated(self, number: int, spec: ModelSpec, plan: FoldPlan,
                         say: Callable[[str], None],
                         report: Callable[[int, float, bool], bool]) -> float:
        """A trial scored by its folds: the mean of the metric over the held-out folds."""
        values: list[float] = []
        by_inputs = SpecScores(spec.name, spec)
        for fold in range(plan.folds):
            fold_dir = self.trial_dir(number) / f"fold_{fold + 1}"
            try:
                track = (self.tracking.fold_slot(number, fold) if self.tracking is not None
                         else "none")
                record = run_fold(spec, self.table, plan, fold, fold_dir, self.settings, say,
                                  track)
            finally:
                (fold_dir / MODEL).unlink(missing_ok=True)  # retrained on every row if best
                self.folder.drop_checkpoints([fold_dir])
            by_inputs.by_presence.append(record.by_presence)
            values.append(objective.value_of(record.metrics, self.metric, spec))
            if self.tracking is not None:
                self.tracking.fold_value(number, fold, record.metrics, float(np.mean(values)))
            # Steps count folds from 1, as they count epochs.
            if report(fold + 1, float(np.mean(values)), fold + 1 == plan.folds):
                raise _Pruned()
        keep_by_inputs(self.trial_dir(number),
                       {head: {kind: {"rows": v["rows"], "metrics": v["mean"]}
                               for kind, v in kinds.items()}
                        for head, kinds in by_inputs.presence_summary().items()},
                       f"held-out folds, mean over {plan.folds}")
        return float(np.mean(values))

    # -- what the study found ---------------------------------------------------------------
    def write_results(self, optuna: Any, study: Any) -> list[str]:
        """The best spec and model, the trials as CSV, and Optuna's plots; notes on what could
        not be written."""
        best = write_summary(study, self.folder, self.metric)
        if best is None:
            return []
        self.keep_best_model(study)
        return [*self._best_model(best), *draw_plots(optuna, study, self.folder.path)]

    def _best_model(self, best: Any) -> list[str]:
        out = self.folder.path
        target, stamp = out / "best.safetensors", out / "best.trial"
        if target.is_file() and stamp.is_file() and stamp.read_text().strip() == str(best.number):
            return []
        source = self.trial_dir(best.number) / MODEL
        if self.plan is None and source.is_file():
            with atomic_path(target) as pending:  # the trial's file itself where it can be
                pending.unlink()
                try:
                    os.link(source, pending)
                except OSError:
                    shutil.copyfile(source, pending)
        elif self.plan is not None:
            self.say(f"training the best spec (trial {best.number}) on the whole table for its"
                     " model file (its val_fraction held out to pick the best epoch)")
            spec = self.trial_spec(json.loads(best.user_attrs["spec"]))
            call = TrainCall(target, out / "best.run",
                             say=lambda line: self.say(f"best spec: {line}"))
            track = self.tracking.best_slot(best.number) if self.tracking else "none"
            train_part(spec, self.table, self.settings, call, self.split_by, track)
            self.folder.drop_checkpoints([out / "best.run"])
        else:
            worker = best.user_attrs.get("worker", "another process")
            return [f"the best model was trained by {worker}; find it in its run folder, or"
                    f" train {out / 'best.yaml'}"]
        write_text(stamp, f"{best.number}\n")
        return []

    def keep_best_model(self, study: Any) -> None:
        """Remove the model files of finished trials in this folder that are not the best: a
        search keeps one model, not one a trial."""
        best = best_trial(study)
        for trial in study.trials:
            if trial.state.is_finished() and (best is None or trial.number != best.number):
                (self.trial_dir(trial.number) / MODEL).unlink(missing_ok=True)

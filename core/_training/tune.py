"""Hyperparameter search on Optuna, behind ``polymodal tune`` and :func:`polymodal.tune`.

A trial puts values drawn from the spec's ``search`` section into the spec, trains it as
``polymodal train`` would (or cross-validates it with ``folds``) and gives Optuna the
early-stopping metric: the best epoch's value on the validation rows, or its mean over the
held-out folds. Bad trials are pruned from their per-epoch (or per-fold) values by Optuna's
median pruner. The study lives in an Optuna RDB storage (``sqlite:///RUN/study.db`` by
default): rerunning the command continues it, and several processes or machines given the same
storage URL and study name work on it at once. The first trial of a new study is the spec as
written, where its values lie in the search space, so the search reports what it gained.

Optuna is an optional dependency (``pip install 'polymodal[tune]'``), imported only here.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import socket
import time
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
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
from .._files import atomic_path, remove_stale_locks, write_text
from .._search import Choice, FloatRange, IntRange, label, plain_data, put
from .._spec import ModelSpec, load_spec
from . import distributed, objective
from .cv import SpecScores, plan_folds, say_once, settled
from .engine import CHECKPOINT, train
from .fold_run import run_fold
from .folds import FoldPlan, group_column, group_keys
from .inference import presence_table
from .report import json_safe
from .track_groups import TuneTracking
from .tracking import Slot


class TrialFailed(PolymodalError):
    """A trial whose values do not train: its loss diverged, or its model did not fit in
    memory. The trial fails; the study goes on."""


#: Errors that fail one trial (its combination of values does not fit together, diverges or
#: does not fit in memory) but not the study: a bad table or a broken plugin fails every trial,
#: and stops the run.
TRIAL_ERRORS = (SpecError, ConnectionMismatch, TrialFailed)
#: A run stops after this many failed trials in a row.
MAX_FAILURES_IN_A_ROW = 5
MODEL = "model.safetensors"


class TuneError(PolymodalError):
    """The study cannot be run: no Optuna, a bad storage URL, a study of another objective."""


def _optuna():
    try:
        import optuna
    except ImportError:
        raise TuneError("hyperparameter search needs Optuna: pip install 'polymodal[tune]'") from None
    # The run says what happens itself (a failed trial in one line, not a traceback).
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    return optuna


@dataclass
class TuneResult:
    """What a search run left: the study's best trial, as a spec file and a model file."""

    output: Path
    study: str
    storage: str
    metric: str
    direction: str
    best_trial: int | None
    best_value: float | None
    best_spec: Path | None
    best_model: Path | None
    baseline_value: float | None  # the spec as written (trial 0), where it was in the space
    trials: dict[str, int]  # counts by state
    ran: int  # trials this process ran
    notes: list[str]
    by_inputs: list[str] = field(default_factory=list)  # the best trial's, by presence of inputs
    is_main: bool = True  # False in the other processes under torchrun
    tracking: list[str] = field(default_factory=list)  # where the runs went, what was not sent

    def summary(self) -> dict[str, Any]:
        return json_safe({k: (str(v) if isinstance(v, Path) else v) for k, v in self.__dict__.items()})

    def text(self) -> str:
        counts = ", ".join(f"{n} {state.lower()}" for state, n in self.trials.items() if n)
        lines = [f"study {self.study!r} ({self.storage}): {counts or 'no trials'};"
                 f" this run ran {self.ran}"]
        if self.best_trial is None:
            lines.append("no trial has completed yet")
        else:
            lines.append(f"best: trial {self.best_trial}, {self.metric} = {self.best_value:.4f}"
                         f" ({self.direction})")
            if self.baseline_value is not None:
                lines.append(f"the spec as written (trial 0): {self.metric} ="
                             f" {self.baseline_value:.4f}")
            lines.append(f"best spec: {self.best_spec}")
            if self.best_model:
                lines.append(f"best model: {self.best_model}")
            lines += self.by_inputs
        lines += self.notes
        return "\n".join(lines)


def tune(
    spec: ModelSpec | str | Path | Mapping[str, Any],
    data: Any,
    *,
    trials: int,
    folds: int | None = None,
    group_by: str | None = None,
    fold_column: str | None = None,
    stratify: bool = False,
    storage: str | None = None,
    study: str | None = None,
    timeout: float | None = None,
    output: str | Path | None = None,
    options: Mapping[str, Any] | None = None,
    pruning: bool = True,
    sampler_seed: int | None = None,
    heartbeat: int = 60,
    on_bad_row: str = "fail",
    keep_checkpoints: bool = False,
    log: Callable[[str], None] | None = None,
    track: Any = None,
) -> TuneResult:
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
    optuna = _optuna()
    say = log or (lambda _: None)
    spec = load_spec(spec)
    if not spec.search:
        raise SpecError([("search", "missing: name the spec paths to search over, e.g. `search:"
                          " {training.lr: {type: float, low: 0.0001, high: 0.01, log: true}}`")])
    if trials < 1:
        raise TuneError(f"--trials {trials}: run at least one trial")
    check_connections(spec)
    options = {k: v for k, v in (options or {}).items() if v is not None}
    _check_overrides(options, spec.search)
    metric, higher = objective.monitored(spec.training, Binding(spec))
    out = Path(output) if output is not None else Path(f"{spec.name}.tune")
    url = storage or f"sqlite:///{(out / 'study.db').resolve()}"
    name = study or spec.name
    table = read_table(data)
    Binding(spec).require_columns(table, targets=True)
    plan = _fold_plan(table, spec, folds, group_by, fold_column, stratify, options)
    if plan is not None:  # every fold's model has an output for each class of the table
        spec = settled(spec, table)
    if (out / "folds.csv").exists():  # a cross-validation's folder: its files would mix
        raise TuneError(f"{out}: this folder holds a cross-validation (folds.csv); give the"
                        " search another -o")
    split_by = group_column(group_by, spec.training.group_by)
    if plan is None and split_by:  # a missing column is found now, not in the first trial
        group_keys(table, split_by, "group the validation split by")
    out.mkdir(parents=True, exist_ok=True)
    group = _Group(str(options.get("device", spec.training.device)))
    runner = _Runner(spec, table, plan, out, options, group_by, on_bad_row, keep_checkpoints,
                     metric, higher, say, group)
    if not group.main:
        runner.follow()
        followed = _result(None, out, name, url, metric, higher, 0, [])
        followed.is_main = False
        return followed
    opened = _open_study(optuna, url, name, metric, higher, heartbeat, pruning, plan is not None,
                         sampler_seed)
    notes = []
    tracking: TuneTracking | None = None
    try:
        tracking = runner.tracking = TuneTracking.open(track, spec, out, name, say)
        if tracking is not None:
            tracking.start(spec, name, metric, opened.direction.name.lower(), trials,
                           plan.folds if plan else None, _safe_url(url), options)
        ran = runner.lead(opened, trials, timeout)
    except BaseException as exc:
        # What the study holds so far is written before the run stops (no best model is
        # retrained on the way out).
        with contextlib.suppress(Exception):
            write_summary(opened, runner, out)
        if tracking is not None:
            tracking.finish(out, None, exc)
        raise
    finally:
        group.finish()
    notes += write_results(optuna, opened, runner, out)
    result = _result(opened, out, name, url, metric, higher, ran, notes)
    if tracking is not None:
        result.tracking = tracking.finish(out, _best(opened))
    return result


def _check_overrides(options: Mapping[str, Any], space: Mapping[str, Any]) -> None:
    """A command-line override of a training option the search varies would make every trial
    the same there, and the best spec written out would not be what scored."""
    for option in options:
        if f"training.{option}" in space:
            flag = "--" + option.replace("_", "-")
            raise TuneError(f"{flag} sets training.{option}, which the spec's search varies:"
                            f" leave {flag} out, or take training.{option} out of the search")


def _fold_plan(table: Table, spec: ModelSpec, folds: int | None, group_by: str | None,
               fold_column: str | None, stratify: bool, options: Mapping[str, Any]) -> FoldPlan | None:
    """The folds trials are cross-validated on; None where they use one validation split."""
    if folds is not None or fold_column is not None:
        return plan_folds(table, spec, folds=folds, group_by=group_by, fold_column=fold_column,
                          stratify=stratify, seed=int(options.get("seed", spec.training.seed)))
    if stratify:
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


class _Group:
    """Under torchrun every process trains each trial together; rank 0 alone talks to the study
    and shares with the others what to train and whether to stop."""

    def __init__(self, device: str):
        # The process group lives as long as the search: every trial's training joins it.
        self.context = distributed.start(device)

    @property
    def main(self) -> bool:
        return self.context.main

    def share(self, value: Any) -> Any:
        """Rank 0's ``value``, in every process."""
        if not self.context.distributed:
            return value
        import torch.distributed as dist

        box = [value]
        dist.broadcast_object_list(box, src=0, device=self._device())
        return box[0]

    def _device(self) -> Any:
        return self.context.device if self.context.device.type == "cuda" else None

    def finish(self) -> None:
        if self.main:
            self.share(None)  # tells the other processes that the run is over
        distributed.stop(self.context)


class _Pruned(Exception):
    """Raised inside a trial that Optuna decided to prune."""


class _Runner:
    """Runs trials: builds each trial's spec, trains it (or cross-validates it), and keeps the
    trial folder small."""

    def __init__(self, spec: ModelSpec, table: Table, plan: FoldPlan | None, out: Path,
                 options: dict[str, Any], group_by: str | None, policy: str,
                 keep_checkpoints: bool, metric: str, higher: bool, say: Callable[[str], None],
                 group: _Group):
        self.spec, self.table, self.plan, self.out = spec, table, plan, out
        self.options, self.group_by, self.policy = options, group_by, policy
        self.keep_checkpoints, self.metric, self.higher = keep_checkpoints, metric, higher
        self.say, self.group = say, group
        self.base = plain_data(spec)
        self.shown: set[str] = set()  # notes said once, not once a trial
        self.error: str | None = None  # why this process's last trial failed
        self.tracking: TuneTracking | None = None  # the study's runs in a tracker (rank 0)
        self.slot: Slot | None = None  # where the running trial's training is recorded

    # -- the study's side (rank 0) ---------------------------------------------------------
    def lead(self, study: Any, trials: int, timeout: float | None) -> int:
        optuna = _optuna()
        with _quiet(optuna):
            optuna.storages.fail_stale_trials(study)  # trials of a process that died
        if self.tracking is not None:  # their runs are failed too, now that the study says so
            self.tracking.stale(study)
        self._tidy_failed(study)
        _enqueue_baseline(study, self.spec, self.say)
        finished = _finished(study)
        if finished >= trials:
            self.say(f"the study already has {finished} finished trial(s) (--trials {trials}):"
                     " nothing to run; raise --trials to run more")
            return 0
        self.say(f"study {study.study_name!r}: {finished} of {trials} trial(s) finished;"
                 f" comparing trials by {self.metric} ({'higher' if self.higher else 'lower'}"
                 " is better)")
        started, ran, failures = time.monotonic(), 0, 0
        while _finished(study) < trials:
            if timeout is not None and time.monotonic() - started >= timeout:
                self.say(f"--timeout {timeout:g} s reached")
                break
            with _quiet(optuna):
                study.optimize(self.objective, n_trials=1, catch=TRIAL_ERRORS)
            ran += 1
            keep_best_model(study, self)
            if self.tracking is not None:
                self.tracking.check_best(_best(study))
            failures = failures + 1 if self.error else 0
            if failures >= MAX_FAILURES_IN_A_ROW:
                raise TuneError(f"{failures} trials in a row failed; the last one: {self.error}")
        return ran

    def _tidy_failed(self, study: Any) -> None:
        """What killed trials left in this folder: their checkpoints (unless kept) and the lock
        files no live run holds."""
        if not self.keep_checkpoints:
            for trial in study.trials:
                if trial.state.name == "FAIL":
                    folder = self.trial_dir(trial.number)
                    for checkpoint in [folder / CHECKPOINT, *folder.glob(f"fold_*/{CHECKPOINT}")]:
                        checkpoint.unlink(missing_ok=True)
        removed = remove_stale_locks(self.out / "trials") if (self.out / "trials").is_dir() else []
        if removed:
            self.say(f"note: removed {len(removed)} lock file(s) of trials whose run had ended")

    def objective(self, trial: Any) -> float:
        optuna = _optuna()
        self.error, self.slot = None, None
        values = suggest(trial, self.spec.search or {})
        trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
        shown = ", ".join(f"{p}={label(v)}" for p, v in values.items())
        self.say(f"trial {trial.number}: {shown}")
        try:
            spec_data = self._spec_data(values)
            trial.set_user_attr("spec", json.dumps(spec_data))
            self.group.share((trial.number, spec_data))
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
        except (DivergedError, MemoryError, RuntimeError) as exc:
            if isinstance(exc, RuntimeError) and not out_of_memory(exc):
                raise
            why = (f"its model did not fit in memory ({first_line(exc, 200)})"
                   if not isinstance(exc, DivergedError) else first_line(exc, 400))
            self._failed(trial, why)
            raise TrialFailed(why) from None
        finally:
            self._tidy(trial.number)
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
        return bool(self.group.share(not last and trial.should_prune()))

    # -- the other processes under torchrun --------------------------------------------------
    def follow(self) -> None:
        try:
            while (job := self.group.share(None)) is not None:
                number, spec_data = job
                try:
                    self._run(number, spec_data,
                              lambda step, v, last: bool(self.group.share(None)))
                except (_Pruned, DivergedError, *TRIAL_ERRORS):
                    pass  # rank 0 records it
        finally:
            self.group.finish()

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
        return self.out / "trials" / f"trial_{number}"

    def _run(self, number: int, spec_data: Mapping[str, Any],
             report: Callable[[int, float, bool], bool]) -> float:
        """Train trial ``number``; ``report(step, value, last)`` after each epoch (or fold)
        says whether to prune."""
        spec = self.trial_spec(spec_data)
        folder = self.trial_dir(number)
        say = say_once(lambda line: self.say(f"trial {number}: {line}"), self.shown)
        if self.plan is None:
            pruned = []
            epochs = int(self.options.get("epochs", spec.training.epochs))

            def on_epoch(row: dict[str, Any], value: float) -> str | None:
                if report(row["epoch"], value, row["epoch"] >= epochs):
                    pruned.append(row["epoch"])
                    return "pruned, worse than the median of earlier trials at this epoch"
                return None

            self.slot = self.tracking.trial_slot(number) if self.tracking is not None else None
            result = train(spec, self.table, folder / MODEL, run_dir=folder,
                           group_by=self.group_by, options=self.options,
                           on_bad_row=self.policy, progress=False, log=say, on_epoch=on_epoch,
                           track=self.slot or "none")
            if pruned:
                raise _Pruned()
            _keep_by_inputs(folder, result.best.get("val_by_presence", {}), "validation rows")
            return result.best_value
        values = []
        by_inputs = SpecScores(spec.name, spec)
        for fold in range(self.plan.folds):
            fold_dir = folder / f"fold_{fold + 1}"
            try:
                track = (self.tracking.fold_slot(number, fold) if self.tracking is not None
                         else "none")
                record = run_fold(spec, self.table, self.plan, fold, fold_dir, self.options,
                                  self.policy, False, say, track)
            finally:
                self._tidy_fold(fold_dir)
            by_inputs.by_presence.append(record.by_presence)
            values.append(objective.value_of(record.metrics, self.metric, spec))
            if self.tracking is not None:
                self.tracking.fold_value(number, fold, record.metrics, float(np.mean(values)))
            # Steps count folds from 1, as they count epochs.
            if report(fold + 1, float(np.mean(values)), fold + 1 == self.plan.folds):
                raise _Pruned()
        _keep_by_inputs(folder, {head: {kind: {"rows": v["rows"], "metrics": v["mean"]}
                                        for kind, v in kinds.items()}
                                 for head, kinds in by_inputs.presence_summary().items()},
                        f"held-out folds, mean over {self.plan.folds}")
        return float(np.mean(values))

    def _tidy_fold(self, fold_dir: Path) -> None:
        (fold_dir / MODEL).unlink(missing_ok=True)  # a CV trial's model is retrained if best
        if not self.keep_checkpoints:
            (fold_dir / CHECKPOINT).unlink(missing_ok=True)

    def _tidy(self, number: int) -> None:
        if not self.keep_checkpoints:
            (self.trial_dir(number) / CHECKPOINT).unlink(missing_ok=True)


#: A trial's metrics by the inputs each row holds, in its folder (for the summary of the best).
BY_INPUTS = "by_inputs.json"


def _keep_by_inputs(folder: Path, by_presence: Mapping[str, Any], rows: str) -> None:
    if by_presence:
        write_text(folder / BY_INPUTS, json.dumps(json_safe({"rows": rows,
                                                             "heads": dict(by_presence)})))


def _best_by_inputs(out: Path, trial: int) -> list[str]:
    """The best trial's metrics by the inputs each row holds, as text lines (none where every
    row held every input)."""
    try:
        kept = json.loads((out / "trials" / f"trial_{trial}" / BY_INPUTS).read_text("utf-8"))
    except (OSError, ValueError):
        return []
    lines = []
    for head, kinds in kept["heads"].items():
        lines += [f"best trial, head {head}, by the inputs each row holds ({kept['rows']}):",
                  presence_table(kinds)]
    return lines


def suggest(trial: Any, space: Mapping[str, Any]) -> dict[str, Any]:
    """The trial's value for each searched path."""
    values = {}
    for path, distribution in space.items():
        if isinstance(distribution, FloatRange):
            values[path] = trial.suggest_float(path, distribution.low, distribution.high,
                                               log=distribution.log, step=distribution.step)
        elif isinstance(distribution, IntRange):
            values[path] = trial.suggest_int(path, distribution.low, distribution.high,
                                             step=distribution.step, log=distribution.log)
        else:
            assert isinstance(distribution, Choice)
            stored = _stored_choices(distribution)
            picked = trial.suggest_categorical(path, list(stored))
            values[path] = stored[picked]
    return values


def _stored_choices(distribution: Choice) -> dict[Any, Any]:
    """Choices by what Optuna stores for them: numbers, text, booleans and null as they are;
    lists and mappings (or all of them, where they mix) as compact JSON text."""
    if all(c is None or isinstance(c, (bool, int, float, str)) for c in distribution.choices):
        return {c: c for c in distribution.choices}
    return {label(c): c for c in distribution.choices}


def _enqueue_baseline(study: Any, spec: ModelSpec, say: Callable[[str], None]) -> None:
    """Make the first trial of a new study the spec as written, where its values are in the
    search space."""
    if study.trials or study.user_attrs.get("baseline"):
        return  # (processes starting a study together may still both add it: harmless)
    study.set_user_attr("baseline", True)
    params, outside = {}, []
    for path, distribution in (spec.search or {}).items():
        value = current_value(spec, path)
        if isinstance(distribution, Choice):
            stored = {label(v): k for k, v in _stored_choices(distribution).items()}
            if label(value) in stored:
                params[path] = stored[label(value)]
                continue
        elif _on_grid(value, distribution):
            params[path] = value
            continue
        outside.append(f"{path} = {label(value)}")
    if outside:
        say("the spec's own values are not all in the search space (" + "; ".join(outside)
            + "): no trial of the spec as written")
        return
    study.enqueue_trial(params, user_attrs={"baseline": True})


def _on_grid(value: Any, distribution: FloatRange | IntRange) -> bool:
    """Whether a range can draw ``value``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    if not distribution.low <= value <= distribution.high:
        return False
    if isinstance(distribution, IntRange):
        return float(value).is_integer() and (int(value) - distribution.low) % distribution.step == 0
    if distribution.step is None:
        return True
    steps = (value - distribution.low) / distribution.step
    return abs(steps - round(steps)) < 1e-9


def current_value(spec: ModelSpec, path: str) -> Any:
    """The value at ``path`` of the validated spec, as plain data."""
    from pydantic import BaseModel

    node: Any = spec
    for part in path.split("."):
        node = getattr(node, part) if isinstance(node, BaseModel) else node[part]
    if isinstance(node, BaseModel):
        return node.model_dump(mode="json", exclude_unset=True)
    return node


def _finished(study: Any) -> int:
    from optuna.trial import TrialState

    return len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)))


def _open_study(optuna: Any, url: str, name: str, metric: str, higher: bool, heartbeat: int,
                pruning: bool, by_fold: bool, sampler_seed: int | None) -> Any:
    if "://" not in url:
        raise TuneError(f"--storage {url!r}: give an Optuna RDB URL, e.g. sqlite:///study.db,"
                        " postgresql://user@host/db or mysql://user@host/db")
    # SQLite waits up to a minute for a lock instead of 5 s: several processes share the file.
    engine = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {}
    for attempt in range(3):
        try:
            with _quiet(optuna):
                storage = optuna.storages.RDBStorage(url, engine_kwargs=engine,
                                                     **_heartbeat(optuna, heartbeat))
            break
        except Exception as exc:  # noqa: BLE001 - SQLAlchemy and drivers raise many kinds
            # Processes started together race to create a new storage's tables: try again.
            if attempt == 2:
                raise TuneError(f"--storage {_safe_url(url)}: cannot open the study storage"
                                f" ({type(exc).__name__}: {exc})") from None
            time.sleep(1 + attempt)
    # Steps below n_warmup_steps are not judged. Per epoch (steps 1, 2, ...) the first epoch
    # is too noisy to judge by (a warming-up schedule has barely begun); per fold (steps 1,
    # 2, ...) one fold is enough.
    pruner = (optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=1 if by_fold else 2)
              if pruning else optuna.pruners.NopPruner())
    direction = "maximize" if higher else "minimize"
    study = optuna.create_study(storage=storage, study_name=name, direction=direction,
                                load_if_exists=True, pruner=pruner)
    # A resumed study's sampler is seeded past the trials it has: the same seed again would
    # draw the values of its first trials again.
    seed = None if sampler_seed is None else sampler_seed + len(study.trials)
    study.sampler = optuna.samplers.TPESampler(seed=seed)
    known = study.user_attrs.get("metric")
    if known is None:
        study.set_user_attr("metric", metric)
    elif known != metric or study.direction.name.lower() != direction:
        raise TuneError(f"study {name!r} in {_safe_url(url)} compares trials by {known}"
                        f" ({study.direction.name.lower()}); this spec by {metric} ({direction})."
                        " Give another --study")
    return study


def _heartbeat(optuna: Any, seconds: int) -> dict[str, Any]:
    """Storage arguments that fail, then retry (twice), a trial whose process stopped beating."""
    storages = optuna.storages
    retry = getattr(storages, "RetryHeartbeatStaleTrialCallback", None)
    arguments = {"heartbeat_interval": seconds, "grace_period": 2 * seconds}
    if retry is not None:  # Optuna 4.9 and later
        return {**arguments, "heartbeat_stale_trial_callback": retry(max_retry=2)}
    return {**arguments, "failed_trial_callback": storages.RetryFailedTrialCallback(max_retry=2)}


@contextlib.contextmanager
def _quiet(optuna: Any) -> Iterator[None]:
    """Without Optuna's warnings that heartbeats are an experimental feature."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        yield


def _safe_url(url: str) -> str:
    """The URL without a password."""
    scheme, sep, rest = url.partition("://")
    if "@" in rest:
        credentials, _, host = rest.rpartition("@")
        rest = credentials.split(":", 1)[0] + ":***@" + host
    return scheme + sep + rest


def _result(study: Any, out: Path, name: str, url: str, metric: str, higher: bool, ran: int,
            notes: list[str]) -> TuneResult:
    counts: dict[str, int] = {}
    best = baseline = None
    if study is not None:
        for trial in study.trials:
            counts[trial.state.name] = counts.get(trial.state.name, 0) + 1
        best = _best(study)
        baseline = next((t.value for t in study.trials
                         if t.user_attrs.get("baseline") and t.state.name == "COMPLETE"), None)
    spec_file = out / "best.yaml"
    model_file = out / "best.safetensors"
    return TuneResult(out, name, _safe_url(url), metric, "maximize" if higher else "minimize",
                      best.number if best else None, best.value if best else None,
                      spec_file if best and spec_file.is_file() else None,
                      model_file if best and model_file.is_file() else None,
                      baseline, counts, ran, notes,
                      _best_by_inputs(out, best.number) if best else [])


def _best(study: Any) -> Any:
    try:
        return study.best_trial
    except ValueError:  # no completed trial yet
        return None


def write_results(optuna: Any, study: Any, runner: _Runner, out: Path) -> list[str]:
    """The best spec and model, the trials as CSV, and Optuna's plots; notes on what could not
    be written."""
    notes: list[str] = []
    best = write_summary(study, runner, out)
    if best is None:
        return notes
    keep_best_model(study, runner)
    notes += _best_model(best, runner, out)
    notes += _plots(optuna, study, out)
    return notes


def write_summary(study: Any, runner: _Runner, out: Path) -> Any:
    """``trials.csv`` and the best trial's spec (``best.yaml``); the best trial, or None."""
    _write_trials(study, out / "trials.csv")
    best = _best(study)
    if best is None:
        return None
    import yaml

    spec_data = json.loads(best.user_attrs["spec"])
    write_text(out / "best.yaml", f"# study {study.study_name!r}: trial {best.number},"
                      f" {runner.metric} = {best.value:.6g}\n"
                      + yaml.safe_dump(spec_data, sort_keys=False))
    return best


def _best_model(best: Any, runner: _Runner, out: Path) -> list[str]:
    target = out / "best.safetensors"
    stamp = out / "best.trial"
    if target.is_file() and stamp.is_file() and stamp.read_text().strip() == str(best.number):
        return []
    source = runner.trial_dir(best.number) / MODEL
    if runner.plan is None and source.is_file():
        with atomic_path(target) as pending:  # the trial's file itself where it can be
            pending.unlink()
            try:
                os.link(source, pending)
            except OSError:
                shutil.copyfile(source, pending)
    elif runner.plan is not None:
        runner.say(f"training the best spec (trial {best.number}) on the whole table for its model"
                   " file (its val_fraction held out to pick the best epoch)")
        spec = runner.trial_spec(json.loads(best.user_attrs["spec"]))
        train(spec, runner.table, target, run_dir=out / "best.run", group_by=runner.group_by,
              options=runner.options, on_bad_row=runner.policy, progress=False,
              log=lambda line: runner.say(f"best spec: {line}"),
              track=runner.tracking.best_slot(best.number) if runner.tracking else "none")
        if not runner.keep_checkpoints:
            (out / "best.run" / CHECKPOINT).unlink(missing_ok=True)
    else:
        worker = best.user_attrs.get("worker", "another process")
        return [f"the best model was trained by {worker}; find it in its run folder, or train"
                f" {out / 'best.yaml'}"]
    write_text(stamp, f"{best.number}\n")
    return []


def keep_best_model(study: Any, runner: _Runner) -> None:
    """Remove the model files of finished trials in this folder that are not the best: a
    search keeps one model, not one a trial."""
    best = _best(study)
    for trial in study.trials:
        if trial.state.is_finished() and (best is None or trial.number != best.number):
            (runner.trial_dir(trial.number) / MODEL).unlink(missing_ok=True)


def _write_trials(study: Any, path: Path) -> None:
    import csv
    import io

    params = list(dict.fromkeys(p for t in study.trials for p in t.params))
    text = io.StringIO()
    writer = csv.writer(text)
    writer.writerow(["number", "state", "value", "seconds", "last_step", *params, "worker",
                     "baseline", "error"])
    for t in study.trials:
        seconds = round((t.datetime_complete - t.datetime_start).total_seconds(), 1) \
            if t.datetime_complete and t.datetime_start else ""
        last = max(t.intermediate_values) if t.intermediate_values else ""
        writer.writerow([t.number, t.state.name, "" if t.value is None else t.value,
                         seconds, last,
                         *(t.params.get(p, "") for p in params), t.user_attrs.get("worker", ""),
                         bool(t.user_attrs.get("baseline")), _error(t)])
    write_text(path, text.getvalue())


def _error(trial: Any) -> str:
    """Why ``trial`` failed, as recorded; for one whose process ended without saying (killed,
    or its machine went down), what the study saw."""
    said = trial.user_attrs.get("error", "")
    if said or trial.state.name != "FAIL":
        return said
    return "its process stopped sending heartbeats (killed?); the study runs its values again"


def _plots(optuna: Any, study: Any, out: Path) -> list[str]:
    """optimization_history.png and param_importances.png (Optuna's matplotlib plots)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return ["no plots: matplotlib is not installed (pip install 'polymodal[tune]')"]
    from optuna.visualization import matplotlib as plots

    notes = []
    for name, draw in (("optimization_history", plots.plot_optimization_history),
                       ("param_importances", plots.plot_param_importances)):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # Optuna marks its matplotlib plots experimental
                axes: Any = draw(study)
            # One Axes, or an array of them (importances of several objectives).
            figure: Any = axes.figure if hasattr(axes, "figure") else axes.flat[0].figure
            figure.tight_layout()
            _save_figure(figure, out / f"{name}.png")
            plt.close(figure)
        except (ValueError, RuntimeError) as exc:  # e.g. importances need two completed trials
            notes.append(f"no {name}.png: {exc}")
    return notes


def _save_figure(figure: Any, path: Path) -> None:
    with atomic_path(path) as pending:
        figure.savefig(pending, dpi=80, format="png")

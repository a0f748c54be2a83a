"""How cv and tune group their runs in an experiment tracker (:mod:`.tracking`).

``cv``: one parent run for the command (its folder's ``tracking.json`` keeps its id, so a rerun
continues it), a child run for each spec and fold (the fold's training, then its scores on the
held-out fold as ``test.HEAD.METRIC``), and on the parent each metric's mean and sd over the
folds and the paired differences with the first spec. ``tune``: a parent run for the study, a
child run for each trial (its training; with folds, its folds are its children) with its
values, state (complete, pruned, failed with the reason) and objective value; the best trial is
tagged ``best: true`` and named on the parent.
"""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from .tracking import (
    RECORD,
    Session,
    Slot,
    TrackedRun,
    end_status,
    flat_params,
    hardware_tags,
    open_session,
    read_record,
    target_of,
    version_tags,
)


def _finish(session: Session, run: TrackedRun, exc: BaseException | None,
            say: Callable[[str], None]) -> list[str]:
    run.finish(end_status(exc))
    lines = session.close()
    for line in lines:
        say(line)
    return lines


def _device_tags(options: Mapping[str, Any], spec: Any) -> dict[str, str]:
    from .distributed import resolve_device

    try:
        device = resolve_device(str(options.get("device", spec.training.device)))
    except Exception:  # noqa: BLE001 - the folds report a bad device themselves
        return {}
    return hardware_tags(device)


class CvTracking:
    """A cross-validation's runs: the parent, and a child per spec and fold."""

    def __init__(self, session: Session, parent: TrackedRun, say: Callable[[str], None]):
        self.session, self.parent, self.say = session, parent, say
        self.result: Any = None  # the cross-validation's result, once it has one
        self.lines: list[str] = []  # where the runs went, what was not recorded

    @classmethod
    @contextlib.contextmanager
    def opened(cls, track: Any, spec: Any, out: Path,
               say: Callable[[str], None]) -> Iterator[CvTracking | None]:
        """The cross-validation's tracking while it runs (None without a tracker); its parent
        run ends with it, failed where it raised."""
        session = open_session(target_of(track, spec.training.track), out.resolve().parent,
                               spec.name, say)
        if session is None:
            yield None
            return
        tracking = cls(session, session.run(out.name, out / RECORD, None, resume=True), say)
        try:
            yield tracking
        except BaseException as exc:
            tracking.finish(None, exc)
            raise
        tracking.finish(tracking.result)

    def start(self, specs: Sequence[tuple[str, Any, str | None]], plan: Any, rows: int,
              options: Mapping[str, Any]) -> None:
        first = specs[0][1]
        self.parent.params({"folds": plan.folds, "rows": rows, "grouped_by": plan.group_column,
                            "stratified_by": plan.stratified_by,
                            "specs": json.dumps([name for name, _, _ in specs]),
                            **{f"options.{k}": v for k, v in options.items()}})
        self.parent.tags({"polymodal.command": "cv", **version_tags(first),
                          **_device_tags(options, first)})

    def slot(self, spec_name: str, fold: int) -> Slot:
        return Slot(self.session, self.parent, f"{spec_name} fold {fold + 1}",
                    {"polymodal.command": "cv", "spec": spec_name, "fold": str(fold + 1)})

    def fold_done(self, slot: Slot | None, spec_name: str, fold: int, fold_dir: Path,
                  metrics: Mapping[str, Mapping[str, float]]) -> None:
        """The fold's scores on its held-out rows, on its child run; a fold an earlier run
        finished without this tracker gets a child run now."""
        run = slot.run if slot is not None else None
        if run is None:
            if read_record(fold_dir / RECORD, self.session.key()) is not None:
                return  # recorded by the run that finished it
            made = self.slot(spec_name, fold)
            run = self.session.run(made.name, fold_dir / RECORD, self.parent)
            run.tags({**made.tags, "reused": "true"})
            run.finish("finished")
        values = {f"test.{head}.{m}": v for head, ms in metrics.items() for m, v in ms.items()}
        run.metrics(values, 0, "held-out fold")

    def finish(self, result: Any, exc: BaseException | None = None) -> None:
        if result is not None:
            self._summary(result)
        self.lines = _finish(self.session, self.parent, exc, self.say)

    def _summary(self, result: Any) -> None:
        values: dict[str, float] = {}
        for scores in result.scores:
            for head, metrics in scores.mean_sd().items():
                for metric, (mean, sd) in metrics.items():
                    values[f"{scores.name}.{head}.{metric}.mean"] = mean
                    values[f"{scores.name}.{head}.{metric}.sd"] = sd
        first = result.scores[0]
        for other in result.scores[1:]:
            for head, metrics in result.differences(other).items():
                for metric, d in metrics.items():
                    key = f"diff.{first.name}-{other.name}.{head}.{metric}"
                    values.update({f"{key}.mean": d["mean"], f"{key}.sd": d["sd"],
                                   f"{key}.first_better": d["first_better"]})
        self.parent.metrics({k: v for k, v in values.items() if not _undefined(v)}, 0, "summary")
        out = result.output
        for name in ("report.json", "report.txt", "scores.csv", "folds.csv"):
            self.parent.file(out / name)
        for scores in result.scores:
            if scores.predictions is not None:
                self.parent.file(scores.predictions)


def _undefined(value: Any) -> bool:
    return isinstance(value, float) and math.isnan(value)


class TuneTracking:
    """A study's runs: the parent, a child per trial (a trial's folds are its children)."""

    def __init__(self, session: Session, parent: TrackedRun, out: Path,
                 say: Callable[[str], None]):
        self.session, self.parent, self.out, self.say = session, parent, out, say
        self.trials: dict[int, TrackedRun] = {}
        self.fold_slots: dict[tuple[int, int], Slot] = {}
        self.best: int | None = None

    @classmethod
    def open(cls, track: Any, spec: Any, out: Path, study: str,
             say: Callable[[str], None]) -> TuneTracking | None:
        session = open_session(target_of(track, spec.training.track), out.resolve().parent,
                               spec.name, say)
        if session is None:
            return None
        parent = session.run(out.name, out / RECORD, None, resume=True)
        return cls(session, parent, out, say)

    def start(self, spec: Any, study: str, metric: str, direction: str, trials: int,
              folds: int | None, storage: str, options: Mapping[str, Any]) -> None:
        space = {f"search.{path}": json.dumps(d.model_dump(mode="json"))
                 for path, d in (spec.search or {}).items()}
        self.parent.params({"metric": metric, "direction": direction, "folds": folds or 0,
                            **space, **{f"options.{k}": v for k, v in options.items()}})
        self.parent.tags({"polymodal.command": "tune", "storage": storage, "trials": trials,
                          "study": study,
                          **version_tags(spec), **_device_tags(options, spec)})

    def trial_slot(self, number: int) -> Slot:
        """Where a trial trained on one validation split goes: its training is its run."""
        return Slot(self.session, self.parent, f"trial {number}", self._trial_tags(number),
                    files=False)

    def trial_run(self, number: int, values: Mapping[str, Any], folder: Path) -> TrackedRun:
        """A trial scored over folds: its own run, its folds' runs its children."""
        run = self.session.run(f"trial {number}", folder / RECORD, self.parent)
        run.params(flat_params({str(k): v for k, v in values.items()}))
        run.tags(self._trial_tags(number))
        self.trials[number] = run
        return run

    def fold_slot(self, number: int, fold: int) -> Slot:
        slot = Slot(self.session, self.trials.get(number), f"trial {number} fold {fold + 1}",
                    {"polymodal.command": "tune", "optuna.trial": str(number),
                     "fold": str(fold + 1)}, files=False)
        self.fold_slots[(number, fold)] = slot
        return slot

    def fold_value(self, number: int, fold: int, metrics: Mapping[str, Mapping[str, float]],
                   mean: float) -> None:
        """A fold of a trial scored: its held-out metrics on the fold's run, the running mean
        of the objective on the trial's (step: folds done)."""
        slot = self.fold_slots.pop((number, fold), None)
        if slot is not None and slot.run is not None:
            slot.run.metrics({f"test.{h}.{m}": v for h, ms in metrics.items()
                              for m, v in ms.items()}, 0, f"trial {number} fold {fold + 1}")
        run = self.trials.get(number)
        if run is not None:
            run.metrics({"objective": mean}, fold + 1, f"trial {number} fold {fold + 1}")

    def best_slot(self, number: int) -> Slot:
        """Where the best spec's training on the whole table goes (trials scored over folds)."""
        return Slot(self.session, self.parent, "best model",
                    {"polymodal.command": "tune", "optuna.trial": str(number), "best": "true"})

    def _trial_tags(self, number: int) -> dict[str, str]:
        return {"polymodal.command": "tune", "optuna.trial": str(number)}

    def ended(self, number: int, slot: Slot | None, state: str, value: float | None,
              error: str | None = None) -> None:
        """A trial's end: its state (complete, pruned, failed), objective value, reason."""
        run = self.trials.get(number) or (slot.run if slot is not None else None)
        if run is None:  # it failed before its training began
            run = self.session.run(f"trial {number}", None, self.parent)
            run.tags(self._trial_tags(number))
        self.trials[number] = run
        run.tags({"state": state, **({"error": error} if error else {})})
        if value is not None and math.isfinite(value):
            run.metrics({"objective": value}, 0, f"trial {number} objective")
        run.finish({"complete": "finished", "pruned": "killed"}.get(state, "failed"))

    def check_best(self, best: Any) -> None:
        """Tag the study's best trial (and untag the one before)."""
        if best is None or best.number == self.best:
            return
        if self.best is not None and self._handle(self.best) is not None:
            self._handle(self.best).tags({"best": "false"})  # type: ignore[union-attr]
        run = self._handle(best.number)
        if run is not None:
            run.tags({"best": "true"})
        self.best = best.number
        self.parent.tags({"best_trial": str(best.number)})
        self.parent.metrics({"best_value": best.value}, best.number, "best value")

    def _handle(self, number: int) -> TrackedRun | None:
        """The run of trial ``number``: of this process, or one an earlier process recorded."""
        if number in self.trials:
            return self.trials[number]
        folder = self.out / "trials" / f"trial_{number}"
        earlier = read_record(folder / RECORD, self.session.key())
        if earlier is None:
            return None
        self.trials[number] = run = self.session.existing(f"trial {number}", earlier)
        return run

    def stale(self, study: Any) -> None:
        """Trials whose process died (failed by the study, without a reason recorded); and the
        study's best trial so far, so that a later one that beats it takes its tag."""
        try:
            self.best = study.best_trial.number
        except ValueError:  # no completed trial yet
            self.best = None
        for trial in study.trials:
            if trial.state.name == "FAIL" and not trial.user_attrs.get("error"):
                run = self._handle(trial.number)
                if run is not None:
                    # its own tags too: the process may have died before sending them
                    run.tags({**self._trial_tags(trial.number), "state": "failed",
                              "error": "its process stopped (killed?)"})
                    run.finish("failed")

    def finish(self, out: Path, best: Any, exc: BaseException | None = None) -> list[str]:
        if exc is None:
            self.check_best(best)
            for name in ("trials.csv", "best.yaml", "best.safetensors",
                         "optimization_history.png", "param_importances.png"):
                self.parent.file(out / name)
        return _finish(self.session, self.parent, exc, self.say)

"""What a search leaves in its folder and says: the study's counts and best trial
(:class:`TuneResult`), ``trials.csv``, the best spec (``best.yaml``), the best trial's metrics
by the inputs each row holds, and Optuna's plots."""

from __future__ import annotations

import json
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .._files import atomic_path, write_text
from .inference import presence_table
from .report import json_safe
from .run_folder import RunFolder
from .study import best_trial, safe_url


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


def tune_result(study: Any, out: Path, name: str, url: str, metric: str, higher: bool, ran: int,
                notes: list[str]) -> TuneResult:
    """What the study holds (None: this process did not lead it), as the run's result."""
    counts: dict[str, int] = {}
    best = baseline = None
    if study is not None:
        for trial in study.trials:
            counts[trial.state.name] = counts.get(trial.state.name, 0) + 1
        best = best_trial(study)
        baseline = next((t.value for t in study.trials
                         if t.user_attrs.get("baseline") and t.state.name == "COMPLETE"), None)
    spec_file = out / "best.yaml"
    model_file = out / "best.safetensors"
    return TuneResult(out, name, safe_url(url), metric, "maximize" if higher else "minimize",
                      best.number if best else None, best.value if best else None,
                      spec_file if best and spec_file.is_file() else None,
                      model_file if best and model_file.is_file() else None,
                      baseline, counts, ran, notes,
                      _best_by_inputs(out, best.number) if best else [])


#: A trial's metrics by the inputs each row holds, in its folder (for the summary of the best).
BY_INPUTS = "by_inputs.json"


def keep_by_inputs(folder: Path, by_presence: Mapping[str, Any], rows: str) -> None:
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


def write_summary(study: Any, folder: RunFolder, metric: str) -> Any:
    """``trials.csv`` and the best trial's spec (``best.yaml``); the best trial, or None."""
    _write_trials(study, folder)
    best = best_trial(study)
    if best is None:
        return None
    import yaml

    spec_data = json.loads(best.user_attrs["spec"])
    write_text(folder.path / "best.yaml", f"# study {study.study_name!r}: trial {best.number},"
               f" {metric} = {best.value:.6g}\n" + yaml.safe_dump(spec_data, sort_keys=False))
    return best


def _write_trials(study: Any, folder: RunFolder) -> None:
    params = list(dict.fromkeys(p for t in study.trials for p in t.params))
    rows = []
    for t in study.trials:
        seconds = round((t.datetime_complete - t.datetime_start).total_seconds(), 1) \
            if t.datetime_complete and t.datetime_start else ""
        last = max(t.intermediate_values) if t.intermediate_values else ""
        rows.append([t.number, t.state.name, "" if t.value is None else t.value, seconds, last,
                     *(t.params.get(p, "") for p in params), t.user_attrs.get("worker", ""),
                     bool(t.user_attrs.get("baseline")), _error(t)])
    folder.write_csv("trials.csv", ["number", "state", "value", "seconds", "last_step",
                                          *params, "worker", "baseline", "error"], rows)


def _error(trial: Any) -> str:
    """Why ``trial`` failed, as recorded; for one whose process ended without saying (killed,
    or its machine went down), what the study saw."""
    said = trial.user_attrs.get("error", "")
    if said or trial.state.name != "FAIL":
        return said
    return "its process stopped sending heartbeats (killed?); the study runs its values again"


def draw_plots(optuna: Any, study: Any, out: Path) -> list[str]:
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

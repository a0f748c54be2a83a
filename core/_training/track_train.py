"""What a ``train`` run records in an experiment tracker (:mod:`.tracking`).

At the start: the spec flattened to dotted paths and the resolved training options as
parameters, and tags (versions, the CPU capability or GPU, the precision); after each epoch,
its record under the names of ``metrics.csv``; at the end, the model file, ``curves.png``, the
validation rows and the spec as YAML, and how the run ended.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from .tracking import (
    RECORD,
    Session,
    Slot,
    TrackedRun,
    end_status,
    epoch_metrics,
    flat_params,
    hardware_tags,
    open_session,
    target_of,
    version_tags,
)


class TrainTracking:
    """A train run's tracking: its own session, or a slot of a cv's or tune's session."""

    def __init__(self, session: Session, run: TrackedRun, own: bool, files: bool = True):
        self.session, self.run, self.own, self.files = session, run, own, files

    @classmethod
    def open(cls, track: Any, spec: Any, output: Path, run_dir: Path, resume: bool, main: bool,
             say: Callable[[str], None]) -> TrainTracking | None:
        """The run's tracking (None without a tracker, and in every process but the first of a
        data-parallel run). A resumed run continues the run ``run_dir`` names."""
        if not main:
            return None
        if isinstance(track, Slot):
            run = track.session.run(track.name, run_dir / RECORD, track.parent, resume)
            track.run = run
            run.tags(track.tags)
            return cls(track.session, run, own=False, files=track.files)
        session = open_session(target_of(track, spec.training.track), run_dir.parent, spec.name,
                               say)
        if session is None:
            return None
        run = session.run(output.stem, run_dir / RECORD, None, resume)
        return cls(session, run, own=True)

    def start(self, spec: Any, opts: Any, device: Any, threads: int) -> None:
        data = spec.to_dict()
        data.get("training", {}).pop("track", None)  # where it is recorded: not a parameter
        resolved = {"device": str(device), "precision": opts.precision, "threads": threads,
                    "seed": opts.seed}
        self.run.params({**flat_params(data), **{f"resolved.{k}": v for k, v in resolved.items()}},
                        {"polymodal.command": "train", "precision": opts.precision,
                         **version_tags(spec), **hardware_tags(device)})

    def epoch(self, row: Mapping[str, Any]) -> None:
        self.run.metrics(epoch_metrics(row), int(row["epoch"]), f"epoch {row['epoch']}")

    def trained(self, output: Path, run_dir: Path, spec: Any) -> None:
        """The run's files, sent as soon as its epochs are done: they upload while the plot is
        drawn and the best model read back."""
        if not self.files:
            return
        import yaml

        for path in (output, run_dir / "validation_rows.csv"):
            self.run.file(path)
        self.run.text(yaml.safe_dump(spec.to_dict(), sort_keys=False), "spec.yaml")

    def finish(self, run_dir: Path, exc: BaseException | None = None) -> list[str]:
        """Send the plot (where the run finished) and the run's end; lines to say (where this
        run owns its session: where it went, what was not recorded)."""
        if exc is None and self.files:
            self.run.file(run_dir / "curves.png")
        self.run.finish(end_status(exc))
        return self.session.close() if self.own else []

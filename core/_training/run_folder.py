"""The folder a ``cv`` or ``tune`` run writes: its kind (a cross-validation's folder is never
a search's, and the other way round: their files would mix), its lock, its CSV files, and the
checkpoints its runs leave (removed as each run ends, unless asked to keep them)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from .._errors import OutputError
from .._files import write_text
from .._output_lock import output_lock
from .engine import CHECKPOINT
from .report import csv_text

#: Each kind of folder: what it is called in messages, and the files that mark it.
KINDS = {
    "cv": ("cross-validation", "folds.csv"),
    "tune": ("hyperparameter search", "study.db, trials/"),
}


class RunFolder:
    """A ``cv`` (``kind="cv"``) or ``tune`` (``kind="tune"``) run's folder."""

    def __init__(self, path: Path, kind: str, keep_checkpoints: bool = False):
        self.path, self.kind, self.keep_checkpoints = Path(path), kind, keep_checkpoints

    def _holds(self, kind: str) -> bool:
        if kind == "cv":
            return (self.path / "folds.csv").exists()
        return (self.path / "study.db").exists() or (self.path / "trials").is_dir()

    def refuse_other_kind(self) -> None:
        """Stop where the folder holds a run of the other kind."""
        other = "tune" if self.kind == "cv" else "cv"
        if self._holds(other):
            held, marks = KINDS[other]
            raise OutputError(f"{self.path}: this folder holds a {held} ({marks}); give the"
                              f" {_run_name(self.kind)} another -o")

    @contextlib.contextmanager
    def lock(self, say: Callable[[str], None]) -> Iterator[None]:
        """One run a folder at a time: another would mix its files into this one's."""
        with output_lock(self.path, what=f"{_run_name(self.kind)} folder", note=say):
            yield

    def drop_checkpoints(self, folders: Iterable[Path]) -> None:
        """The checkpoints in ``folders`` (of runs that ended), unless they are kept."""
        if not self.keep_checkpoints:
            for folder in folders:
                (folder / CHECKPOINT).unlink(missing_ok=True)

    def write_csv(self, name: str, header: list[str], rows: Iterable[Any]) -> Path:
        """The CSV file ``name`` in the folder, written atomically; its path."""
        path = self.path / name
        write_text(path, csv_text(header, rows))
        return path


def _run_name(kind: str) -> str:
    return "cross-validation" if kind == "cv" else "search"

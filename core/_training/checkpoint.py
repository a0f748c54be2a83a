"""``checkpoint.pt``: a run's state after its last finished epoch, enough to go on bit for bit.

Written atomically after every epoch; read by ``--resume``, which first checks that the
checkpoint belongs to the same run (the same spec and training rows). Loading never unpickles
an object: ``torch.load(weights_only=True)`` accepts tensors and plain values only, and anything
else in the file is refused with a message.
"""

from __future__ import annotations

import hashlib
import io
import json
import pickle
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .._data.binding import State
from .._data.table import Table
from .._errors import CheckpointError, DataError, SpecError, first_line
from .._files import atomic_open
from .history import EpochRecord, Progress

#: What a checkpoint holds, with the type each value must have.
_FIELDS: dict[str, type | tuple[type, ...]] = {
    "epoch": int, "model": dict, "optimizer": dict, "scheduler": dict, "history": str,
    "best_epoch": int, "best_value": (float, int), "stale": int, "spec": str, "state": str,
    "fingerprint": str,
}


def fingerprint(table: Table) -> str:
    """What identifies a run's training rows: their row numbers and the table's source."""
    digest = hashlib.sha256(table.rows.astype(np.int64).tobytes())
    digest.update(table.source.encode())
    return digest.hexdigest()[:16]


@dataclass
class Checkpoint:
    model: dict[str, torch.Tensor]
    optimizer: dict[str, Any]
    scheduler: dict[str, Any]
    progress: Progress
    spec: str  # the spec as JSON: a resumed run must be the same run
    state: State  # the preprocessing fitted on the training rows
    fingerprint: str

    def write(self, path: Path) -> None:
        payload = {
            "epoch": self.progress.epoch, "model": self.model, "optimizer": self.optimizer,
            "scheduler": self.scheduler, "history": json.dumps(self.progress.dicts()),
            "best_epoch": self.progress.best_epoch, "best_value": self.progress.best_value,
            "stale": self.progress.stale, "spec": self.spec, "state": json.dumps(self.state),
            "fingerprint": self.fingerprint,
        }
        # Into memory first: torch's C++ writer reports a full disk as an assertion of its own
        # ("enforce fail at inline_container.cc"); Python's write raises the OSError it is.
        buffer = io.BytesIO()
        torch.save(payload, buffer)
        with atomic_open(path, "wb") as handle:
            handle.write(buffer.getbuffer())

    @classmethod
    def read(cls, path: Path) -> Checkpoint:
        """The checkpoint at ``path``; a file that is not one polymodal wrote whole is a
        :class:`CheckpointError` saying what is wrong with it."""
        payload = _load(path)
        wrong = [k for k, kind in _FIELDS.items() if not isinstance(payload.get(k), kind)]
        if wrong:
            raise CheckpointError(f"--resume: {path} is not a polymodal checkpoint (no valid"
                                  f" {', '.join(wrong)}); {_START_AGAIN}")
        try:
            history = [EpochRecord.from_dict(row) for row in json.loads(payload["history"])]
            state = json.loads(payload["state"])
        except RecursionError:
            raise CheckpointError(f"--resume: {path} has a record that nests too deeply;"
                                  f" {_START_AGAIN}") from None
        except (ValueError, KeyError, TypeError) as exc:
            raise CheckpointError(f"--resume: {path} has an unreadable record ({exc});"
                                  f" {_START_AGAIN}") from None
        progress = Progress(history, payload["best_epoch"], float(payload["best_value"]),
                            payload["stale"])
        if progress.epoch != payload["epoch"]:
            raise CheckpointError(f"--resume: {path} is inconsistent (epoch {payload['epoch']},"
                                  f" but a record up to epoch {progress.epoch}); {_START_AGAIN}")
        return cls(payload["model"], payload["optimizer"], payload["scheduler"], progress,
                   payload["spec"], state, payload["fingerprint"])

    def check_same_run(self, path: Path, spec_json: str, rows: str) -> None:
        """Refuse a checkpoint of another spec or other training rows."""
        if self.spec != spec_json:
            try:
                changed = "; ".join(_differences(json.loads(self.spec), json.loads(spec_json)))
            except (ValueError, RecursionError):  # not a spec this polymodal wrote
                changed = "its spec is unreadable"
            raise SpecError([("", f"--resume: {path} belongs to a run of another spec ({changed});"
                              " a resumed run must be the same run. Start a new run without"
                              " --resume or give another -o/--run-dir")])
        if self.fingerprint != rows:
            raise DataError(f"--resume: the training rows differ from those of the run in {path};"
                            " resume with the same table")


_START_AGAIN = "start the run again without --resume, or give another --run-dir"


def _load(path: Path) -> dict[str, Any]:
    try:
        with warnings.catch_warnings():  # its notes on odd files: the refusal below says more
            warnings.simplefilter("ignore")
            payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(
            f"--resume: {path} holds objects other than tensors and plain values, which polymodal"
            f" never unpickles ({first_line(exc, 200)}); it is not a checkpoint polymodal wrote;"
            f" {_START_AGAIN}") from None
    except (RuntimeError, EOFError, ValueError, OSError, KeyError, IndexError) as exc:
        # A file cut short by a full disk or a copy is the usual cause; the reader's error says
        # which part it missed.
        raise CheckpointError(
            f"--resume: {path} cannot be read: it is truncated or corrupt ({first_line(exc, 200)});"
            f" {_START_AGAIN}") from None
    if not isinstance(payload, dict):
        raise CheckpointError(f"--resume: {path} is not a polymodal checkpoint (it holds a"
                              f" {type(payload).__name__}); {_START_AGAIN}")
    return payload




def _differences(was: Any, now: Any, path: str = "") -> list[str]:
    """Where two specs (as plain data) differ: ``training.epochs 12 -> 14``."""
    if isinstance(was, dict) and isinstance(now, dict):
        return [d for k in dict.fromkeys([*was, *now])
                for d in _differences(was.get(k), now.get(k), f"{path}.{k}" if path else k)]
    return [] if was == now else [f"{path} {json.dumps(was)} -> {json.dumps(now)}"]

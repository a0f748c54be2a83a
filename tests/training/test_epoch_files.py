"""An epoch's files are written on a thread of their own while the next epoch trains: they
hold the epoch's own weights though the next steps change them in place, the epochs' files are
written in order, and a write's failure is raised, never lost."""

from __future__ import annotations

import threading
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file

import polymodal
from polymodal._data.binding import Binding
from polymodal._errors import OutputError
from polymodal._training.checkpoint import Checkpoint
from polymodal._training.engine import _epoch_job
from polymodal._training.epoch_files import EpochFiles
from polymodal._training.epochs import Parts
from polymodal._training.history import Progress

SPEC = {"inputs": {"record": {"adapter": {"type": "tabular", "numerical": ["x", "y"]},
                              "backbone": {"type": "mlp", "hidden": [8]}}},
        "heads": {"label": {"type": "classification", "classes": 2}}}


def test_an_epochs_files_hold_its_weights_though_the_next_epoch_changes_them(tmp_path):
    model = polymodal.build(SPEC)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    for parameter in model.parameters():
        parameter.grad = torch.ones_like(parameter)
    optimizer.step()  # the optimiser has state (its moments) to copy too
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, 1)
    parts = Parts(model.spec, Binding(model.spec), {}, model, optimizer, scheduler)
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    moments = {k: {n: t.clone() for n, t in v.items() if torch.is_tensor(t)}
               for k, v in optimizer.state_dict()["state"].items()}
    job = _epoch_job(parts, Progress(), True, tmp_path / "best.safetensors", tmp_path, model.spec,
                     SimpleNamespace(fingerprint="rows"))
    with torch.no_grad():  # the next epoch's steps, before the files are written
        for parameter in model.parameters():
            parameter.add_(1.0)
    for state in optimizer.state.values():
        state["exp_avg"].add_(1.0)
    job()
    saved = load_file(tmp_path / "best.safetensors")
    assert saved.keys() == weights.keys()
    assert all(torch.equal(saved[k], weights[k]) for k in weights)
    checkpoint = Checkpoint.read(tmp_path / "checkpoint.pt")
    assert all(torch.equal(checkpoint.model[k], weights[k]) for k in weights)
    kept = checkpoint.optimizer["state"]
    assert kept and all(torch.equal(kept[k][n], t) for k, v in moments.items() for n, t in v.items())
    assert (tmp_path / "metrics.json").is_file()


def test_epochs_files_are_written_in_order_one_epoch_after_another():
    written, busy = [], threading.Lock()

    def job(epoch: int):
        def write() -> None:
            assert busy.acquire(blocking=False), "two epochs' files written at once"
            try:
                written.append(epoch)
            finally:
                busy.release()
        return write

    with EpochFiles() as files:
        for epoch in range(1, 6):
            files.write(job(epoch))
    assert written == [1, 2, 3, 4, 5]  # all written once the block is left


def failing(message: str):
    def write() -> None:
        raise OutputError(message)
    return write


def test_a_failed_write_is_raised_at_the_next_epoch_or_at_the_end():
    with pytest.raises(OutputError, match="disk full at epoch 1"):
        with EpochFiles() as files:
            files.write(failing("disk full at epoch 1"))
            files.write(lambda: None)  # the next epoch's hand-over raises the last one's error
    with pytest.raises(OutputError, match="disk full at the last epoch"):
        with EpochFiles() as files:
            files.write(failing("disk full at the last epoch"))


def test_a_run_stopped_by_an_error_waits_for_its_files_and_tells_its_own_error():
    finished = threading.Event()

    def slow() -> None:
        finished.wait(0.3)
        finished.set()

    with pytest.raises(KeyboardInterrupt):
        with EpochFiles() as files:
            files.write(slow)
            raise KeyboardInterrupt  # Ctrl-C while the files are written
    assert finished.is_set()  # the checkpoint of the last finished epoch is on disk
    with pytest.raises(RuntimeError, match="the run's own error"):
        with EpochFiles() as files:
            files.write(failing("a write's error, told after the run's own"))
            raise RuntimeError("the run's own error")

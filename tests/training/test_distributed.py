"""Data-parallel training with torchrun: two CPU processes (gloo) match one process."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import yaml
from training_data import spec_data

import polymodal


def test_two_processes_give_the_metrics_of_one(dataset, tmp_path):
    spec = spec_data(epochs=2)
    spec_path = tmp_path / "spec.yaml"
    spec_path.write_text(yaml.safe_dump(spec))
    single = polymodal.train(spec, dataset, tmp_path / "one.safetensors", progress=False)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
         "--standalone", "-m", "polymodal", "train", str(spec_path), "--data", str(dataset),
         "-o", str(tmp_path / "two.safetensors"), "--json"],
        capture_output=True, text=True, env=env, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout[done.stdout.index("{"):])
    one = single.best["val"]["label"]
    two = summary["best"]["val"]["label"]
    assert summary["epochs_run"] == 2
    assert two["loss"] == pytest.approx(one["loss"], abs=1e-3)
    # the training loss is every process's rows, not the first process's share
    assert summary["best"]["train_loss"] == pytest.approx(single.best["train_loss"], abs=1e-4)
    assert two["accuracy"] == pytest.approx(one["accuracy"], abs=1e-6)


def _torchrun(spec_path, dataset, output, *extra, **popen):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    args = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--standalone",
            "-m", "polymodal", "train", str(spec_path), "--data", str(dataset), "-o", str(output),
            "--quiet", *extra]
    if popen:
        return subprocess.Popen(args, env=env, **popen)
    return subprocess.run(args, capture_output=True, text=True, env=env, timeout=300)


def test_a_locked_output_stops_every_process_at_once(dataset, tmp_path):
    from polymodal._output_lock import output_lock

    spec_path = tmp_path / "spec.yaml"
    spec_path.write_text(yaml.safe_dump(spec_data(epochs=1)))
    output = tmp_path / "m.safetensors"
    with output_lock(output):
        done = _torchrun(spec_path, dataset, output)
    assert done.returncode != 0
    # the first process names the holder; the second follows it instead of waiting for it
    assert f"error: {output}: this output is being written by another polymodal run" \
           f" (pid {os.getpid()}" in done.stderr
    assert "error: the first process of this data-parallel run could not lock its outputs" in done.stderr
    assert "internal error" not in done.stderr
    assert not output.exists() and not (tmp_path / "m.run").exists()


@pytest.mark.slow
def test_resume_after_killing_every_process_gives_the_same_weights(dataset, tmp_path):
    import signal
    import time

    import torch
    from safetensors.torch import load_file

    spec_path = tmp_path / "spec.yaml"
    spec_path.write_text(yaml.safe_dump(spec_data(epochs=3, augment={"hflip": True})))
    whole = _torchrun(spec_path, dataset, tmp_path / "a.safetensors")
    assert whole.returncode == 0, whole.stderr[-3000:]
    killed = _torchrun(spec_path, dataset, tmp_path / "b.safetensors", start_new_session=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    checkpoint = tmp_path / "b.run" / "checkpoint.pt"
    deadline = time.monotonic() + 240
    while not checkpoint.exists() and killed.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    os.killpg(killed.pid, signal.SIGKILL)  # the launcher and both processes
    killed.wait()
    assert torch.load(checkpoint, weights_only=True)["epoch"] < 3
    resumed = _torchrun(spec_path, dataset, tmp_path / "b.safetensors", "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    a, b = load_file(str(tmp_path / "a.safetensors")), load_file(str(tmp_path / "b.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    metrics_a = json.loads((tmp_path / "a.run" / "metrics.json").read_text())
    metrics_b = json.loads((tmp_path / "b.run" / "metrics.json").read_text())
    assert [r["train_loss"] for r in metrics_a] == [r["train_loss"] for r in metrics_b]

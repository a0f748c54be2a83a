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

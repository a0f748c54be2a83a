"""Tracked runs that stop part-way and are taken up again, against a real ``mlflow server``:
a tune trial whose process was killed is failed (with its reason) when the study resumes, a
cross-validation fold interrupted mid-training continues its own child run, and the study's
``best`` tag moves to a later trial that beats the best one."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import pytest

import polymodal

from test_tracking import MlflowClient, _children, _history, _runs, mlflow_server
from training_data import read_csv, table_spec, write_grouped_table

pytest.importorskip("optuna")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with mlflow_server(tmp_path_factory.mktemp("mlflow-server")) as started:
        yield started


def _parent(runs: list):
    [parent] = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    return parent


def _trials(runs: list, parent) -> dict[int, object]:
    return {int(r.data.tags["optuna.trial"]): r for r in _children(runs, parent.info.run_id)}


def _wait_for(check, process: subprocess.Popen, seconds: float = 240) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        assert process.poll() is None, process.communicate()[1][-3000:]
        assert time.monotonic() < deadline, "the run did not get that far in time"
        time.sleep(0.05)


def test_a_tune_trial_killed_mid_run_is_failed_when_the_study_resumes(server, tmp_path):
    table = write_grouped_table(tmp_path)
    spec = table_spec(epochs=5000)  # long enough to be killed in the middle of its training
    spec["search"] = {"training.lr": {"type": "categorical", "choices": [0.05, 0.01]}}
    out = tmp_path / "t.tune"
    track = {"to": "mlflow", "uri": server["uri"], "experiment": "killed"}
    code = ("import json, sys, polymodal\n"
            "spec, table, out, track = json.loads(sys.argv[1])\n"
            "polymodal.tune(spec, table, trials=1, output=out, heartbeat=1, track=track)\n")
    process = subprocess.Popen(
        [sys.executable, "-c", code, json.dumps([spec, str(table), str(out), track])],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    trial = out / "trials" / "trial_0"

    def training_and_recorded() -> bool:  # the trial's run holds its tags, its epochs go on
        if not (trial / "tracking.json").is_file() or not (trial / "metrics.csv").is_file():
            return False
        if len(read_csv(trial / "metrics.csv")) < 2:
            return False
        record = json.loads((trial / "tracking.json").read_text())
        return "optuna.trial" in MlflowClient(server["uri"]).get_run(record["run"]).data.tags

    try:
        _wait_for(training_and_recorded, process)
    finally:
        process.send_signal(signal.SIGKILL)  # no handler runs: the trial stays RUNNING
        process.communicate()
    killed = _trials(_runs(server["uri"], "killed"), _parent(_runs(server["uri"], "killed")))[0]
    assert killed.info.status == "RUNNING"
    time.sleep(2.5)  # the trial's heartbeat (1 s) is stale after twice that
    result = polymodal.tune(spec, table, trials=1, output=out, heartbeat=1, track=track,
                            options={"epochs": 2})
    assert result.trials["FAIL"] == 1 and result.trials["COMPLETE"] == 1
    runs = _runs(server["uri"], "killed")
    parent = _parent(runs)
    trials = _trials(runs, parent)
    assert trials[0].info.run_id == killed.info.run_id
    assert trials[0].info.status == "FAILED" and trials[0].data.tags["state"] == "failed"
    assert "its process stopped" in trials[0].data.tags["error"]
    assert parent.info.status == "FINISHED"
    assert [r.data.tags["state"] for n, r in sorted(trials.items()) if n > 0] == ["complete"]


def test_a_cv_fold_interrupted_mid_training_continues_its_child_run(server, tmp_path):
    table = write_grouped_table(tmp_path)
    track = {"to": "mlflow", "uri": server["uri"], "experiment": "cv-resume"}
    spec = table_spec(epochs=3)
    out = tmp_path / "c.cv"

    def interrupt(line: str) -> None:  # Ctrl-C after the first fold's second epoch
        if line.startswith("tab fold 1/2: epoch 2:"):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        polymodal.cv(spec, table, folds=2, output=out, track=track, log=interrupt)
    runs = _runs(server["uri"], "cv-resume")
    parent = _parent(runs)
    [stopped] = _children(runs, parent.info.run_id)
    assert stopped.info.run_name == "tab fold 1" and stopped.info.status == "KILLED"
    assert parent.info.status == "KILLED"
    polymodal.cv(spec, table, folds=2, output=out, track=track)
    runs = _runs(server["uri"], "cv-resume")
    assert _parent(runs).info.run_id == parent.info.run_id
    assert _parent(runs).info.status == "FINISHED"
    children = {r.info.run_name: r for r in _children(runs, parent.info.run_id)}
    assert sorted(children) == ["tab fold 1", "tab fold 2"]
    fold = children["tab fold 1"]
    assert fold.info.run_id == stopped.info.run_id and fold.info.status == "FINISHED"
    assert [s for s, _ in _history(server["uri"], fold.info.run_id, "train_loss")] == [1, 2, 3]
    assert "test.label.accuracy" in fold.data.metrics
    rows = read_csv(out / "tab" / "fold_1" / "metrics.csv")
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]


@pytest.mark.parametrize("resumed", [False, True], ids=["one-run", "resumed-study"])
def test_the_best_tag_moves_to_a_later_trial_that_beats_it(server, tmp_path, resumed):
    table = write_grouped_table(tmp_path)
    # The spec as written (the study's first trial) learns next to nothing at this rate.
    spec = table_spec(epochs=2, optimizer="sgd", lr=0.0001)
    spec["search"] = {"training.lr": {"type": "categorical", "choices": [0.0001, 0.5, 0.3, 0.2]}}
    experiment = f"best-{'resumed' if resumed else 'one'}"
    track = {"to": "mlflow", "uri": server["uri"], "experiment": experiment}
    out = tmp_path / "t.tune"
    if resumed:  # the first process runs the first trial only; the second one beats it
        polymodal.tune(spec, table, trials=1, output=out, sampler_seed=3, track=track)
        first = _trials(_runs(server["uri"], experiment),
                        _parent(_runs(server["uri"], experiment)))
        assert first[0].data.tags["best"] == "true"
    result = polymodal.tune(spec, table, trials=3, output=out, sampler_seed=3, track=track)
    assert result.best_trial not in (None, 0)
    runs = _runs(server["uri"], experiment)
    parent = _parent(runs)
    trials = _trials(runs, parent)
    assert trials[result.best_trial].data.params["training.lr"] != "0.0001"
    best = [n for n, r in trials.items() if r.data.tags.get("best") == "true"]
    assert best == [result.best_trial]
    assert trials[0].data.tags["best"] == "false"
    assert parent.data.tags["best_trial"] == str(result.best_trial)
    history = _history(server["uri"], parent.info.run_id, "best_value")
    assert history[0][0] == 0 and history[-1] == (result.best_trial,
                                                  pytest.approx(result.best_value))

"""Experiment tracking against the real libraries: a real ``mlflow server`` (SQLite backend) on
a free local port, read back through MLflow's client; MLflow's default local store; TensorBoard
event files read back with TensorBoard's own reader."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from training_data import read_csv, table_spec, write_grouped_table

import polymodal
from polymodal._cli import main
from polymodal._mlflow_server import mlflow_server as started_server
from polymodal._ports import free_port

mlflow = pytest.importorskip("mlflow")
pytest.importorskip("tensorboard")
pytest.importorskip("optuna")

from mlflow.tracking import MlflowClient  # noqa: E402


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """One ``mlflow server`` for the module (it takes seconds to start): its URI."""
    with mlflow_server(tmp_path_factory.mktemp("mlflow-server")) as started:
        yield started


@contextlib.contextmanager
def mlflow_server(folder: Path):
    """A real ``mlflow server`` (SQLite backend) on a free local port while the block runs:
    its URI and process."""
    with started_server(folder) as started:
        yield {"uri": started.uri, "process": started.process}


def _runs(uri: str, experiment: str) -> list:
    client = MlflowClient(tracking_uri=uri)
    found = client.get_experiment_by_name(experiment)
    assert found is not None, f"no experiment {experiment!r}"
    return client.search_runs([found.experiment_id], max_results=1000)


def _history(uri: str, run_id: str, metric: str) -> list[tuple[int, float]]:
    return [(m.step, m.value) for m in MlflowClient(tracking_uri=uri).get_metric_history(
        run_id, metric)]


def _artifacts(uri: str, run_id: str) -> set[str]:
    return {a.path for a in MlflowClient(tracking_uri=uri).list_artifacts(run_id)}


def _children(runs: list, parent: str) -> list:
    return [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent]


# -- train ----------------------------------------------------------------------------------


def test_train_records_parameters_metrics_tags_and_files(server, tmp_path):
    table = write_grouped_table(tmp_path)
    result = polymodal.train(table_spec(epochs=2), table, tmp_path / "m.safetensors",
                             progress=False, track={"to": "mlflow", "uri": server["uri"],
                                                    "experiment": "train"})
    [run] = _runs(server["uri"], "train")
    assert run.info.status == "FINISHED" and run.info.run_name == "m"
    params = run.data.params
    assert params["training.lr"] == "0.05" and params["inputs.record.adapter.numerical"] == '["x"]'
    assert params["resolved.device"] == "cpu" and params["resolved.precision"] == "fp32"
    assert params["resolved.seed"] == "0" and int(params["resolved.threads"]) >= 1
    tags = run.data.tags
    assert tags["polymodal.version"] == polymodal.__version__ and tags["precision"] == "fp32"
    assert tags["plugin.polymodal"] and tags["torch.version"] and tags["cpu_capability"]
    rows = read_csv(result.run_dir / "metrics.csv")
    columns = [c for c in rows[0] if c != "epoch"]
    assert set(columns) <= set(run.data.metrics) and "val.label.accuracy" in columns
    for column in ("train_loss", "val.label.accuracy"):
        assert _history(server["uri"], run.info.run_id, column) == [
            (int(r["epoch"]), pytest.approx(float(r[column]), rel=1e-6)) for r in rows]
    assert _artifacts(server["uri"], run.info.run_id) >= {
        "m.safetensors", "curves.png", "spec.yaml", "validation_rows.csv"}
    spec = MlflowClient(tracking_uri=server["uri"]).download_artifacts(
        run.info.run_id, "spec.yaml", str(tmp_path))
    assert yaml.safe_load(Path(spec).read_text())["training"]["lr"] == 0.05
    assert json.loads((result.run_dir / "tracking.json").read_text())["run"] == run.info.run_id
    assert result.tracking and "recorded in MLflow" in result.tracking[0]


def test_a_resumed_train_continues_the_same_run(server, tmp_path, capsys):
    table = write_grouped_table(tmp_path)
    spec = tmp_path / "tab.yaml"
    spec.write_text(yaml.safe_dump(table_spec(epochs=3)))
    track = {"to": "mlflow", "uri": server["uri"], "experiment": "resume"}

    def interrupt(row, value):
        if row["epoch"] == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        polymodal.train(spec, table, tmp_path / "m.safetensors", progress=False, track=track,
                        on_epoch=interrupt)
    [stopped] = _runs(server["uri"], "resume")
    assert stopped.info.status == "KILLED"
    args = ["train", str(spec), "--data", str(table), "-o", str(tmp_path / "m.safetensors"),
            "--resume", "--json", "--track", "mlflow", "--track-uri", server["uri"],
            "--experiment", "resume"]
    capsys.readouterr()
    assert main(args) == 0
    summary = json.loads(capsys.readouterr().out)  # standard output holds the summary only
    assert summary["tracking"][0].startswith("tracking: recorded in MLflow")
    [run] = _runs(server["uri"], "resume")
    assert run.info.run_id == stopped.info.run_id and run.info.status == "FINISHED"
    assert [s for s, _ in _history(server["uri"], run.info.run_id, "train_loss")] == [1, 2, 3]


# -- cv -------------------------------------------------------------------------------------


def test_cv_has_a_parent_run_with_a_child_per_spec_and_fold(server, tmp_path):
    table = write_grouped_table(tmp_path)
    track = {"to": "mlflow", "uri": server["uri"], "experiment": "cv"}
    other = table_spec(epochs=1, name="other")
    result = polymodal.cv(table_spec(epochs=1), table, folds=2, compare=[other],
                          output=tmp_path / "c.cv", track=track)
    runs = _runs(server["uri"], "cv")
    [parent] = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert parent.info.run_name == "c.cv" and parent.info.status == "FINISHED"
    assert parent.data.tags["polymodal.command"] == "cv" and parent.data.params["folds"] == "2"
    summary = result.summary()
    mean = parent.data.metrics["tab.label.accuracy.mean"]
    assert mean == pytest.approx(summary["specs"]["tab"]["mean"]["label"]["accuracy"])
    assert parent.data.metrics["tab.label.accuracy.sd"] == pytest.approx(
        summary["specs"]["tab"]["sd"]["label"]["accuracy"])
    assert parent.data.metrics["diff.tab-other.label.accuracy.mean"] == pytest.approx(
        summary["differences"]["tab - other"]["label"]["accuracy"]["mean"])
    assert _artifacts(server["uri"], parent.info.run_id) >= {"report.json", "scores.csv"}
    children = _children(runs, parent.info.run_id)
    assert sorted(r.info.run_name for r in children) == [
        "other fold 1", "other fold 2", "tab fold 1", "tab fold 2"]
    for child in children:
        spec, fold = child.data.tags["spec"], int(child.data.tags["fold"])
        assert child.info.status == "FINISHED"
        assert child.data.metrics["test.label.accuracy"] == pytest.approx(
            summary["specs"][spec]["folds"][fold - 1]["label"]["accuracy"])
        assert [s for s, _ in _history(server["uri"], child.info.run_id, "train_loss")] == [1]
    # A rerun in the same folder continues the same parent; its finished folds add no runs.
    polymodal.cv(table_spec(epochs=1), table, folds=2, compare=[other],
                 output=tmp_path / "c.cv", track=track)
    again = _runs(server["uri"], "cv")
    assert {r.info.run_id for r in again} == {r.info.run_id for r in runs}


# -- tune -----------------------------------------------------------------------------------


def test_tune_has_a_parent_run_and_a_child_per_trial_with_its_state(server, tmp_path,
                                                                    monkeypatch):
    optuna = pytest.importorskip("optuna")

    class PruneTrialThree(optuna.pruners.BasePruner):
        def __init__(self, **_):
            pass

        def prune(self, study, trial):
            return trial.number == 3

    monkeypatch.setattr(optuna.pruners, "MedianPruner", PruneTrialThree)
    table = write_grouped_table(tmp_path)
    spec = table_spec(epochs=2, optimizer="sgd", lr=0.05)
    # lr 10 diverges (a failed trial), deterministically with this sampler seed
    spec["search"] = {"training.lr": {"type": "categorical", "choices": [0.05, 10.0]}}
    track = {"to": "mlflow", "uri": server["uri"], "experiment": "tune"}
    result = polymodal.tune(spec, table, trials=2, output=tmp_path / "t.tune", sampler_seed=1,
                            track=track)
    assert result.trials == {"COMPLETE": 1, "FAIL": 2, "PRUNED": 1}
    runs = _runs(server["uri"], "tune")
    [parent] = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert parent.info.run_name == "t.tune" and parent.info.status == "FINISHED"
    assert parent.data.tags["best_trial"] == "0" and parent.data.tags["study"] == "tab"
    assert parent.data.params["search.training.lr"]
    assert parent.data.metrics["best_value"] == pytest.approx(result.best_value)
    children = {int(r.data.tags["optuna.trial"]): r for r in _children(runs, parent.info.run_id)}
    assert sorted(children) == [0, 1, 2, 3]
    states = {n: (r.data.tags["state"], r.info.status) for n, r in children.items()}
    assert states == {0: ("complete", "FINISHED"), 1: ("failed", "FAILED"),
                      2: ("failed", "FAILED"), 3: ("pruned", "KILLED")}
    assert "diverged" in children[1].data.tags["error"]
    assert children[0].data.metrics["objective"] == pytest.approx(result.best_value)
    assert children[0].data.tags["best"] == "true" and "best" not in children[3].data.tags
    assert children[1].data.params["training.lr"] == "10.0"
    assert _artifacts(server["uri"], parent.info.run_id) >= {"trials.csv", "best.yaml",
                                                             "best.safetensors"}
    # A study continued by a rerun continues its parent run, with new children for new trials.
    more = polymodal.tune(spec, table, trials=3, output=tmp_path / "t.tune", sampler_seed=1,
                          track=track)
    runs = _runs(server["uri"], "tune")
    assert [r.info.run_id for r in runs if "mlflow.parentRunId" not in r.data.tags] == [
        parent.info.run_id]
    assert len(_children(runs, parent.info.run_id)) == sum(more.trials.values())


# -- a tracker that fails -------------------------------------------------------------------


def test_a_server_stopped_mid_run_costs_training_a_bounded_time(server, tmp_path, monkeypatch):
    """The server stops answering after the first epoch (SIGSTOP: connections hang): training
    goes on, the model file is written, and the message says what was not recorded."""
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    table = write_grouped_table(tmp_path)
    lines: list[str] = []
    group = os.getpgid(server["process"].pid)

    def stop_server(row, value):
        if row["epoch"] == 1:
            time.sleep(1)  # the first epoch's records are sent
            os.killpg(group, signal.SIGSTOP)

    started = time.monotonic()
    try:
        result = polymodal.train(table_spec(epochs=3), table, tmp_path / "m.safetensors",
                                 progress=False, log=lines.append, on_epoch=stop_server,
                                 track={"to": "mlflow", "uri": server["uri"],
                                        "experiment": "stopped"})
    finally:
        os.killpg(group, signal.SIGCONT)
    seconds = time.monotonic() - started
    assert (tmp_path / "m.safetensors").is_file() and len(result.history) == 3
    warnings = [line for line in lines if line.startswith("warning: tracking:")]
    assert len(warnings) == 2, lines  # once when it fails, once at the end
    assert "refused or did not answer" in warnings[0]
    assert "not recorded in MLflow" in warnings[1] and "epoch 3" in warnings[1]
    assert "m.safetensors" in warnings[1] and "curves.png" in warnings[1]
    assert result.tracking[-1] == warnings[1]
    assert result.tracking[0].startswith("tracking: partly recorded (see below) in MLflow")
    assert seconds < 90, seconds


def test_a_server_that_is_down_never_stops_training(tmp_path):
    table = write_grouped_table(tmp_path)
    spec = tmp_path / "tab.yaml"
    spec.write_text(yaml.safe_dump(table_spec(epochs=2)))
    started = time.monotonic()
    out = subprocess.run(
        [sys.executable, "-m", "polymodal", "train", str(spec), "--data", str(table), "-o",
         str(tmp_path / "m.safetensors"), "--quiet", "--track", "mlflow", "--track-uri",
         f"http://127.0.0.1:{free_port()}"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    # MLflow's own retries (minutes for each call to a server that is down) are off
    assert time.monotonic() - started < 150
    assert (tmp_path / "m.safetensors").is_file()
    assert out.stderr.count("warning: tracking: not recorded in MLflow at http://127.0.0.1") == 1
    assert "the start of run(s) m" in out.stderr and "metrics m: epoch 1, m: epoch 2" in out.stderr
    assert "Traceback" not in out.stderr
    # the cause is the refused connection itself, whole, not an HTTP library's retry wrapper
    assert "Connection refused" in out.stderr


def test_the_cause_quoted_is_the_innermost_whole():
    from polymodal._training.courier import root_cause

    try:
        try:
            raise ConnectionRefusedError(111, "Connection refused")
        except OSError as inner:
            raise RuntimeError("Max retries exceeded with url: /api (Caused by " + "x" * 400) \
                from inner
    except RuntimeError as exc:
        assert root_cause(exc) == "ConnectionRefusedError: [Errno 111] Connection refused"
    assert root_cause(ValueError("word " * 100), limit=20) == "ValueError: word word word word ..."


# -- the default local store, TensorBoard ---------------------------------------------------


def test_the_default_mlflow_store_is_beside_the_run(tmp_path):
    table = write_grouped_table(tmp_path)
    polymodal.train(table_spec(epochs=1), table, tmp_path / "m.safetensors", progress=False,
                    track="mlflow")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    [run] = _runs(uri, "tab")
    assert run.info.status == "FINISHED" and "train_loss" in run.data.metrics
    artifacts = tmp_path / "mlartifacts" / run.info.run_id / "artifacts"
    assert (artifacts / "m.safetensors").read_bytes() == (tmp_path / "m.safetensors").read_bytes()


def _events(folder: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(folder))
    events.Reload()
    return events


def _hparams(events) -> tuple[dict, int | None]:
    from tensorboard.plugins.hparams import plugin_data_pb2

    found, status = {}, None
    for metadata in events.summary_metadata.values():
        if metadata.plugin_data.plugin_name != "hparams":
            continue
        data = plugin_data_pb2.HParamsPluginData.FromString(metadata.plugin_data.content)
        if data.HasField("session_start_info"):
            for key, value in data.session_start_info.hparams.items():
                found[key] = value.WhichOneof("kind") and getattr(value, value.WhichOneof("kind"))
        if data.HasField("session_end_info"):
            status = data.session_end_info.status
    return found, status


def test_tensorboard_holds_the_scalars_and_the_hyperparameters(tmp_path):
    table = write_grouped_table(tmp_path)
    spec = tmp_path / "tab.yaml"
    spec.write_text(yaml.safe_dump({**table_spec(epochs=2),
                                    "training": {**table_spec(epochs=2)["training"],
                                                 "track": {"to": "tensorboard",
                                                           "uri": str(tmp_path / "tb")}}}))
    assert main(["train", str(spec), "--data", str(table), "-o", str(tmp_path / "m.safetensors"),
                 "--quiet"]) == 0
    events = _events(tmp_path / "tb" / "m")
    rows = read_csv(tmp_path / "m.run" / "metrics.csv")
    assert set(events.Tags()["scalars"]) == {c for c in rows[0] if c != "epoch"}
    assert [(e.step, pytest.approx(e.value, rel=1e-6)) for e in events.Scalars("val.loss")] == [
        (int(r["epoch"]), float(r["val.loss"])) for r in rows]
    params, status = _hparams(events)
    assert params["training.lr"] == 0.05 and params["resolved.device"] == "cpu"
    assert status == 1  # STATUS_SUCCESS
    # A new run of the same name goes beside it, neither removing nor mixing its events.
    first = sorted((tmp_path / "tb" / "m").iterdir())
    assert main(["train", str(spec), "--data", str(table), "-o", str(tmp_path / "m.safetensors"),
                 "--quiet"]) == 0
    assert sorted((tmp_path / "tb" / "m").iterdir()) == first
    assert len(_events(tmp_path / "tb" / "m-2").Scalars("val.loss")) == 2
    # cv: the command's folder, a folder per spec and fold inside it; folds an earlier run
    # finished without tracking get their runs, with their scores, when it is run again
    cv = ["cv", str(spec), "--data", str(table), "--folds", "2", "-o", str(tmp_path / "c.cv"),
          "--quiet"]
    assert main([*cv, "--track", "none"]) == 0 and not (tmp_path / "tb" / "c.cv").exists()
    assert main(cv) == 0
    folds = sorted(p.name for p in (tmp_path / "tb" / "c.cv").iterdir() if p.is_dir())
    assert folds == ["tab_fold_1", "tab_fold_2"]
    fold = _events(tmp_path / "tb" / "c.cv" / "tab_fold_1")
    assert "test.label.accuracy" in fold.Tags()["scalars"]
    assert "tab.label.accuracy.mean" in _events(tmp_path / "tb" / "c.cv").Tags()["scalars"]


# -- what tracking does not do --------------------------------------------------------------


def test_only_the_first_process_of_torchrun_records(tmp_path):
    table = write_grouped_table(tmp_path)
    spec = tmp_path / "tab.yaml"
    spec.write_text(yaml.safe_dump(table_spec(epochs=1)))
    done = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--standalone",
         "-m", "polymodal", "train", str(spec), "--data", str(table), "-o",
         str(tmp_path / "m.safetensors"), "--device", "cpu", "--quiet", "--track", "tensorboard",
         "--track-uri", str(tmp_path / "tb")],
        capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert [p.name for p in (tmp_path / "tb").iterdir()] == ["m"]
    assert len(list((tmp_path / "tb" / "m").glob("events.out.tfevents.*"))) == 1
    assert done.stderr.count("tracking: recorded in TensorBoard") == 1


def test_training_without_tracking_imports_no_tracker(tmp_path):
    table = write_grouped_table(tmp_path)
    code = (f"import sys, polymodal\nsys.path.insert(0, {str(Path(__file__).parent)!r})\n"
            "from training_data import table_spec\n"
            f"polymodal.train(table_spec(), {str(table)!r}, {str(tmp_path / 'm.safetensors')!r},"
            " progress=False)\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('mlflow', 'tensorboard')))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "[]"


@pytest.mark.parametrize("args, message", [
    (["--track-uri", "http://localhost:5000"], "--track-uri needs --track mlflow"),
    (["--experiment", "x"], "--experiment needs --track mlflow"),
    (["--track", "tensorboard", "--experiment", "x"], "--experiment is an option of --track mlflow"),
    (["--track", "none", "--track-uri", "x"], "--track none records nowhere"),
])
def test_tracking_mistakes_are_clear(tmp_path, capsys, args, message):
    table = write_grouped_table(tmp_path)
    spec = tmp_path / "tab.yaml"
    spec.write_text(yaml.safe_dump(table_spec(epochs=1)))
    code = main(["train", str(spec), "--data", str(table), "-o", str(tmp_path / "m.safetensors"),
                 *args])
    err = capsys.readouterr().err
    assert code == 1 and err.startswith("error: ") and message in err, err
    assert not (tmp_path / "m.safetensors").exists() and not (tmp_path / "m.run").exists()


def test_a_bad_track_section_is_a_located_spec_error(tmp_path, capsys):
    spec = tmp_path / "tab.yaml"
    data = table_spec(epochs=1)
    data["training"]["track"] = {"to": "wandb"}
    spec.write_text(yaml.safe_dump(data))
    assert main(["validate", str(spec)]) == 1
    err = capsys.readouterr().err
    assert "training.track.to" in err and "mlflow" in err, err
    data["training"]["track"] = {"to": "tensorboard", "experiment": "x"}
    spec.write_text(yaml.safe_dump(data))
    assert main(["validate", str(spec)]) == 1
    assert "experiment is an option of mlflow only" in capsys.readouterr().err


def test_the_courier_retries_warns_once_and_gives_up_on_a_hung_call():
    """The sender itself: a failing call is tried again (and sent once it works), the first
    failure is said once, and closing never waits longer than the stall on a call that hangs."""
    from polymodal._training.courier import TRIES, Courier

    said: list[str] = []
    calls: list[str] = []

    def flaky():
        calls.append("flaky")
        if len(calls) < TRIES:
            raise ConnectionError("no answer")

    courier = Courier("the tracker", said.append, stall=10.0)
    courier.send("metrics", "epoch 1", flaky)
    courier.send("metrics", "epoch 2", lambda: calls.append("second"))
    assert courier.close() == []
    assert calls == ["flaky"] * TRIES + ["second"]
    assert len(said) == 1 and "ConnectionError: no answer" in said[0]

    hung = __import__("threading").Event()
    courier = Courier("the tracker", said.append, stall=1.0)
    courier.send("metrics", "epoch 1", hung.wait)
    courier.send("files", "model.safetensors", lambda: None)
    started = time.monotonic()
    left = courier.close()
    assert time.monotonic() - started < 5
    assert [(j.kind, j.detail) for j in left] == [("metrics", "epoch 1"),
                                                   ("files", "model.safetensors")]
    hung.set()


def test_a_trial_scored_over_folds_has_its_folds_as_children(tmp_path):
    table = write_grouped_table(tmp_path)
    spec = table_spec(epochs=1)
    spec["search"] = {"training.lr": {"type": "float", "low": 0.01, "high": 0.1, "log": True}}
    polymodal.tune(spec, table, trials=1, folds=2, output=tmp_path / "t.tune",
                   track={"to": "tensorboard", "uri": str(tmp_path / "tb")})
    study = tmp_path / "tb" / "t.tune"
    assert sorted(p.name for p in study.iterdir() if p.is_dir()) == ["best_model", "trial_0"]
    trial = study / "trial_0"
    assert sorted(p.name for p in trial.iterdir() if p.is_dir()) == ["trial_0_fold_1",
                                                                      "trial_0_fold_2"]
    assert [e.step for e in _events(trial).Scalars("objective")] == [1, 2, 0]
    assert "test.label.accuracy" in _events(trial / "trial_0_fold_1").Tags()["scalars"]
    assert "train_loss" in _events(study / "best_model").Tags()["scalars"]


def test_epochs_that_end_close_together_go_in_one_request(tmp_path):
    """Metrics are held while the last request was sent less than METRICS_EVERY ago, then sent
    together, each with its own step and time; the end sends what is held."""
    from polymodal._options import Track
    from polymodal._training.tracking import METRICS_EVERY, open_session

    session = open_session(Track(to="tensorboard", uri=str(tmp_path / "tb")), tmp_path, "x",
                           print)
    run = session.run("r", None)
    for step in (1, 2):
        run.metrics({"loss": 1.0 / step}, step, f"epoch {step}")
        time.sleep(0.05)
    assert [detail for _, detail in run.held] == ["epoch 1", "epoch 2"]
    session.metrics_sent -= METRICS_EVERY  # as if the last request was that long ago
    run.metrics({"loss": 1 / 3}, 3, "epoch 3")
    assert run.held == []  # due: the three go in one request
    run.metrics({"loss": 1 / 4}, 4, "epoch 4")
    assert len(run.held) == 1
    run.finish("finished")
    assert session.close()[0].startswith("tracking: recorded in TensorBoard")
    scalars = _events(tmp_path / "tb" / "r").Scalars("loss")
    assert [(s.step, pytest.approx(s.value)) for s in scalars] == [(1, 1.0), (2, 0.5),
                                                                   (3, 1 / 3), (4, 0.25)]
    assert scalars[1].wall_time - scalars[0].wall_time >= 0.04  # each epoch's own time

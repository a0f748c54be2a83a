"""Tracking to an MLflow server through its REST API (no MLflow in the training process), against
a real ``mlflow server``: an experiment whose artifacts go through the server's proxy or to a
local folder; a server that asks for credentials or answers errors (a small forwarding server
in front of the real one); MLflow's settings for reaching a server, refused when malformed."""

from __future__ import annotations

import base64
import contextlib
import http.client
import subprocess
import sys
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit
from urllib.request import url2pathname

import pytest
import yaml

import polymodal
from polymodal._cli import main
from polymodal._mlflow_server import mlflow_server as started_server

from test_tracking import MlflowClient, _artifacts, _history, _runs
from training_data import read_csv, table_spec, write_grouped_table


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A server that also takes experiments whose files go to an ``http://`` location."""
    with started_server(tmp_path_factory.mktemp("mlflow-server"),
                        artifact_schemes=("http",)) as started:
        yield {"uri": started.uri, "process": started.process}


class Gate:
    """A forwarding server in front of the real one: it answers 401 to a request without the
    ``Authorization`` it expects, ``fail`` (a status) to calls that ``failing`` picks (by path
    and body), and forwards the rest; it keeps the paths, headers and bodies it saw."""

    def __init__(self, upstream: str, expect: str | None = None, fail: int = 0,
                 failing: Callable[[str, bytes], bool] | None = None):
        self.upstream = urlsplit(upstream)
        self.expect, self.fail, self.failing = expect, fail, failing
        self.seen: list[tuple[str, str, str | None]] = []  # method, path, Authorization
        self.bodies: list[bytes] = []
        gate = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                gate.handle(self)

            do_POST = do_PUT = do_GET

        self.http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.uri = f"http://127.0.0.1:{self.http.server_address[1]}"
        self.thread = threading.Thread(target=self.http.serve_forever, daemon=True)
        self.thread.start()

    def handle(self, request: BaseHTTPRequestHandler) -> None:
        body = request.rfile.read(int(request.headers.get("Content-Length", 0)))
        auth = request.headers.get("Authorization")
        self.seen.append((request.command, request.path, auth))
        self.bodies.append(body)
        if self.expect is not None and auth != self.expect:
            return self.answer(request, 401, b'{"error_code": "UNAUTHENTICATED",'
                               b' "message": "You are not authenticated."}')
        if self.failing is not None and self.failing(request.path, body):
            return self.answer(request, self.fail, b"<html>the server broke</html>")
        upstream = http.client.HTTPConnection(self.upstream.hostname, self.upstream.port,
                                              timeout=30)
        kind = request.headers.get("Content-Type", "application/json")
        upstream.request(request.command, request.path, body=body,
                         headers={"Content-Type": kind})
        answer = upstream.getresponse()
        self.answer(request, answer.status, answer.read())
        upstream.close()

    def answer(self, request: BaseHTTPRequestHandler, status: int, body: bytes) -> None:
        request.send_response(status)
        request.send_header("Content-Type", "application/json")
        request.send_header("Content-Length", str(len(body)))
        request.end_headers()
        request.wfile.write(body)

    def close(self) -> None:
        self.http.shutdown()
        self.http.server_close()


@contextlib.contextmanager
def gate(upstream: str, **options):
    started = Gate(upstream, **options)
    try:
        yield started
    finally:
        started.close()


def _train(tmp_path: Path, uri: str, experiment: str, epochs: int = 2, log=None):
    table = write_grouped_table(tmp_path)
    return polymodal.train(table_spec(epochs=epochs), table, tmp_path / "m.safetensors",
                           progress=False, log=log or (lambda line: None),
                           track={"to": "mlflow", "uri": uri, "experiment": experiment})


def test_a_run_to_a_server_imports_no_mlflow(server, tmp_path):
    table = write_grouped_table(tmp_path)
    spec = tmp_path / "tab.yaml"
    spec.write_text(yaml.safe_dump(table_spec(epochs=2)))
    code = ("import sys\nfrom polymodal._cli import main\n"
            "code = main(sys.argv[1:])\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'mlflow'), code)")
    done = subprocess.run(
        [sys.executable, "-c", code, "train", str(spec), "--data", str(table), "-o",
         str(tmp_path / "m.safetensors"), "--quiet", "--track", "mlflow", "--track-uri",
         server["uri"], "--experiment", "light"],
        capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "[] 0"
    [run] = _runs(server["uri"], "light")
    assert run.info.status == "FINISHED"
    assert [s for s, _ in _history(server["uri"], run.info.run_id, "train_loss")] == [1, 2]
    assert _artifacts(server["uri"], run.info.run_id) == {
        "m.safetensors", "curves.png", "spec.yaml", "validation_rows.csv"}


def test_files_go_through_the_servers_artifact_proxy(server, tmp_path):
    result = _train(tmp_path, server["uri"], "proxied")
    [run] = _runs(server["uri"], "proxied")
    client = MlflowClient(tracking_uri=server["uri"])
    assert client.get_experiment(run.info.experiment_id).artifact_location.startswith(
        "mlflow-artifacts:")
    got = Path(client.download_artifacts(run.info.run_id, "m.safetensors", str(tmp_path / "d")))
    assert got.read_bytes() == (tmp_path / "m.safetensors").read_bytes()
    rows = Path(client.download_artifacts(run.info.run_id, "validation_rows.csv",
                                          str(tmp_path / "d")))
    assert rows.read_bytes() == (result.run_dir / "validation_rows.csv").read_bytes()


def test_an_experiment_with_a_local_artifact_folder_gets_its_files_there(server, tmp_path):
    folder = tmp_path / "artifacts here"
    client = MlflowClient(tracking_uri=server["uri"])
    client.create_experiment("local-folder", artifact_location=folder.as_uri())
    _train(tmp_path, server["uri"], "local-folder")
    [run] = _runs(server["uri"], "local-folder")
    assert run.info.artifact_uri.startswith("file:")
    files = Path(url2pathname(urlsplit(run.info.artifact_uri).path))
    assert files.is_relative_to(folder)
    assert (files / "m.safetensors").read_bytes() == (tmp_path / "m.safetensors").read_bytes()
    assert yaml.safe_load((files / "spec.yaml").read_text())["training"]["epochs"] == 2
    assert _artifacts(server["uri"], run.info.run_id) == {
        "m.safetensors", "curves.png", "spec.yaml", "validation_rows.csv"}


def test_other_artifact_schemes_go_through_mlflows_own_store(server, tmp_path):
    """An artifact location of a scheme the REST path does not write itself (here an
    ``http://`` one, which MLflow's HTTP artifact store uploads to the server's proxy)."""
    location = f"{server['uri']}/api/2.0/mlflow-artifacts/artifacts/elsewhere"
    MlflowClient(tracking_uri=server["uri"]).create_experiment("library-store",
                                                               artifact_location=location)
    result = _train(tmp_path, server["uri"], "library-store", epochs=1)
    assert not [line for line in result.tracking if line.startswith("warning")], result.tracking
    [run] = _runs(server["uri"], "library-store")
    assert run.info.artifact_uri.startswith(location)
    assert _artifacts(server["uri"], run.info.run_id) == {
        "m.safetensors", "curves.png", "spec.yaml", "validation_rows.csv"}
    got = Path(MlflowClient(tracking_uri=server["uri"]).download_artifacts(
        run.info.run_id, "spec.yaml", str(tmp_path / "d")))
    assert yaml.safe_load(got.read_text())["training"]["epochs"] == 1


def test_credentials_are_sent_as_mlflow_sends_them(server, tmp_path, monkeypatch):
    basic = "Basic " + base64.b64encode(b"ada:s3cret").decode()
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "ada")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "s3cret")
    with gate(server["uri"], expect=basic) as door:
        result = _train(tmp_path, door.uri, "with-password")
    assert not [line for line in result.tracking if line.startswith("warning")], result.tracking
    assert {auth for _, _, auth in door.seen} == {basic}
    assert {method for method, _, _ in door.seen} == {"GET", "POST", "PUT"}  # files too
    [run] = _runs(server["uri"], "with-password")
    assert run.info.status == "FINISHED" and "train_loss" in run.data.metrics
    monkeypatch.delenv("MLFLOW_TRACKING_USERNAME")
    monkeypatch.delenv("MLFLOW_TRACKING_PASSWORD")
    monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", "t0ken")
    (tmp_path / "token").mkdir()
    with gate(server["uri"], expect="Bearer t0ken") as door:
        result = _train(tmp_path / "token", door.uri, "with-token", epochs=1)
    assert {auth for _, _, auth in door.seen} == {"Bearer t0ken"}
    [run] = _runs(server["uri"], "with-token")
    assert run.info.status == "FINISHED"


@pytest.mark.parametrize("where", ["credentials file", "uri"])
def test_credentials_of_the_file_or_the_uri(server, tmp_path, monkeypatch, where):
    """As MLflow: ``~/.mlflow/credentials`` where the environment names none, else the URI's."""
    basic = "Basic " + base64.b64encode(b"bo:pa55").decode()
    for name in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    if where == "credentials file":
        (tmp_path / "home" / ".mlflow").mkdir(parents=True)
        (tmp_path / "home" / ".mlflow" / "credentials").write_text(
            "[mlflow]\nmlflow_tracking_username = bo\nmlflow_tracking_password = pa55\n")
    with gate(server["uri"], expect=basic) as door:
        uri = door.uri if where != "uri" else door.uri.replace("://", "://bo:pa55@")
        result = _train(tmp_path, uri, f"creds-{where.split()[0]}", epochs=1)
    assert {auth for _, _, auth in door.seen} == {basic}
    assert result.tracking[0].startswith("tracking: recorded in MLflow at http")
    assert "pa55" not in " ".join(result.tracking)  # the password is never shown
    assert "pa55" not in (tmp_path / "m.run" / "tracking.json").read_text()  # nor kept


def test_mlflows_own_tracking_uri_is_honoured(server, tmp_path, monkeypatch):
    """MLFLOW_TRACKING_URI, where no URI is given, as MLflow's own client does."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", server["uri"])
    table = write_grouped_table(tmp_path)
    result = polymodal.train(table_spec(epochs=1), table, tmp_path / "m.safetensors",
                             progress=False, track={"to": "mlflow", "experiment": "from-env"})
    assert result.tracking[0].startswith(f"tracking: recorded in MLflow at {server['uri']}")
    [run] = _runs(server["uri"], "from-env")
    assert run.info.status == "FINISHED"
    assert not (tmp_path / "mlflow.db").exists()  # not the local store


def test_settings_only_mlflow_honours_send_the_run_through_its_client(tmp_path, monkeypatch):
    from polymodal._options import Track
    from polymodal._training.tracking import open_session

    target = Track(to="mlflow", uri="http://127.0.0.1:9", experiment="x")
    session = open_session(target, tmp_path, "x", print)
    assert type(session.backend).__name__ == "MlflowRestBackend"
    session.close()
    monkeypatch.setenv("MLFLOW_TRACKING_AUTH", "my_auth_plugin")
    session = open_session(target, tmp_path, "x", print)
    assert type(session.backend).__name__ == "MlflowBackend"
    session.close()


def test_a_server_that_refuses_the_credentials_never_stops_training(server, tmp_path):
    lines: list[str] = []
    with gate(server["uri"], expect="Bearer right") as door:
        result = _train(tmp_path, door.uri, "refused", log=lines.append)
    assert (tmp_path / "m.safetensors").is_file() and len(result.history) == 2
    warnings = [line for line in lines if line.startswith("warning: tracking:")]
    assert len(warnings) == 2, lines
    assert "HTTP 401" in warnings[0] and "UNAUTHENTICATED" in warnings[0]
    assert "not recorded in MLflow" in warnings[1] and "the start of run(s) m" in warnings[1]
    assert "metrics m: epoch 1, m: epoch 2" in warnings[1]
    assert door.seen[0][2] is None  # none configured, none sent
    client = MlflowClient(tracking_uri=server["uri"])
    assert client.get_experiment_by_name("refused") is None


def _metrics_batch(path: str, body: bytes) -> bool:
    return path.endswith("runs/log-batch") and b'"metrics"' in body


@pytest.mark.parametrize("status", [500, 503, 400])
def test_a_server_answering_errors_to_metrics_keeps_the_rest(server, tmp_path, status):
    """The server takes the run but answers ``status`` to its metrics: the batch is tried three
    times, training goes on, the run's other records are sent (or, where the run ended while
    the tracker was failing, said not to be), and the metrics are said not recorded."""
    lines: list[str] = []
    with gate(server["uri"], fail=status, failing=_metrics_batch) as door:
        result = _train(tmp_path, door.uri, f"errors-{status}", log=lines.append)
    assert len(result.history) == 2
    tries = [body for body in door.bodies if b'"metrics"' in body]
    assert len(tries) in (3, 4), tries  # 4: an epoch took 10 s, so its metrics went alone
    warnings = [line for line in lines if line.startswith("warning: tracking:")]
    assert f"HTTP {status} from /api/2.0/mlflow/runs/log-batch" in warnings[0], warnings
    assert "<html>the server broke</html>" in warnings[0]
    said = warnings[-1]
    assert "metrics m: epoch 1, m: epoch 2" in said
    [run] = _runs(server["uri"], f"errors-{status}")
    assert not run.data.metrics and run.data.params["training.lr"] == "0.05"
    assert (run.info.status == "FINISHED") != ("the end of m" in said), said
    files = _artifacts(server["uri"], run.info.run_id)
    for name in ("m.safetensors", "curves.png", "spec.yaml", "validation_rows.csv"):
        assert (name in files) != (name in said), (name, said)
    assert len(read_csv(result.run_dir / "metrics.csv")) == 2  # the run folder has it all


@pytest.mark.parametrize("name, value, message", [
    ("MLFLOW_HTTP_REQUEST_TIMEOUT", "soon", "MLFLOW_HTTP_REQUEST_TIMEOUT='soon': give seconds"),
    ("MLFLOW_HTTP_REQUEST_TIMEOUT", "0", "give seconds, 1 to 3600"),
    ("MLFLOW_TRACKING_INSECURE_TLS", "maybe", "MLFLOW_TRACKING_INSECURE_TLS='maybe'"),
])
def test_a_malformed_setting_is_refused_before_training(tmp_path, capsys, monkeypatch, name,
                                                        value, message):
    monkeypatch.setenv(name, value)
    code, err = _train_command(tmp_path, capsys, "http://127.0.0.1:9")
    assert code == 1 and err.startswith("error: tracking to http://127.0.0.1:9: ") and (
        message in err), err
    assert not (tmp_path / "m.safetensors").exists() and not (tmp_path / "m.run").exists()


def _train_command(tmp_path: Path, capsys, uri: str) -> tuple[int, str]:
    """``polymodal train ... --track mlflow --track-uri URI``: its exit code and stderr."""
    table = write_grouped_table(tmp_path)
    spec = tmp_path / "tab.yaml"
    spec.write_text(yaml.safe_dump(table_spec(epochs=1)))
    code = main(["train", str(spec), "--data", str(table), "-o", str(tmp_path / "m.safetensors"),
                 "--track", "mlflow", "--track-uri", uri])
    return code, capsys.readouterr().err


@pytest.mark.parametrize("uri, message", [
    ("http://127.0.0.1:port", "its port is not a number"),
    ("http://:5000", "give the server as http://HOST[:PORT]"),
    ("https://ada:s3cret@:99999", "its port is not a number"),
])
def test_a_malformed_server_uri_is_refused(tmp_path, capsys, uri, message):
    code, err = _train_command(tmp_path, capsys, uri)
    assert code == 1 and err.startswith("error: tracking to ") and message in err, err
    assert "s3cret" not in err and not (tmp_path / "m.run").exists()


def test_a_server_cert_path_that_is_not_there_is_refused(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_SERVER_CERT_PATH", str(tmp_path / "no.pem"))
    code, err = _train_command(tmp_path, capsys, "https://127.0.0.1:9")
    assert code == 1 and "MLFLOW_TRACKING_SERVER_CERT_PATH" in err, err
    assert "Traceback" not in err and not (tmp_path / "m.run").exists()


def test_non_finite_metrics_are_recorded(server, tmp_path):
    """NaN and infinities go as the API's JSON names them (JSON itself has no such numbers)."""
    from polymodal._options import Track
    from polymodal._training.tracking import open_session

    session = open_session(Track(to="mlflow", uri=server["uri"], experiment="non-finite"),
                           tmp_path, "x", print)
    run = session.run("r", None)
    run.metrics({"a": float("nan"), "b": float("inf"), "c": -float("inf"), "d": 1.5}, 1, "e 1")
    run.finish("finished")
    assert not [line for line in session.close() if line.startswith("warning")]
    [recorded] = _runs(server["uri"], "non-finite")
    values = recorded.data.metrics
    # (MLflow's database keeps infinities as the largest finite numbers)
    assert values["a"] != values["a"] and values["b"] >= sys.float_info.max
    assert values["c"] <= -sys.float_info.max and values["d"] == 1.5

"""A small client of an MLflow tracking server's REST API, on the standard library only.

A tracked run sends a few requests to the server (:mod:`.track_rest`); made through MLflow's own
client they cost a new process the import of MLflow (over a second of CPU) and every request
its protobuf round trips. This client speaks the server's JSON directly over one kept-alive
connection and honours MLflow's settings for reaching a server: ``MLFLOW_TRACKING_USERNAME``
and ``MLFLOW_TRACKING_PASSWORD`` (else ``~/.mlflow/credentials``), ``MLFLOW_TRACKING_TOKEN``,
``MLFLOW_TRACKING_INSECURE_TLS``, ``MLFLOW_TRACKING_SERVER_CERT_PATH``,
``MLFLOW_TRACKING_CLIENT_CERT_PATH`` and ``MLFLOW_HTTP_REQUEST_TIMEOUT``. It makes one try a
call: the tracking session's courier retries.
"""

from __future__ import annotations

import base64
import configparser
import http.client
import json
import os
from pathlib import Path
from typing import IO, Any
from urllib.parse import quote, urlencode, urlsplit

#: Seconds a request may wait for the server (MLflow's ``MLFLOW_HTTP_REQUEST_TIMEOUT``, whose
#: own default of 120 s would hold a run's end for minutes behind a server that hangs).
TIMEOUT = 10.0
#: The largest answer read: the API's answers for a run are kilobytes.
MAX_ANSWER = 32 * 2**20
#: Bytes of a file sent a call (http.client's own 8 KiB costs a large file thousands).
BLOCK = 2**20
#: Settings that only MLflow's own client can honour (request signing, auth plugins).
LIBRARY_ONLY = ("MLFLOW_TRACKING_AUTH", "MLFLOW_TRACKING_AWS_SIGV4")


class SettingError(ValueError):
    """An MLflow setting in the environment that cannot be used."""


class RestError(Exception):
    """The server answered a call with an error (``status``, MLflow's ``code``)."""

    def __init__(self, status: int, code: str, message: str, endpoint: str):
        self.status, self.code = status, code
        super().__init__(f"HTTP {status} from {endpoint}: {code}: {message}"[:600])


def _flag(name: str) -> bool:
    value = os.environ.get(name, "").strip().lower()
    if value in ("", "false", "0"):
        return False
    if value in ("true", "1"):
        return True
    raise SettingError(f"{name}={os.environ[name]!r}: give true or false")


def _timeout() -> float:
    value = os.environ.get("MLFLOW_HTTP_REQUEST_TIMEOUT", "").strip()
    if not value:
        return TIMEOUT
    try:
        seconds = float(value)
    except ValueError:
        seconds = float("nan")
    if not 0 < seconds <= 3600:
        raise SettingError(f"MLFLOW_HTTP_REQUEST_TIMEOUT={value!r}: give seconds, 1 to 3600")
    return seconds


def authorization() -> str | None:
    """The ``Authorization`` header MLflow's client would send: basic where a user name and
    password are set (the environment first, then ``~/.mlflow/credentials``), else bearer."""
    user = os.environ.get("MLFLOW_TRACKING_USERNAME")
    password = os.environ.get("MLFLOW_TRACKING_PASSWORD")
    if not (user and password):
        saved = _saved_credentials()
        user, password = user or saved[0], password or saved[1]
    if user and password:
        return _basic(user, password)
    token = os.environ.get("MLFLOW_TRACKING_TOKEN")
    return f"Bearer {token}" if token else None


def _basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def _saved_credentials() -> tuple[str | None, str | None]:
    path = Path("~/.mlflow/credentials").expanduser()
    if not path.is_file():
        return None, None
    config = configparser.ConfigParser()
    try:
        config.read(path, encoding="utf-8")
    except (OSError, configparser.Error, UnicodeDecodeError) as exc:
        raise SettingError(f"{path}: {exc}") from None
    section = config["mlflow"] if "mlflow" in config else {}
    return section.get("mlflow_tracking_username"), section.get("mlflow_tracking_password")


class MlflowHttp:
    """One server (an ``http://`` or ``https://`` URI, with any path prefix): its calls, in the
    thread that makes them, on one connection kept alive between them."""

    def __init__(self, uri: str):
        parts = urlsplit(uri)
        try:
            self.port = parts.port
        except ValueError:
            raise SettingError("its port is not a number from 0 to 65535") from None
        if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
            raise SettingError("give the server as http://HOST[:PORT] or https://HOST[:PORT]")
        self.scheme, self.netloc = parts.scheme.lower(), parts.netloc.rpartition("@")[2]
        self.host = parts.hostname
        self.prefix = parts.path.rstrip("/")
        self.timeout = _timeout()
        self.insecure = _flag("MLFLOW_TRACKING_INSECURE_TLS")
        self.headers = {"User-Agent": "polymodal", "Accept": "application/json"}
        auth = authorization()
        if parts.username and parts.password and auth is None:  # user:password@host
            auth = _basic(parts.username, parts.password)
        if auth:
            self.headers["Authorization"] = auth
        self._tls = self._tls_context() if self.scheme == "https" else None
        self._connection: http.client.HTTPConnection | None = None

    def call(self, method: str, endpoint: str, body: dict[str, Any] | None = None) -> Any:
        """An API call (``endpoint`` under ``/api/2.0/mlflow/``): its JSON answer. A GET's
        ``body`` goes in the query string, as MLflow's client sends it."""
        path = f"{self.prefix}/api/2.0/mlflow/{endpoint}"
        data = None
        if method == "GET" and body:
            path += "?" + urlencode(body)
        elif body is not None:
            data = json.dumps(body, allow_nan=False).encode()
        answer = self._request(method, path, data, {"Content-Type": "application/json"})
        try:
            return json.loads(answer) if answer.strip() else {}
        except ValueError:
            raise RestError(200, "BAD_ANSWER", "not JSON", endpoint) from None

    def put(self, path: str, body: IO[bytes] | bytes, size: int, kind: str) -> None:
        """Upload ``size`` bytes to the artifact proxy at ``path`` (under its root)."""
        where = f"{self.prefix}/api/2.0/mlflow-artifacts/artifacts/{quote(path.lstrip('/'))}"
        self._request("PUT", where, body, {"Content-Type": kind, "Content-Length": str(size)})

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    def _request(self, method: str, path: str, body: IO[bytes] | bytes | None,
                 headers: dict[str, str]) -> bytes:
        reused = self._connection is not None
        try:
            try:
                return self._exchange(method, path, body, headers)
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                # A connection kept alive that the server closed meanwhile (an idle one past its
                # keep-alive time): once more on a new one, an upload's file read again.
                if not reused:
                    raise
                self.close()
                if not isinstance(body, (bytes, type(None))):
                    body.seek(0)
                return self._exchange(method, path, body, headers)
        except RestError:
            raise  # an answer read whole: the connection is still good
        except BaseException:
            self.close()  # a call cut off part-way leaves the connection unusable
            raise

    def _exchange(self, method: str, path: str, body: IO[bytes] | bytes | None,
                  headers: dict[str, str]) -> bytes:
        connection = self._connect()
        connection.request(method, path, body=body, headers={**self.headers, **headers})
        response = connection.getresponse()
        answer = response.read(MAX_ANSWER + 1)
        if len(answer) > MAX_ANSWER:
            raise RestError(response.status, "ANSWER_TOO_LARGE", f"over {MAX_ANSWER} bytes", path)
        if response.will_close:
            self.close()
        if response.status >= 300:
            raise _error(response.status, answer, path.split("?")[0])
        return answer

    def _connect(self) -> http.client.HTTPConnection:
        if self._connection is None:
            if self.scheme == "https":
                self._connection = http.client.HTTPSConnection(
                    self.host, self.port, timeout=self.timeout, context=self._tls,
                    blocksize=BLOCK)
            else:
                self._connection = http.client.HTTPConnection(
                    self.host, self.port, timeout=self.timeout, blocksize=BLOCK)
        return self._connection

    def _tls_context(self) -> Any:
        import ssl

        server = os.environ.get("MLFLOW_TRACKING_SERVER_CERT_PATH") or None
        client = os.environ.get("MLFLOW_TRACKING_CLIENT_CERT_PATH") or None
        try:
            context = ssl.create_default_context(cafile=server)
            if client:
                context.load_cert_chain(client)
        except (OSError, ssl.SSLError) as exc:
            name = "MLFLOW_TRACKING_CLIENT_CERT_PATH" if server is None else (
                "MLFLOW_TRACKING_SERVER_CERT_PATH or MLFLOW_TRACKING_CLIENT_CERT_PATH")
            raise SettingError(f"{name}: {exc}") from None
        if self.insecure:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        return context


def _error(status: int, answer: bytes, endpoint: str) -> RestError:
    """The server's error: MLflow's ``error_code`` and ``message`` where it sent them."""
    try:
        data = json.loads(answer)
    except ValueError:
        data = None
    if isinstance(data, dict) and "error_code" in data:
        return RestError(status, str(data["error_code"]), str(data.get("message", "")), endpoint)
    text = answer.decode("utf-8", "replace").strip().splitlines()
    return RestError(status, http.client.responses.get(status, "ERROR"),
                     (text[0] if text else "")[:300], endpoint)

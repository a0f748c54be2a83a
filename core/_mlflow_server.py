"""A real local ``mlflow server`` for the tracking tests and benchmark (not used by a run).

The server keeps its runs in SQLite and proxies their files (``--artifacts-destination``), as
a team's server does, on a free port of this machine; it runs in a process group of its own so
that stopping it stops its workers too.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ._ports import free_port


@dataclass(frozen=True)
class Server:
    """A running server: its URI and process (the leader of its process group)."""

    uri: str
    process: subprocess.Popen[bytes]


@contextlib.contextmanager
def mlflow_server(folder: Path, wait: float = 240,
                  artifact_schemes: tuple[str, ...] = ()) -> Iterator[Server]:
    """A server with its store and log (``server.log``) in ``folder`` while the block runs;
    ``RuntimeError`` (with the log's end) where it does not answer within ``wait`` seconds.
    ``artifact_schemes``: schemes of artifact locations naming another host (``http``) that
    it accepts (it refuses them by default)."""
    port = free_port()
    log = (folder / "server.log").open("w")
    process = subprocess.Popen(
        [str(Path(sys.executable).with_name("mlflow")), "server", "--backend-store-uri",
         f"sqlite:///{folder / 'server.db'}", "--artifacts-destination", str(folder / "artifacts"),
         "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        env={**os.environ, "MLFLOW_ALLOWED_HOST_ADDRESSED_ARTIFACT_SCHEMES": ",".join(
            artifact_schemes)})
    uri = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + wait
    try:
        while not _answers(uri):
            if process.poll() is not None or time.monotonic() > deadline:
                said = (folder / "server.log").read_text(errors="replace")[-3000:]
                raise RuntimeError(f"mlflow server did not answer in {wait:.0f} s:\n{said}")
            time.sleep(0.5)
        yield Server(uri, process)
    finally:
        with contextlib.suppress(ProcessLookupError):  # one stopped (SIGSTOP) too
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)
        log.close()


def _answers(uri: str) -> bool:
    try:
        with urllib.request.urlopen(f"{uri}/health", timeout=2) as answer:
            return bool(answer.status == 200)
    except OSError:
        return False

"""Fixtures of the server tests: a small model of the demo's spec, and real servers.

Each server is ``polymodal serve`` in a subprocess on a free local port, talked to over HTTP.
"""

from __future__ import annotations

import base64
import contextlib
import importlib.util
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

import polymodal
from polymodal._ports import free_port
from polymodal._spec_files import read_spec_file

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


class Server:
    """``polymodal serve MODEL ARGS`` running on a free port, until :meth:`stop`."""

    def __init__(self, model: Path, *args: str, log: Path):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        self.process = subprocess.Popen(
            [sys.executable, "-m", "polymodal", "serve", str(model), "--port", str(self.port),
             *args], stdout=subprocess.DEVNULL, stderr=log.open("wb"),
            env={**os.environ, "PYTHONUNBUFFERED": "1"})
        self._wait_ready()

    def _wait_ready(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"the server exited: {self.output()}")
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{self.url}/ready", timeout=2).status_code == 200:
                    return
            time.sleep(0.2)
        self.stop()
        raise AssertionError(f"the server did not start: {self.output()}")

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return int(self.process.returncode)


@pytest.fixture(scope="session")
def demo(tmp_path_factory) -> dict[str, Path]:
    """A model of the demo's spec (examples/parts/fused.yaml) trained briefly on a small
    version of its data: the model file, its ONNX export and the tables."""
    folder = tmp_path_factory.mktemp("demo")
    loader = importlib.util.spec_from_file_location("make_data", EXAMPLES / "parts" / "make_data.py")
    assert loader is not None and loader.loader is not None
    make_data = importlib.util.module_from_spec(loader)
    loader.loader.exec_module(make_data)
    train, test = make_data.generate(folder / "data", train_rows=48, test_rows=16)
    spec = read_spec_file(EXAMPLES / "parts" / "fused.yaml")
    spec["training"] = {**spec["training"], "epochs": 1, "precision": "fp32"}
    model = folder / "parts.safetensors"
    polymodal.train(spec, train, model, progress=False)
    onnx = folder / "parts.onnx"
    polymodal.export(model, onnx)
    return {"model": model, "onnx": onnx, "train": train, "test": test, "data": folder / "data"}


@pytest.fixture(scope="module")
def server(demo, tmp_path_factory) -> Iterator[Server]:
    """The model file served with small limits, batches filled for up to 150 ms, and the
    demo's data folder as its data root."""
    log = tmp_path_factory.mktemp("server") / "server.log"
    running = Server(demo["model"], "--max-wait-ms", "150", "--max-body-mb", "0.5",
                     "--max-rows", "20", "--data-root", str(demo["data"]), log=log)
    yield running
    running.stop()


def encoded(path: Path) -> dict[str, str]:
    return {"base64": base64.b64encode(Path(path).read_bytes()).decode()}

"""What experiment tracking costs a `polymodal train` run on the demo data (examples/parts).

The fused spec trains in turn without tracking and with `--track mlflow` to a real local
`mlflow server` (SQLite backend, started by this script on a free port), in alternating rounds
of one run; each tracked run's time includes waiting at its end for the last records to be
sent. Prints the medians, the median of the per-round ratios against the untracked run (the
goal: at most 1.02x), and the hardware (CPU, torch's CPU capability, threads, load).

    python benchmarks/bench_tracking.py [--rounds 5] [--rows 500] [--epochs 6]

`--smoke` trains tiny runs tracked to TensorBoard instead (no server to start): it only checks
that the script runs.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import polymodal
from _timing import alternate, parse_args, report
from bench_cv_tune import hardware

HERE = Path(__file__).resolve().parents[1] / "examples" / "parts"
GOAL = 1.02


@contextmanager
def mlflow_server(folder: Path) -> Iterator[str]:
    """A local ``mlflow server`` on a free port while the block runs: its URI."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    log = (folder / "server.log").open("w")
    process = subprocess.Popen(
        [str(Path(sys.executable).with_name("mlflow")), "server", "--backend-store-uri",
         f"sqlite:///{folder / 'server.db'}", "--artifacts-destination", str(folder / "artifacts"),
         "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    started = time.perf_counter()
    try:
        while True:
            try:
                with urllib.request.urlopen(f"{uri}/health", timeout=2):
                    break
            except OSError:
                if process.poll() is not None or time.perf_counter() - started > 300:
                    raise SystemExit(f"mlflow server did not start; see {folder / 'server.log'}")
                time.sleep(0.5)
        print(f"mlflow server at {uri} answered after {time.perf_counter() - started:.0f} s")
        yield uri
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=60)
        log.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--rows", type=int, default=500, help="Training rows of the parts data.")
    parser.add_argument("--epochs", type=int, default=6)
    args = parse_args(parser, rounds=1, rows=40, epochs=1)
    # Stopped by a time limit (SIGTERM), the server started here is stopped too.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    with tempfile.TemporaryDirectory() as scratch:
        run(args, Path(scratch))


def run(args: argparse.Namespace, out: Path) -> None:
    loader = importlib.util.spec_from_file_location("make_data", HERE / "make_data.py")
    make_data = importlib.util.module_from_spec(loader)
    assert loader.loader is not None
    loader.loader.exec_module(make_data)
    table, _ = make_data.generate(out / "data", args.rows, 8)
    print(f"hardware: {hardware()}")
    counter = iter(range(1_000_000))

    def train(track: object) -> None:
        number = next(counter)
        result = polymodal.train(HERE / "fused.yaml", table, out / f"m{number}.safetensors",
                                 options={"epochs": args.epochs}, progress=False, track=track)
        unsent = [line for line in result.tracking if line.startswith("warning")]
        assert not unsent, unsent

    if args.smoke:
        track = {"to": "tensorboard", "uri": str(out / "tb")}
        times = alternate({"train": lambda: train("none"),
                           "train --track tensorboard": lambda: train(track)}, 1, warmup=0)
        report("smoke run (figures mean nothing)", times, "train", "train --track tensorboard",
               GOAL)
        return
    with mlflow_server(out) as uri:
        track = {"to": "mlflow", "uri": uri, "experiment": "bench"}
        times = alternate({"train": lambda: train("none"),
                           "train --track mlflow (server)": lambda: train(track)},
                          args.rounds, warmup=1)
    report(f"polymodal train, demo data ({args.rows} rows, {args.epochs} epochs), with and"
           " without tracking to a local mlflow server", times, "train",
           "train --track mlflow (server)", GOAL)


if __name__ == "__main__":
    main()

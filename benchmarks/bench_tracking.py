"""What experiment tracking costs a `polymodal train` run on the demo data (examples/parts).

The fused spec trains in turn without tracking and with `--track mlflow` to a real local
`mlflow server` (SQLite backend, started by this script on a free port), in alternating rounds
of one run; each tracked run's time includes waiting at its end for the last records to be
sent. Prints the medians, the median of the per-round ratios against the untracked run (the
goal: at most 1.02x), the hardware (CPU, torch's CPU capability, threads, load), and the CPU
seconds each run took in this process and in the server (on a busy machine these say more
than the times), and what importing MLflow costs the first tracked run of a process (paid once
here, in the warm-up round; a `polymodal train --track mlflow` command pays it every time, on
its tracking thread).

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
import statistics
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
def mlflow_server(folder: Path) -> Iterator[tuple[str, int]]:
    """A local ``mlflow server`` on a free port while the block runs: its URI, and its process
    group (the server and its workers)."""
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
        yield uri, process.pid
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=60)
        log.close()


def group_cpu(group: int | None) -> float:
    """CPU seconds the processes of ``group`` have used so far (Linux; 0 elsewhere)."""
    total = 0
    for entry in Path("/proc").glob("[0-9]*/stat") if group is not None else ():
        try:
            fields = entry.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # a process that ended meanwhile
        if int(fields[2]) == group:
            total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 0.0


def import_cpu() -> float:
    """CPU seconds of ``import mlflow`` (what the tracking thread of a new process spends)."""
    code = ("import time; started = time.process_time(); from mlflow.tracking import"
            " MlflowClient; print(time.process_time() - started)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True)
    return float(done.stdout.strip().splitlines()[-1])


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
    server: list[int] = []  # the server's process group, once it runs
    cpu: dict[str, list[tuple[float, float]]] = {}  # by run: (this process, the server)

    def train(track: object) -> None:
        number = next(counter)
        started = (time.process_time(), group_cpu(server[0] if server else None))
        result = polymodal.train(HERE / "fused.yaml", table, out / f"m{number}.safetensors",
                                 options={"epochs": args.epochs}, progress=False, track=track)
        cpu.setdefault("none" if track == "none" else "tracked", []).append(
            (time.process_time() - started[0],
             group_cpu(server[0] if server else None) - started[1]))
        unsent = [line for line in result.tracking if line.startswith("warning")]
        assert not unsent, unsent

    if args.smoke:
        track = {"to": "tensorboard", "uri": str(out / "tb")}
        times = alternate({"train": lambda: train("none"),
                           "train --track tensorboard": lambda: train(track)}, 1, warmup=0)
        report("smoke run (figures mean nothing)", times, "train", "train --track tensorboard",
               GOAL)
        return
    with mlflow_server(out) as (uri, group):
        server.append(group)
        track = {"to": "mlflow", "uri": uri, "experiment": "bench"}
        times = alternate({"train": lambda: train("none"),
                           "train --track mlflow (server)": lambda: train(track)},
                          args.rounds, warmup=1)
    report(f"polymodal train, demo data ({args.rows} rows, {args.epochs} epochs), with and"
           " without tracking to a local mlflow server", times, "train",
           "train --track mlflow (server)", GOAL)
    for name, runs in cpu.items():  # the warm-up round (mlflow's import) is left out
        mine, its = (statistics.median(r[i] for r in runs[1:]) for i in (0, 1))
        print(f"CPU seconds a run, {name}: this process {mine:.2f} s, the server {its:.2f} s"
              " (medians)")
    print(f"importing mlflow (once a process: its first tracked run): {import_cpu():.2f} s CPU")


if __name__ == "__main__":
    main()

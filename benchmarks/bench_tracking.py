"""What experiment tracking costs a `polymodal train` run on the demo data (examples/parts).

The fused spec trains in turn without tracking and with `--track mlflow` to a real local
`mlflow server` (SQLite backend, artifacts proxied; started by this script on a free port), in
alternating rounds of one run in this process; each tracked run's time includes waiting at its
end for the last records to be sent. Then whole `polymodal train` commands (a new process each,
its start and imports included) with and without `--track mlflow` to the same server. Prints
for each the medians and the median of the per-round ratios against the untracked run (the
goal: at most 1.02x), the hardware (CPU, torch's CPU capability, threads, load), the CPU
seconds each in-process run took in this process and in the server (on a busy machine these
say more than the times), and what importing MLflow would cost a new process (a run to a
server talks to its REST API and imports no MLflow).

    python benchmarks/bench_tracking.py [--rounds 5] [--rows 500] [--epochs 6] [--cli-rounds 3]

`--smoke` trains tiny runs tracked to TensorBoard instead (no server to start): it only checks
that the script runs.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import polymodal
from polymodal._mlflow_server import mlflow_server
from _timing import alternate, parse_args, report
from bench_cv_tune import hardware

HERE = Path(__file__).resolve().parents[1] / "examples" / "parts"
GOAL = 1.02


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
    parser.add_argument("--cli-rounds", type=int, default=3,
                        help="Rounds of `polymodal train` commands, each a new process.")
    args = parse_args(parser, rounds=1, rows=40, epochs=1, cli_rounds=1)
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
    with mlflow_server(out) as started:
        server.append(started.process.pid)
        print(f"mlflow server at {started.uri}")
        track = {"to": "mlflow", "uri": started.uri, "experiment": "bench"}
        times = alternate({"train": lambda: train("none"),
                           "train --track mlflow (server)": lambda: train(track)},
                          args.rounds, warmup=1)
        commands = cli_times(args, table, out, started.uri)
    report(f"polymodal train, demo data ({args.rows} rows, {args.epochs} epochs), with and"
           " without tracking to a local mlflow server", times, "train",
           "train --track mlflow (server)", GOAL)
    for name, runs in cpu.items():  # the warm-up round (mlflow's import) is left out
        mine, its = (statistics.median(r[i] for r in runs[1:]) for i in (0, 1))
        print(f"CPU seconds a run, {name}: this process {mine:.2f} s, the server {its:.2f} s"
              " (medians)")
    report(f"polymodal train commands ({args.cli_rounds} rounds, each a new process), with and"
           " without --track mlflow to the server", commands, "polymodal train",
           "polymodal train --track mlflow", GOAL)
    for name, values in {**times, **commands}.items():  # outliers of a busy machine show here
        print(f"each run, in order, {name}: {' '.join(f'{v:.2f}' for v in values)} s")
    print(f"importing mlflow (which a run to a server no longer does): {import_cpu():.2f} s CPU")


def cli_times(args: argparse.Namespace, table: Path, out: Path,
              uri: str) -> dict[str, list[float]]:
    """Seconds of whole `polymodal train` commands, with and without tracking to ``uri``: what
    a user waits for, the process's start and imports included."""
    command = [str(Path(sys.executable).with_name("polymodal")), "train", str(HERE / "fused.yaml"),
               "--data", str(table), "--epochs", str(args.epochs), "--quiet"]
    counter = iter(range(1_000_000))

    def train(*extra: str) -> None:
        model = out / f"cli{next(counter)}.safetensors"
        done = subprocess.run([*command, "-o", str(model), *extra], capture_output=True,
                              text=True, timeout=1800)
        assert done.returncode == 0 and "warning" not in done.stderr, done.stderr[-2000:]

    tracked = ("--track", "mlflow", "--track-uri", uri, "--experiment", "bench-cli")
    return alternate({"polymodal train": lambda: train(),
                      "polymodal train --track mlflow": lambda: train(*tracked)},
                     args.cli_rounds, warmup=0)


if __name__ == "__main__":
    main()

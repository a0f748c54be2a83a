"""polymodal serve under load: a real server process driven by an async HTTP client at 1, 8 and 32
concurrent clients (one row a request, the photo sent as base64 bytes), beside direct batched
polymodal.predict of the same rows in the same run, on the demo model (`make demo`, or trained
here when missing). The client is a minimal HTTP/1.1 keep-alive client (_http_client.py), since
it shares the cores with the server: its CPU a request is printed beside the server's.

Prints rows/s, p50 and p99 latency, the server's CPU a request (its HTTP process and its model
process together, and the model process's share), the client's CPU a request and the rows a
batch per concurrency, the server's memory before and after all requests (10,000 by default,
warm-up excluded; the proportional set size of the server and its model process, pages they
share counted once), every error response, and apart from the goals' load, several rows a
request.
Goals (2 CPU cores): at 32 clients at least 0.7x the rows/s of direct batched predict (the
median of --rounds rounds, each beside a direct predict of its own); p99 at most 3x p50; memory within 5% after 10,000 requests; no error response.

    python benchmarks/bench_serve.py [--demo runs/parts-demo] [--model FILE] [--requests 10000]
        [--per-level 3000] [--rounds 3] [--max-batch 64] [--max-wait-ms 5] [--threads 1]
        [--rows-per-request 16] [--workers 1]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import csv
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from _demo import demo_model
from _http_client import Connection
from _timing import parse_args

import polymodal
from polymodal._ports import free_port

LEVELS = (1, 8, 32)
THROUGHPUT_GOAL = 0.7
TAIL_GOAL = 3.0
MEMORY_GOAL = 0.05


def rows_of(table: Path) -> tuple[list[dict], dict[str, list]]:
    """The held-out rows as requests send them (photo bytes) and as predict reads them."""
    with table.open(newline="") as handle:
        records = list(csv.DictReader(handle))
    sent, frame = [], {k: [] for k in ("photo", "material", "site", "reading", "weight_kg")}
    for r in records:
        photo = table.parent / r["photo"]
        sent.append({"photo": {"base64": base64.b64encode(photo.read_bytes()).decode()},
                     "material": r["material"], "site": r["site"],
                     "reading": float(r["reading"]), "weight_kg": float(r["weight_kg"])})
        for k in frame:
            frame[k].append(str(photo) if k == "photo" else r[k])
    return sent, frame


def direct_rate(model: Path, frame: dict[str, list], rows: int, batch: int) -> tuple[float, float]:
    """Rows/s of polymodal.predict over ``rows`` rows (the table repeated), batches of
    ``batch``, and its CPU ms a row."""
    repeats = -(-rows // len(frame["photo"]))
    table = {k: (v * repeats)[:rows] for k, v in frame.items()}
    from polymodal._training.inference import loaded_model

    loaded, _ = loaded_model(model, exports=True)  # once, as the server does
    polymodal.predict(loaded, {k: v[:batch] for k, v in table.items()}, batch_size=batch)  # warm
    started, cpu = time.perf_counter(), time.process_time()
    polymodal.predict(loaded, table, batch_size=batch)
    return rows / (time.perf_counter() - started), (time.process_time() - cpu) / rows * 1e3


def forward_ms(model: Path, frame: dict[str, list], sizes: list[int],
               repeats: int) -> dict[int, tuple[float, float | None]]:
    """Milliseconds of the model's forward pass alone on ``size`` rows (encoded once, before
    timing): the part of a batch's cost the model itself takes; as predict and serve run it
    (convolution weights laid out once, images channels-last as trained) and, beside it in the
    same run, as plain PyTorch runs it (a contiguous batch, weights laid out on every call)."""
    from polymodal._data.binding import Binding
    from polymodal._data.table import Table
    from polymodal._training.inference import (
        channels_last_for,
        loaded_model,
        model_state,
        to_device,
    )
    from polymodal._training.packing import packed_convolutions

    loaded, source = loaded_model(model, exports=True)
    binding, state = Binding(loaded.spec), model_state(loaded, source)
    channels_last = channels_last_for(loaded, torch.device("cpu"))

    def timed(inputs: dict, present: dict) -> float:
        loaded(inputs, present or None)  # warm
        started = time.perf_counter()
        for _ in range(repeats):
            loaded(inputs, present or None)
        return (time.perf_counter() - started) / repeats * 1e3

    times = {}
    for size in sizes:
        rows = {k: (v * -(-size // len(v)))[:size] for k, v in frame.items()}
        encoded = binding.encode(Table.from_columns(rows), state, targets=False)
        with torch.inference_mode():
            # an ONNX export runs one way: no plain PyTorch pass to compare with
            plain = timed(encoded.inputs, encoded.present) \
                if isinstance(loaded, torch.nn.Module) else None
            with packed_convolutions(loaded):
                packed = timed(to_device(encoded.inputs, torch.device("cpu"), channels_last),
                               encoded.present)
        times[size] = (packed, plain)
    return times


def batch_rates(model: Path, rows: list[dict], sizes: list[int], repeats: int) -> dict[int, float]:
    """Rows/s of the server's own batch path without HTTP: ``size`` one-row requests built
    (files written) and predicted together, as the batcher hands them to the model."""
    from polymodal._serve.limits import Limits
    from polymodal._serve.predictor import Predictor
    from polymodal._serve.rows import RowBuilder

    predictor = Predictor(model)
    builder = RowBuilder(predictor.columns, Limits(), None)
    rates = {}
    for size in sizes:
        def run(size: int = size) -> None:
            requests = [builder.build({"rows": [rows[i % len(rows)]]}) for i in range(size)]
            predictor.run(requests)
            for request in requests:
                request.close()

        run()  # warm
        started = time.perf_counter()
        for _ in range(repeats):
            run()
        rates[size] = size * repeats / (time.perf_counter() - started)
    builder.close()
    return rates


def family(pid: int) -> list[int]:
    """``pid`` and its descendants (the server's model process, its workers)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        found.append(todo.pop())
        todo += children.get(found[-1], [])
    return found


def rss_mb(pid: int) -> float:
    """The resident memory of ``pid`` and its descendants: their proportional set size (each
    page shared among them, as the model's weights after the fork, counted once)."""
    total = 0.0
    for member in family(pid):
        for line in Path(f"/proc/{member}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                total += int(line.split()[1]) / 1024
    return total


def start_server(model: Path, port: int, args, log: Path) -> subprocess.Popen:
    import httpx

    process = subprocess.Popen(
        [sys.executable, "-m", "polymodal", "serve", str(model), "--port", str(port),
         "--max-batch", str(args.max_batch), "--max-wait-ms", str(args.max_wait_ms),
         "--max-queue", "4096", "--threads", str(args.threads), "--workers", str(args.workers)],
        stdout=subprocess.DEVNULL, stderr=log.open("wb"))
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"the server exited: {log.read_text()}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/ready", timeout=2).status_code == 200:
                return process
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    process.kill()
    raise SystemExit(f"the server did not start: {log.read_text()}")


async def drive(port: int, rows: list[dict], clients: int, requests: int,
                per_request: int = 1) -> tuple[float, list[float], list[str]]:
    """``requests`` requests of ``per_request`` rows from ``clients`` concurrent clients, each on
    its own keep-alive connection: rows/s, each request's latency, and the error responses."""
    latencies: list[float] = []
    errors: list[str] = []
    sent = iter(range(requests))

    async def one_client() -> None:
        connection = Connection("127.0.0.1", port)
        try:
            for n in sent:
                body = {"rows": [rows[(n * per_request + k) % len(rows)] for k in range(per_request)]}
                started = time.perf_counter()
                status, answer = await connection.post_json("/v1/predict", body)
                latencies.append(time.perf_counter() - started)
                if status != 200:
                    errors.append(f"{status} {answer[:200].decode(errors='replace')}")
        finally:
            await connection.close()

    started = time.perf_counter()
    await asyncio.gather(*(one_client() for _ in range(clients)))
    elapsed = time.perf_counter() - started
    return requests * per_request / elapsed, latencies, errors


def cpu_seconds(pid: int, alone: bool = False) -> float:
    """CPU seconds (user and system) process ``pid`` and its descendants have used."""
    total = 0
    for member in [pid] if alone else family(pid):
        fields = Path(f"/proc/{member}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def level(port: int, server_pid: int, rows: list[dict], clients: int, requests: int,
          per_request: int = 1) -> tuple[tuple[float, ...], list[str]]:
    """One timed level: rows/s, p50, p99, the server's CPU ms a request (all its processes),
    the model process's share of it, the client's CPU ms a request, and rows a batch."""
    server_before, client_before = cpu_seconds(server_pid), time.process_time()
    model_before, batches_before = model_cpu_seconds(server_pid), batches(port)
    rate, latencies, errors = asyncio.run(drive(port, rows, clients, requests, per_request))
    server_ms = (cpu_seconds(server_pid) - server_before) / requests * 1e3
    model_ms = (model_cpu_seconds(server_pid) - model_before) / requests * 1e3
    client_ms = (time.process_time() - client_before) / requests * 1e3
    made = batches(port) - batches_before
    return (rate, percentile(latencies, 0.5), percentile(latencies, 0.99), server_ms, model_ms,
            client_ms, requests * per_request / max(made, 1)), errors


def model_cpu_seconds(pid: int) -> float:
    """CPU seconds of the server's descendants (its model process)."""
    return cpu_seconds(pid) - cpu_seconds(pid, alone=True)


def batches(port: int) -> int:
    import httpx

    return int(httpx.get(f"http://127.0.0.1:{port}/health").json()["batching"]["batches"])


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--demo", default="runs/parts-demo", help="Folder of `make demo`'s model.")
    parser.add_argument("--model", default=None,
                        help="Serve this file of the demo's model instead (its ONNX export,"
                        " `polymodal export`), predicted directly alike.")
    parser.add_argument("--requests", type=int, default=10_000,
                        help="Requests served between the two memory readings.")
    parser.add_argument("--per-level", type=int, default=3000,
                        help="Requests timed per level (and rows per direct predict).")
    parser.add_argument("--rounds", type=int, default=3,
                        help="Rounds of the highest level, each timed beside a direct predict"
                        " of its own: the goal's figure is their median ratio.")
    parser.add_argument("--max-batch", type=int, default=64)
    parser.add_argument("--max-wait-ms", type=float, default=5.0)
    parser.add_argument("--levels", default=",".join(map(str, LEVELS)))
    parser.add_argument("--rows-per-request", type=int, default=16,
                        help="Rows a request in the extra row printed apart from the goals (1:"
                        " none).")
    parser.add_argument("--workers", type=int, default=1,
                        help="Server processes (each with its model process), not the goal's 1.")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads of the server and of direct predict alike (1: on a"
                        " shared 2-core machine more threads wait on each other)")
    args = parse_args(parser, requests=120, per_level=30, levels="1,8", demo=None,
                      rows_per_request=4, rounds=1)
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="bench-serve-") as scratch:
        run(args, Path(scratch))


def run(args, scratch: Path) -> None:
    levels = [int(v) for v in args.levels.split(",")]
    model, _, test = demo_model(Path(args.demo) if args.demo else scratch, smoke=args.smoke)
    model = Path(args.model) if args.model else model
    rows, frame = rows_of(test)
    print(f"torch {torch.__version__} (CPU capability {torch.backends.cpu.get_cpu_capability()}),"
          f" {os.cpu_count()} CPU(s), {torch.get_num_threads()} torch thread(s), load average"
          f" {' '.join(f'{v:.2f}' for v in os.getloadavg())} at start")
    print(f"model {model} ({model.stat().st_size / 1e6:.1f} MB), {len(rows)} held-out rows,"
          f" one row a request; server --max-batch {args.max_batch} --max-wait-ms {args.max_wait_ms}")
    direct, direct_ms = direct_rate(model, frame, max(args.per_level, 640), args.max_batch)
    print(f"direct polymodal.predict, batches of {args.max_batch}: {direct:,.0f} rows/s,"
          f" {direct_ms:.2f} ms of CPU a row")
    forward = forward_ms(model, frame, [1, 16, 32, 64], 3 if args.smoke else 30)
    print("the model's forward pass alone (rows encoded before), as predict and serve run it"
          " (as plain PyTorch runs it): " + ", ".join(
              f"{ms:.1f} ms{f' ({plain:.1f} ms)' if plain is not None else ''} at {size} rows"
              for size, (ms, plain) in forward.items()))
    alone = batch_rates(model, rows, [1, 8, 16, 32], 3 if args.smoke else 20)
    print("the server's batch path without HTTP (requests built, checked, encoded, predicted): "
          + ", ".join(f"{rate:,.0f} rows/s at {size} a batch" for size, rate in alone.items())
          + "\n")
    port = free_port()
    server = start_server(model, port, args, scratch / "server.log")
    try:
        asyncio.run(drive(port, rows, max(levels), min(200, args.requests)))  # warm-up
        before = rss_mb(server.pid)
        served, results, all_errors = 0, {}, []
        for clients in levels[:-1]:
            results[clients], errors = level(port, server.pid, rows, clients, args.per_level)
            served += args.per_level
            all_errors += errors
        rounds = []  # the goal's level, each round beside a direct predict of its own: the
        for _ in range(args.rounds):  # machine's speed drifts over a run by 10% and more
            baseline = direct_rate(model, frame, max(args.per_level, 640), args.max_batch)[0]
            measured, errors = level(port, server.pid, rows, levels[-1], args.per_level)
            rounds.append((measured, baseline))
            served += args.per_level
            all_errors += errors
        rounds.sort(key=lambda found: found[0][0] / found[1])
        results[levels[-1]], direct = rounds[len(rounds) // 2]  # the median ratio's round
        if served < args.requests:  # the rest, at the highest concurrency, for the memory reading
            _, _, errors = asyncio.run(drive(port, rows, max(levels), args.requests - served))
            all_errors += errors
            served = args.requests
        after = rss_mb(server.pid)
        several = None
        if args.rows_per_request > 1:  # a separate row: not the goal's one row a request
            several, errors = level(port, server.pid, rows, max(levels),
                                    max(1, args.per_level // args.rows_per_request),
                                    args.rows_per_request)
            all_errors += errors
        import httpx

        batching = httpx.get(f"http://127.0.0.1:{port}/health").json()["batching"]
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(60)
    print(f"{levels[-1]} clients in {len(rounds)} round(s), each beside a direct predict: "
          + ", ".join(f"{m[0]:,.0f} rows/s against {d:,.0f} ({m[0] / d:.2f}x)" for m, d in rounds)
          + "; the table gives the median round\n")
    report(results, direct, before, after, served, all_errors, batching)
    if several is not None:
        rate, p50, p99, server_ms, _, client_ms, _ = several
        print(f"\nNOT the goal's load, {args.rows_per_request} rows a request at {max(levels)}"
              f" clients: {rate:,.0f} rows/s ({rate / direct:.2f}x direct), p50 {p50 * 1e3:.1f} ms,"
              f" p99 {p99 * 1e3:.1f} ms a request, server CPU"
              f" {server_ms / args.rows_per_request:.2f} ms a row")
    print(f"load average {' '.join(f'{v:.2f}' for v in os.getloadavg())} at the end")


def report(results, direct, before, after, served, errors, batching) -> None:
    print(f"{'clients':>8} {'rows/s':>9} {'vs direct':>10} {'p50 ms':>8} {'p99 ms':>8}"
          f" {'p99/p50':>8} {'server CPU ms/req':>18} {'(model process)':>16}"
          f" {'client CPU ms/req':>18} {'rows/batch':>11}")
    for clients, (rate, p50, p99, server_ms, model_ms, client_ms, per_batch) in results.items():
        print(f"{clients:>8} {rate:9.0f} {rate / direct:9.2f}x {p50 * 1e3:8.1f} {p99 * 1e3:8.1f}"
              f" {p99 / p50:8.2f} {server_ms:18.2f} {model_ms:16.2f} {client_ms:18.2f}"
              f" {per_batch:11.1f}")
    growth = (after - before) / before
    print(f"\nserver memory: {before:.0f} MB before, {after:.0f} MB after {served:,} requests"
          f" ({growth:+.1%}); {len(errors)} error response(s)"
          + (f", first: {errors[0]}" if errors else ""))
    print(f"batches: {batching['batches']:,}, {batching['rows']:,} rows, at most"
          f" {batching['largest_batch_requests']} requests in one")
    top = max(results)
    rate, p50, p99 = results[top][:3]
    checks = [(f"{top} clients: {rate / direct:.2f}x direct rows/s", rate / direct >= THROUGHPUT_GOAL,
               f"at least {THROUGHPUT_GOAL}x"),
              (f"{top} clients: p99 {p99 / p50:.2f}x p50", p99 / p50 <= TAIL_GOAL,
               f"at most {TAIL_GOAL}x"),
              (f"memory {growth:+.1%}", abs(growth) <= MEMORY_GOAL, f"within {MEMORY_GOAL:.0%}"),
              (f"{len(errors)} error response(s)", not errors, "none")]
    for text, met, goal in checks:
        print(f"{text}: {'meets' if met else 'MISSES'} the goal of {goal}")


if __name__ == "__main__":
    main()

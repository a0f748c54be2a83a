"""Shared helpers of the benchmark scripts: alternating timed runs and a side-by-side table."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable


def alternate(candidates: dict[str, Callable[[], object]], repeats: int,
              warmup: int = 2) -> dict[str, list[float]]:
    """Seconds of each run of each candidate, run in turn (A, B, A, B, ...) so that drift of
    the machine's load hits every candidate alike."""
    for _ in range(warmup):
        for run in candidates.values():
            run()
    times: dict[str, list[float]] = {name: [] for name in candidates}
    for i in range(repeats):
        order = list(candidates.items())
        if i % 2:
            order.reverse()  # neither candidate always runs first
        for name, run in order:
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
    return times


def report(title: str, times: dict[str, list[float]], baseline: str, candidate: str,
           target: float) -> float:
    """Print medians side by side, each with the median of its per-round ratios against
    ``baseline``, and whether ``candidate`` meets ``target``."""
    base = times[baseline]
    print(f"\n{title}")
    print(f"{'':32} {'median':>10} {'min':>10} {'ratio':>8}")
    ratios = {}
    for name, values in times.items():
        per_round = statistics.median(v / b for v, b in zip(values, base))
        ratios[name] = per_round
        print(f"{name:32} {statistics.median(values) * 1e3:9.1f}ms {min(values) * 1e3:9.1f}ms"
              f" {per_round:7.3f}x")
    ratio = ratios[candidate]
    verdict = "meets" if ratio <= target else "MISSES"
    print(f"{candidate} / {baseline}: median ratio {ratio:.3f}x {verdict} the target of"
          f" {target:.2f}x ({len(base)} alternating rounds)")
    return ratio


def parse_args(parser, **tiny: object):
    """The command line, with ``--smoke``: the ``tiny`` values replace the options' (sizes that
    run in seconds), so that the test suite can run every benchmark and none can rot unseen.
    A smoke run's figures mean nothing."""
    parser.add_argument("--smoke", action="store_true",
                        help="Tiny sizes that run in seconds: checks that the script still runs"
                        " (the test suite runs every benchmark so); its figures mean nothing.")
    args = parser.parse_args()
    if args.smoke:
        for name, value in tiny.items():
            setattr(args, name, value)
    return args

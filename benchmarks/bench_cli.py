"""Wall time of `polymodal list` and `import polymodal`, next to `import torch` as a reference.

    python benchmarks/bench_cli.py [--repeats 7]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

from _timing import parse_args

SCRIPT = Path(sys.executable).with_name("polymodal")


def wall(command: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    args = parse_args(parser, repeats=1)
    commands = {
        "python -c pass (interpreter)": [sys.executable, "-c", "pass"],
        "python -c 'import polymodal'": [sys.executable, "-c", "import polymodal"],
        "polymodal list": [str(SCRIPT), "list"],
        "python -c 'import torch'": [sys.executable, "-c", "import torch"],
    }
    times: dict[str, list[float]] = {name: [] for name in commands}
    for name, command in commands.items():
        wall(command)  # warm the file cache
    for _ in range(args.repeats):
        for name, command in commands.items():  # interleaved: load drift hits all alike
            times[name].append(wall(command))
    print(f"{'command':32} {'median':>9} {'min':>9}   ({args.repeats} runs each, interleaved)")
    for name, values in times.items():
        print(f"{name:32} {statistics.median(values):8.3f}s {min(values):8.3f}s")
    listing = statistics.median(times["polymodal list"])
    torch_import = statistics.median(times["python -c 'import torch'"])
    verdict = "meets" if listing <= 1.0 else "MISSES"
    print(f"polymodal list: {listing:.3f}s median {verdict} the target of 1 s;"
          f" {torch_import / listing:.0f}x"
          " faster than importing torch")


if __name__ == "__main__":
    main()

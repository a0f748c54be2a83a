"""Discovery cost of a third-party plugin: `polymodal list` wall time with and without the
example plugin (polymodal-signal) installed, side by side in one run.

The plugin is "installed" as an installer would leave it: a ``*.dist-info`` with its entry
point beside a copy of its package, on PYTHONPATH. The baseline gets an empty directory on
PYTHONPATH so both runs search the same number of path entries. A third column shows the same
plugin without its static manifest, which forces its import (and torch's) at discovery.
Runs are interleaved so that machine load affects all three alike. Target: with/without <= 1.2.

    python benchmarks/bench_discovery.py [--runs N]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _timing import parse_args

REPO = Path(__file__).resolve().parents[1]
PLUGIN = REPO / "examples" / "plugins" / "polymodal-signal"


def install_into(site: Path, manifest: bool) -> None:
    info = site / "polymodal_signal-0.1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: polymodal-signal\nVersion: 0.1.0\n")
    (info / "entry_points.txt").write_text("[polymodal]\nsignal = polymodal_signal.plugin\n")
    shutil.copytree(PLUGIN / "polymodal_signal", site / "polymodal_signal",
                    ignore=shutil.ignore_patterns("__pycache__"))
    if not manifest:
        (site / "polymodal_signal" / "polymodal.toml").unlink()


def timed_list(site: Path) -> float:
    env = {**os.environ, "PYTHONPATH": str(site)}
    env.pop("POLYMODAL_PLUGINS", None)
    env.pop("POLYMODAL_DISABLE_PLUGINS", None)
    start = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "polymodal", "list"], env=env,
                            capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(f"polymodal list failed: {result.stderr}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15)
    args = parse_args(parser, runs=1)
    with tempfile.TemporaryDirectory() as tmp:
        sites = {"without plugin": Path(tmp, "empty"), "with plugin": Path(tmp, "manifest"),
                 "with plugin, no manifest": Path(tmp, "imported")}
        sites["without plugin"].mkdir()
        install_into(sites["with plugin"], manifest=True)
        install_into(sites["with plugin, no manifest"], manifest=False)
        for site in sites.values():  # warm the file cache and byte-code caches
            timed_list(site)
        times: dict[str, list[float]] = {name: [] for name in sites}
        for _ in range(args.runs):
            for name, site in sites.items():
                times[name].append(timed_list(site))
    base = statistics.median(times["without plugin"])
    print(f"`polymodal list`, median of {args.runs} runs each (interleaved), python {sys.version.split()[0]}")
    print(f"{'configuration':<28}{'median s':>10}{'min s':>9}{'ratio':>8}")
    for name, values in times.items():
        median = statistics.median(values)
        print(f"{name:<28}{median:>10.3f}{min(values):>9.3f}{median / base:>8.2f}")
    ratio = statistics.median(times["with plugin"]) / base
    verdict = "meets" if ratio <= 1.2 else "MISSES"
    print(f"with/without = {ratio:.2f}: {verdict} the 1.2x target")


if __name__ == "__main__":
    main()

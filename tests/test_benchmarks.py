"""The benchmarks do not rot: each script of benchmarks/ runs in its smoke mode (tiny sizes)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def test_every_benchmark_runs_in_smoke_mode(tmp_path):
    # About a minute on two cores; smoke.py prints each failing script's output.
    done = subprocess.run([sys.executable, str(BENCHMARKS / "smoke.py")], capture_output=True,
                          text=True, timeout=900, cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    scripts = sorted(p.stem for p in BENCHMARKS.glob("bench_*.py"))
    ran = [line.split()[1] for line in done.stdout.splitlines() if line.startswith("ok ")]
    assert [name for name in ran if name != "fault_inject"] == scripts, done.stdout
    assert list(tmp_path.iterdir()) == []  # results went to smoke.py's own folder

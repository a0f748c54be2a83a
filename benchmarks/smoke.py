"""Run every benchmark of this folder in its smoke mode (tiny sizes, seconds), so that a benchmark
that no longer runs is found by the test suite instead of by its next reader.

The ``bench_*.py`` scripts run one after another in this one interpreter (torch and polymodal
are imported once, not once a script); ``fault_inject.py``, which forks its operations, runs in a
process of its own. A smoke run's figures mean nothing: only whether each script ends well.

    python benchmarks/smoke.py [NAME ...]    # default: every benchmark
"""

from __future__ import annotations

import contextlib
import io
import os
import runpy
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
#: Scripts run in a process of their own (they fork, or change process-wide state for good).
SEPARATE = {"fault_inject"}


def benchmarks() -> list[str]:
    return sorted([p.stem for p in HERE.glob("bench_*.py")] + ["fault_inject"])


def run_here(name: str) -> tuple[bool, str]:
    """Run ``name`` in this interpreter as ``python NAME.py --smoke``; (ok, its output)."""
    out = io.StringIO()
    argv = sys.argv
    sys.argv = [str(HERE / f"{name}.py"), "--smoke"]
    ok = True
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
            runpy.run_path(str(HERE / f"{name}.py"), run_name="__main__")
    except SystemExit as exc:
        ok = exc.code in (0, None)
    except BaseException:  # noqa: BLE001 - the failure is the finding; go on with the others
        traceback.print_exc(file=out)
        ok = False
    finally:
        sys.argv = argv
    return ok, out.getvalue()


def run_apart(name: str) -> tuple[bool, str]:
    done = subprocess.run([sys.executable, str(HERE / f"{name}.py"), "--smoke"],
                          capture_output=True, text=True, timeout=600)
    return done.returncode == 0, done.stdout + done.stderr


def main() -> int:
    names = sys.argv[1:] or benchmarks()
    unknown = [n for n in names if n not in benchmarks()]
    if unknown:
        print(f"no benchmark {', '.join(unknown)}; there are {', '.join(benchmarks())}")
        return 2
    sys.path.insert(0, str(HERE))  # the scripts import their helpers (_timing, common) so
    import torch

    threads = torch.get_num_threads()
    failed = []
    # Scripts write their results under the working folder (runs/...): a smoke run's must not
    # replace a real run's, nor be left behind.
    here = os.getcwd()
    with tempfile.TemporaryDirectory(prefix="polymodal-bench-smoke-") as work:
        os.chdir(work)
        try:
            for name in names:
                failed += run_one(name, threads)
        finally:
            os.chdir(here)
    print(f"{len(names) - len(failed)} of {len(names)} benchmarks ran in smoke mode"
          + (f"; failed: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


def run_one(name: str, threads: int) -> list[str]:
    """Run benchmark ``name`` and print how it went; ``[name]`` if it failed."""
    import torch

    started = time.perf_counter()
    ok, output = run_apart(name) if name in SEPARATE else run_here(name)
    torch.set_num_threads(threads)  # a script may have set its own
    print(f"{'ok  ' if ok else 'FAIL'} {name} ({time.perf_counter() - started:.1f} s)", flush=True)
    if ok:
        return []
    print("    " + output.strip().replace("\n", "\n    "))
    return [name]


if __name__ == "__main__":
    sys.exit(main())

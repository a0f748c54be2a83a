"""Cross-validation and search on the demo data (examples/parts): the figures of docs/tuning.md.

1. `polymodal cv` of the fused spec against the photo-only and record-only specs on the same
   folds (paired differences), and the time it took.
2. `polymodal tune` of examples/parts/tune.yaml: the best validation metric found against the
   spec as written (trial 0 of the study), and the time it took.

Prints the hardware it ran on (CPU, torch's CPU capability, native bf16, threads, load).

    python benchmarks/bench_cv_tune.py [--folds 5] [--trials 20] [--out runs/cv-tune-bench]
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

import torch

import polymodal
from _timing import parse_args
from polymodal._training.hardware import cpu_bf16_instructions

HERE = Path(__file__).resolve().parents[1] / "examples" / "parts"


def hardware() -> str:
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "?"
    return (f"{model}; {os.cpu_count()} cores; torch {torch.__version__}, CPU capability"
            f" {torch.backends.cpu.get_cpu_capability()}, native bf16:"
            f" {cpu_bf16_instructions() or 'none'}; {torch.get_num_threads()} threads;"
            f" load average {load}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--out", default="runs/cv-tune-bench")
    parser.add_argument("--skip-cv", action="store_true")
    parser.add_argument("--skip-tune", action="store_true")
    parser.add_argument("--rows", type=int, default=500, help="Training rows of the parts data.")
    parser.add_argument("--epochs", type=int, help="Override every spec's training.epochs.")
    with tempfile.TemporaryDirectory() as scratch:
        args = parse_args(parser, folds=2, trials=1, out=scratch, rows=40, epochs=1)
        run(args)


def run(args: argparse.Namespace) -> None:
    out = Path(args.out)
    options = {"epochs": args.epochs} if args.epochs else None
    loader = importlib.util.spec_from_file_location("make_data", HERE / "make_data.py")
    make_data = importlib.util.module_from_spec(loader)
    loader.loader.exec_module(make_data)
    train_table, _ = make_data.generate(out / "data", args.rows, 8 if args.smoke else 300)
    print(f"hardware: {hardware()}")
    if not args.skip_cv:
        shutil.rmtree(out / "cv", ignore_errors=True)
        started = time.perf_counter()
        result = polymodal.cv(HERE / "fused.yaml", train_table, folds=args.folds,
                              compare=[HERE / "photo_only.yaml", HERE / "record_only.yaml"],
                              output=out / "cv", options=options)
        print(f"\npolymodal cv --folds {args.folds} --compare (3 specs):"
              f" {time.perf_counter() - started:.0f} s\n{result.table()}")
    if not args.skip_tune:
        shutil.rmtree(out / "tune", ignore_errors=True)
        started = time.perf_counter()
        found = polymodal.tune(HERE / "tune.yaml", train_table, trials=args.trials,
                               output=out / "tune", sampler_seed=0, options=options)
        print(f"\npolymodal tune --trials {args.trials}: {time.perf_counter() - started:.0f} s"
              f"\n{found.text()}")


if __name__ == "__main__":
    main()

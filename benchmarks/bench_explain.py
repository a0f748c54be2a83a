"""What `polymodal explain` costs against `polymodal evaluate` on the same rows, and what it
finds on the demo data (examples/parts): the figures of docs/explain.md.

Trains the fused parts spec (photo + inspection record), then on the held-out table times
`evaluate` (one inference pass) and `explain` (1 + inputs absent + (inputs + parts) x repeats
passes, plus one per input for the per-row changes), and prints the explanation. Prints torch's
CPU capability with the figures; the explanation repeats exactly on one machine (seeded).

    python benchmarks/bench_explain.py [--repeats 5] [--out runs/explain-bench] [--smoke]
"""

from __future__ import annotations

import argparse
import importlib.util
import shutil
import time
from pathlib import Path

import torch

import polymodal
from polymodal._spec_files import read_spec_file

PARTS = Path(__file__).resolve().parents[1] / "examples" / "parts"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", default="runs/explain-bench")
    parser.add_argument("--smoke", action="store_true", help="tiny data: checks the script runs")
    args = parser.parse_args()
    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    loader = importlib.util.spec_from_file_location("make_data", PARTS / "make_data.py")
    make_data = importlib.util.module_from_spec(loader)
    loader.loader.exec_module(make_data)
    rows = (80, 40) if args.smoke else (500, 300)
    train_table, test_table = make_data.generate(out / "data", *rows)
    spec = read_spec_file(PARTS / "fused.yaml")
    if args.smoke:
        spec["training"]["epochs"] = 1
    model = out / "parts.safetensors"
    polymodal.train(spec, train_table, model, progress=False)
    print(f"torch {torch.__version__}, CPU capability {torch.backends.cpu.get_cpu_capability()},"
          f" {torch.get_num_threads()} threads; {rows[1]} held-out rows")
    started = time.perf_counter()
    polymodal.evaluate(model, test_table)
    evaluate_seconds = time.perf_counter() - started
    result = polymodal.explain(model, test_table, out / "explained", repeats=args.repeats,
                               rows=5, keep=["part_id"])
    print(f"evaluate: {evaluate_seconds:.2f} s (1 pass, reading and decoding the images);"
          f" explain: {result.seconds:.2f} s ({result.passes} passes over rows decoded once),"
          f" {result.seconds / evaluate_seconds:.1f}x evaluate\n")
    print(result.text())


if __name__ == "__main__":
    main()

"""The training demo: fused photo + table model against photo-only and table-only models.

Generates the parts dataset (examples/parts/make_data.py: the decision depends on the photo AND
the inspection record), trains three models from examples/parts/fused.yaml — the spec as
written, and the same spec with only its photo or only its record input — evaluates each on
the held-out test table, and prints the comparison. Exits non-zero unless the fused model wins
clearly.

    python examples/train_demo.py [--out runs/parts-demo]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import polymodal
from polymodal._spec_files import read_spec_file

HERE = Path(__file__).parent
SPEC = HERE / "parts" / "fused.yaml"
METRICS = ["accuracy", "balanced_accuracy", "macro_f1", "auroc"]


def only(spec: dict, keep: str) -> dict:
    """The spec with a single input: its head then reads that input's features alone."""
    return {**spec, "name": f"{spec['name']}_{keep}_only", "inputs": {keep: spec["inputs"][keep]}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/parts-demo", help="Folder for data, models, logs.")
    args = parser.parse_args()
    out = Path(args.out)

    import importlib.util

    loader = importlib.util.spec_from_file_location("make_data", HERE / "parts" / "make_data.py")
    make_data = importlib.util.module_from_spec(loader)
    loader.loader.exec_module(make_data)
    train_table, test_table = make_data.generate(out / "data")
    print(f"data: {train_table} (training), {test_table} (held out)")

    fused = read_spec_file(SPEC)
    candidates = {
        "fused (photo + record)": fused,
        "photo only": only(fused, "photo"),
        "record only": only(fused, "record"),
    }
    results = {}
    for label, spec in candidates.items():
        started = time.perf_counter()
        model_path = out / f"{spec['name']}.safetensors"
        polymodal.train(spec, train_table, model_path, progress=False)
        seconds = time.perf_counter() - started
        evaluation = polymodal.evaluate(model_path, test_table)
        results[label] = (evaluation["heads"]["decision"]["metrics"], seconds)
        print(f"trained {label} in {seconds:.0f}s -> {model_path}")

    print(f"\nheld-out test set: {evaluation['rows']} rows")
    header = ["model", *METRICS, "train s"]
    rows = [[label, *(f"{m[k]:.3f}" for k in METRICS), f"{s:.0f}"] for label, (m, s) in results.items()]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths)))

    fused_acc = results["fused (photo + record)"][0]["balanced_accuracy"]
    best_single = max(results["photo only"][0]["balanced_accuracy"],
                      results["record only"][0]["balanced_accuracy"])
    margin = fused_acc - best_single
    print(f"\nfused beats the best single input by {margin:+.3f} balanced accuracy")
    if margin < 0.05:
        raise SystemExit("the fused model did not win clearly")


if __name__ == "__main__":
    main()

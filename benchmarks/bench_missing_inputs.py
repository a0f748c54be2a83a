"""Rows without a photo: the parts demo data (examples/parts) with 30% of its photos removed.

Two ways of removing them, in the training and the held-out table alike: (a) at random, and
(b) not at random (a part from site `north` loses its photo four times as often as one from
another site). For each, the fused spec is trained on the incomplete table as written
(``missing: auto`` takes an empty photo as absent; ``modality_dropout: 0``) and with
``modality_dropout: 0.2``, and scored on the held-out rows by the inputs each row holds:

- rows without a photo, against the record-only model (trained on every training row);
- rows with a photo, against the fused model trained with every photo for as many epochs.

Each at the spec's epochs and at 10/7 of them: a table with 30% fewer photos gives the image
backbone 30% fewer steps a run.

The goal: within 0.02 balanced accuracy of each reference, or better. Prints the hardware
(torch's CPU capability) with the figures; every figure repeats exactly on one machine (the
seed fixes every draw).

    python benchmarks/bench_missing_inputs.py [--out runs/missing-bench] [--smoke]
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import shutil
import time
from pathlib import Path

import numpy as np
import torch

import polymodal
from polymodal._spec_files import read_spec_file

PARTS = Path(__file__).resolve().parents[1] / "examples" / "parts"
METRIC = "balanced_accuracy"
SHARE = 0.3  # of the photos removed


def _make_data():
    loader = importlib.util.spec_from_file_location("make_data", PARTS / "make_data.py")
    module = importlib.util.module_from_spec(loader)
    loader.loader.exec_module(module)
    return module


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def _write(path: Path, rows: list[dict[str, str]]) -> Path:
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def without_photos(table: Path, out: Path, *, at_random: bool, seed: int) -> Path:
    """``table`` with SHARE of its photo cells emptied: at random, or four times as often for
    site north as for the others (the same share overall)."""
    rows = _rows(table)
    rng = np.random.default_rng(seed)
    weight = np.array([1.0 if at_random or r["site"] != "north" else 4.0 for r in rows])
    chance = np.clip(weight * SHARE * len(rows) / weight.sum(), 0, 1)
    for row, p in zip(rows, chance):
        if rng.random() < p:
            row["photo"] = ""
    return _write(out, rows)


def subset(table: Path, out: Path, with_photo: bool) -> Path:
    return _write(out, [r for r in _rows(table) if bool(r["photo"]) == with_photo])


def trained(spec: dict, table: Path, model: Path) -> tuple[Path, float]:
    started = time.perf_counter()
    polymodal.train(spec, table, model, progress=False)
    return model, time.perf_counter() - started


def with_epochs(spec: dict, epochs: int) -> dict:
    return {**spec, "training": {**spec["training"], "epochs": epochs}}


def score(model: Path, table: Path) -> float:
    return polymodal.evaluate(model, table)["heads"]["decision"]["metrics"][METRIC]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/missing-bench")
    parser.add_argument("--smoke", action="store_true",
                        help="tiny tables and one epoch: checks that the script runs (seconds)")
    args = parser.parse_args()
    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    rows = (120, 80) if args.smoke else (500, 300)
    train_table, test_table = _make_data().generate(out / "data", *rows)
    fused = read_spec_file(PARTS / "fused.yaml")
    if args.smoke:
        fused["training"]["epochs"] = 1
    record_only = {**fused, "name": "record_only", "inputs": {"record": fused["inputs"]["record"]}}
    print(f"torch {torch.__version__}, CPU capability {torch.backends.cpu.get_cpu_capability()},"
          f" {torch.get_num_threads()} threads; {rows[0]} training rows, {rows[1]} held out,"
          f" {SHARE:.0%} of the photos removed")
    epochs = int(fused["training"]["epochs"])
    longer = -(-epochs * 10 // 7)  # as many steps with a photo as the complete table's epochs
    full = {e: trained(with_epochs(fused, e), train_table, out / f"full_{e}.safetensors")[0]
            for e in (epochs, longer)}
    record, _ = trained(record_only, train_table, out / "record.safetensors")
    for at_random, label in ((True, "(a) at random"), (False, "(b) not at random")):
        seed = 1 if at_random else 2
        data = out / "data"
        train_missing = without_photos(train_table, data / f"train_{seed}.csv", at_random=at_random, seed=seed)
        test_missing = without_photos(test_table, data / f"test_{seed}.csv", at_random=at_random, seed=seed + 10)
        no_photo = subset(test_missing, data / f"test_{seed}_no_photo.csv", with_photo=False)
        photo = subset(test_missing, data / f"test_{seed}_photo.csv", with_photo=True)
        reference_no = score(record, no_photo)
        print(f"\n{label}: {sum(1 for r in _rows(train_missing) if not r['photo'])} of {rows[0]}"
              f" training rows and {sum(1 for _ in _rows(no_photo))} of {rows[1]} held-out rows"
              " without a photo")
        for dropout, e in ((0.0, epochs), (0.2, epochs), (0.0, longer), (0.2, longer)):
            spec = with_epochs({**fused, "fusion": {**fused["fusion"], "modality_dropout": dropout}}, e)
            model, seconds = trained(spec, train_missing, out / f"missing_{seed}_{dropout}_{e}.safetensors")
            no, yes = score(model, no_photo), score(model, photo)
            reference_yes = score(full[e], photo)
            print(f"  modality_dropout {dropout:.1f}, {e:2d} epochs: without a photo {no:.3f}"
                  f" (record-only {reference_no:.3f}: {no - reference_no:+.3f}); with a photo"
                  f" {yes:.3f} (fused on every photo, {e} epochs, {reference_yes:.3f}:"
                  f" {yes - reference_yes:+.3f}); {seconds:.0f} s", flush=True)
    print(f"\n{METRIC} on the held-out rows; goal: each difference -0.02 or better")


if __name__ == "__main__":
    main()

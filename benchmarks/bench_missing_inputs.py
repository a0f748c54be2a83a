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

Every model is trained with each of ``--seeds`` training seeds (3 by default), and the
differences to the references are given as mean ± sd over them: one run's balanced accuracy on
~100 held-out rows moves by a few hundredths with the seed alone.

The goal: within 0.02 balanced accuracy of each reference, or better. Prints the hardware
(torch's CPU capability) with the figures; every figure repeats exactly on one machine (the
seeds fix every draw).

    python benchmarks/bench_missing_inputs.py [--out runs/missing-bench] [--seeds 3] [--smoke]
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


def with_seed(spec: dict, seed: int) -> dict:
    return {**spec, "training": {**spec["training"], "seed": seed}}


def scenario_tables(train_table: Path, test_table: Path, data: Path, at_random: bool
                    ) -> tuple[Path, Path, Path]:
    """The training table with photos removed, and the held-out rows without and with one."""
    seed = 1 if at_random else 2
    train_missing = without_photos(train_table, data / f"train_{seed}.csv", at_random=at_random, seed=seed)
    test_missing = without_photos(test_table, data / f"test_{seed}.csv", at_random=at_random, seed=seed + 10)
    return (train_missing, subset(test_missing, data / f"test_{seed}_no_photo.csv", with_photo=False),
            subset(test_missing, data / f"test_{seed}_photo.csv", with_photo=True))


def mean_sd(values: list[float]) -> str:
    return f"{np.mean(values):+.3f} ± {np.std(values, ddof=1) if len(values) > 1 else 0.0:.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/missing-bench")
    parser.add_argument("--seeds", type=int, default=3, help="training seeds each variant runs with")
    parser.add_argument("--smoke", action="store_true",
                        help="tiny tables, one seed and one epoch: checks that the script runs (seconds)")
    args = parser.parse_args()
    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    rows = (120, 80) if args.smoke else (500, 300)
    seeds = range(1 if args.smoke else args.seeds)
    train_table, test_table = _make_data().generate(out / "data", *rows)
    fused = read_spec_file(PARTS / "fused.yaml")
    if args.smoke:
        fused["training"]["epochs"] = 1
    record_only = {**fused, "name": "record_only", "inputs": {"record": fused["inputs"]["record"]}}
    print(f"torch {torch.__version__}, CPU capability {torch.backends.cpu.get_cpu_capability()},"
          f" {torch.get_num_threads()} threads; {rows[0]} training rows, {rows[1]} held out,"
          f" {SHARE:.0%} of the photos removed; training seeds {list(seeds)}")
    epochs = int(fused["training"]["epochs"])
    longer = -(-epochs * 10 // 7)  # as many steps with a photo as the complete table's epochs
    scenarios = {label: scenario_tables(train_table, test_table, out / "data", at_random)
                 for at_random, label in ((True, "(a) at random"), (False, "(b) not at random"))}
    variants = [(0.0, epochs), (0.2, epochs), (0.0, longer), (0.2, longer)]
    # differences[(scenario, dropout, epochs)] = ([without a photo], [with a photo]) per seed
    differences: dict[tuple, tuple[list[float], list[float]]] = {}
    for seed in seeds:
        full = {e: trained(with_seed(with_epochs(fused, e), seed), train_table,
                           out / f"full_{e}_{seed}.safetensors")[0] for e in (epochs, longer)}
        record, _ = trained(with_seed(record_only, seed), train_table, out / f"record_{seed}.safetensors")
        for label, (train_missing, no_photo, photo) in scenarios.items():
            reference_no = score(record, no_photo)
            for dropout, e in variants:
                spec = with_seed(with_epochs({**fused, "fusion": {**fused["fusion"],
                                                                  "modality_dropout": dropout}}, e), seed)
                model, seconds = trained(spec, train_missing, out / f"m_{label[1]}_{dropout}_{e}_{seed}.safetensors")
                no, yes = score(model, no_photo), score(model, photo)
                reference_yes = score(full[e], photo)
                print(f"seed {seed} {label}, modality_dropout {dropout:.1f}, {e:2d} epochs: without a"
                      f" photo {no:.3f} (record-only {reference_no:.3f}), with a photo {yes:.3f}"
                      f" (fused on every photo {reference_yes:.3f}); {seconds:.0f} s", flush=True)
                pair = differences.setdefault((label, dropout, e), ([], []))
                pair[0].append(no - reference_no)
                pair[1].append(yes - reference_yes)
    print(f"\n{METRIC} on the held-out rows, difference to the reference, mean ± sd over"
          f" {len(seeds)} seed(s); goal: -0.02 or better")
    for label, (train_missing, no_photo, photo) in scenarios.items():
        print(f"\n{label}: {sum(1 for r in _rows(train_missing) if not r['photo'])} of {rows[0]}"
              f" training rows and {len(_rows(no_photo))} of {rows[1]} held-out rows without a photo")
        print(f"  {'variant':34s} {'without a photo vs record-only':>31s} {'with a photo vs every photo':>28s}")
        for dropout, e in variants:
            no, yes = differences[(label, dropout, e)]
            print(f"  modality_dropout {dropout:.1f}, {e:2d} epochs    {mean_sd(no):>31s} {mean_sd(yes):>28s}")


if __name__ == "__main__":
    main()

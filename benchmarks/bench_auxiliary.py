"""Per-input heads in training (``fusion.auxiliary``): does the fused model beat its best single
input, and the same spec without them? Five-fold cross-validation, specs compared fold by fold.

Tables:

- the parts demo data (examples/parts): photo and inspection record, each right about 75% of
  the time alone, both needed to be right every time;
- a table where one input is strong and the other weak but complementary: a photo whose blob's
  brightness carries ``u`` and a record's number ``x``; the label is ``u + 0.5 x + noise > 0``,
  so the photo alone is right about 85% of the time, the record alone about 65%, and only the
  two together approach 100%;
- ``memorising``: a strong record beside 30 noise columns a wide MLP can memorise, a weak photo;
- ``site_shortcut``: the strong-photo, weak-record table, but each site's rows drawn so that 90%
  share one label, with the record's ``site`` column, and folds that hold out whole sites: the
  column predicts the label in the training sites and says nothing on the others.

For each, the fused spec with ``fusion.auxiliary`` is compared with the same spec without it and
with each input alone (every spec on the same folds): the goal is that with the option the fused
model beats its best single input in at least 4 of 5 folds and the spec without the option on
the paired mean (balanced accuracy). Prints torch's CPU capability with the figures; they repeat
exactly on one machine (seeded).

    python benchmarks/bench_auxiliary.py [--folds 5] [--weight 0.3] [--seed 0] [--tables ...]
        [--out runs/aux-bench] [--smoke]
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import polymodal
from polymodal._spec_files import read_spec_file

PARTS = Path(__file__).resolve().parents[1] / "examples" / "parts"
METRIC = "balanced_accuracy"


def parts_table(out: Path, rows: int) -> Path:
    loader = importlib.util.spec_from_file_location("make_data", PARTS / "make_data.py")
    module = importlib.util.module_from_spec(loader)
    loader.loader.exec_module(module)
    return module.write_split(out, "train", rows, seed=1)


def _blob_table(out: Path, name: str, rows: int, seed: int,
                weights: tuple[float, float], extra: Callable[[np.random.Generator], dict]) -> Path:
    """Photos whose blob brightness is ``u`` and a record's ``x`` (with the ``extra`` columns
    drawn for each row); label: ``weights[0] u + weights[1] x + noise > 0``."""
    rng = np.random.default_rng(seed)
    (out / "images").mkdir(parents=True, exist_ok=True)
    records = []
    for i in range(rows):
        u, x = rng.normal(), rng.normal()
        image = rng.normal(100, 20, (24, 24, 3))
        cy, cx = rng.integers(6, 18, 2)
        image[cy - 5:cy + 5, cx - 5:cx + 5] = 128 + 45 * np.clip(u, -2.5, 2.5)
        path = f"images/{name}_{i:05d}.png"
        Image.fromarray(image.clip(0, 255).astype(np.uint8)).save(out / path)
        label = "yes" if weights[0] * u + weights[1] * x + rng.normal(0, 0.2) > 0 else "no"
        records.append({"photo": path, "x": f"{x:.3f}", **extra(rng), "label": label})
    table = out / f"{name}.csv"
    with table.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, list(records[0]))
        writer.writeheader()
        writer.writerows(records)
    return table


def strong_weak_table(out: Path, rows: int, seed: int = 0) -> Path:
    """A strong photo and a weak record: label ``u + 0.5 x + noise > 0``."""
    return _blob_table(out, "strong_weak", rows, seed, (1.0, 0.5),
                       lambda rng: {"noise": f"{rng.normal():.3f}"})


def strong_weak_spec() -> dict:
    return {
        "name": "fused",
        "inputs": {
            "photo": {"adapter": {"type": "image", "channels": 3, "size": 24},
                      "backbone": {"type": "timm", "model": "resnet10t", "pretrained": False}},
            "record": {"adapter": {"type": "tabular", "numerical": ["x", "noise"]},
                       "backbone": {"type": "mlp", "hidden": [32]}},
        },
        "fusion": {"type": "concat", "hidden": [64]},
        "heads": {"label": {"type": "classification"}},
        "training": {"epochs": 6, "batch_size": 32, "lr": 0.003, "schedule": "onecycle",
                     "early_stopping": {"metric": "label.balanced_accuracy"}, "seed": 0},
    }


def memorising_table(out: Path, rows: int, noise_columns: int = 30, seed: int = 0) -> Path:
    """A record whose ``x`` decides most rows, beside many noise columns a wide MLP can memorise;
    a photo whose blob brightness ``u`` decides the rest: label ``x + 0.7 u + noise > 0``."""
    return _blob_table(out, "memorising", rows, seed, (0.7, 1.0),
                       lambda rng: {f"n{j}": f"{rng.normal():.3f}" for j in range(noise_columns)})


def memorising_spec(noise_columns: int = 30) -> dict:
    spec = strong_weak_spec()
    spec["inputs"]["record"] = {
        "adapter": {"type": "tabular",
                    "numerical": ["x", *(f"n{j}" for j in range(noise_columns))]},
        "backbone": {"type": "mlp", "hidden": [256, 256]}}
    spec["training"]["epochs"] = 20
    return spec


def site_shortcut_table(out: Path, rows: int, sites: int = 20, seed: int = 0) -> Path:
    """The label is ``u + 0.5 x + noise > 0`` (the photo's blob ``u`` strong, the record's ``x``
    weak), but each site's rows were drawn so that 90% of them share one label (alternately
    yes and no by site): within the training sites the record's ``site`` column predicts the
    label better than anything else, a shortcut that is worthless on sites never seen, which
    is what grouped folds test."""
    rng = np.random.default_rng(seed)
    (out / "images").mkdir(parents=True, exist_ok=True)
    records = []
    for i in range(rows):
        site = i % sites
        wanted = ("yes" if site % 2 == 0 else "no") if rng.random() < 0.9 else \
            ("no" if site % 2 == 0 else "yes")
        while True:  # rows drawn until one has the wanted label: the site's selection bias
            u, x = rng.normal(), rng.normal()
            if ("yes" if u + 0.5 * x + rng.normal(0, 0.2) > 0 else "no") == wanted:
                break
        image = rng.normal(100, 20, (24, 24, 3))
        cy, cx = rng.integers(6, 18, 2)
        image[cy - 5:cy + 5, cx - 5:cx + 5] = 128 + 45 * np.clip(u, -2.5, 2.5)
        path = f"images/site_{i:05d}.png"
        Image.fromarray(image.clip(0, 255).astype(np.uint8)).save(out / path)
        records.append({"photo": path, "x": f"{x:.3f}", "site": f"site{site:02d}",
                        "label": wanted})
    table = out / "site_shortcut.csv"
    with table.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, list(records[0]))
        writer.writeheader()
        writer.writerows(records)
    return table


def site_shortcut_spec() -> dict:
    spec = strong_weak_spec()
    spec["inputs"]["record"] = {
        "adapter": {"type": "tabular", "categorical": ["site"], "numerical": ["x"]},
        "backbone": {"type": "mlp", "hidden": [32]}}
    spec["training"]["group_by"] = "site"  # the validation rows are of other sites too
    return spec


def variants(fused: dict, weight: float) -> list[dict]:
    """The fused spec with the option, without it, and each input alone."""
    with_aux = {**fused, "name": "fused_auxiliary",
                "fusion": {**fused["fusion"], "auxiliary": {"weight": weight}}}
    alone = [{**fused, "name": f"{name}_only", "inputs": {name: fused["inputs"][name]}}
             for name in fused["inputs"]]
    for spec in alone:
        spec.pop("fusion", None)
    return [with_aux, {**fused, "name": "fused"}, *alone]


def compare(title: str, specs: list[dict], table: Path, folds: int, out: Path,
            epochs: int | None, seed: int, group_by: str | None = None) -> None:
    options = {"seed": seed, **({"epochs": epochs} if epochs else {})}
    result = polymodal.cv(specs[0], table, folds=folds, compare=specs[1:], output=out,
                          options=options, group_by=group_by)
    head = next(iter(result.scores[0].metrics()))
    values = {s.name: s.values(head, METRIC) for s in result.scores}
    first, others = specs[0]["name"], [s["name"] for s in specs[1:]]
    singles = [n for n in others if n.endswith("_only")]
    best_single = np.max([values[n] for n in singles], axis=0)
    print(f"\n{title}: {METRIC} of head {head} per fold")
    for name, row in values.items():
        print(f"  {name:18s} " + "  ".join(f"{v:.3f}" for v in row)
              + f"   mean {np.nanmean(row):.3f}")
    beats = int((values[first] > best_single).sum())
    diff = values[first] - values["fused"]
    print(f"  {first} beats its best single input in {beats} of {folds} folds (goal: 4);"
          f" against fused without the option: {np.mean(diff):+.3f} ± {np.std(diff, ddof=1):.3f}"
          f" paired ({int((diff > 0).sum())} better, {int((diff < 0).sum())} worse)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--weight", type=float, default=0.3)
    parser.add_argument("--seed", type=int, default=0, help="Seed of the folds and of training.")
    parser.add_argument("--out", default="runs/aux-bench")
    parser.add_argument("--tables", default="parts,strong_weak",
                        help="Which tables to run, of parts, strong_weak, memorising and"
                        " site_shortcut.")
    parser.add_argument("--smoke", action="store_true",
                        help="tiny tables, 2 folds of one epoch: checks that the script runs")
    args = parser.parse_args()
    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    rows, folds, epochs = (60, 2, 1) if args.smoke else (500, args.folds, None)
    print(f"torch {torch.__version__}, CPU capability {torch.backends.cpu.get_cpu_capability()},"
          f" {torch.get_num_threads()} threads; {rows} rows, {folds} folds,"
          f" auxiliary weight {args.weight}, seed {args.seed}")
    tables = args.tables.split(",")
    if "parts" in tables:
        parts = parts_table(out / "parts", rows)
        compare("parts demo data", variants(read_spec_file(PARTS / "fused.yaml"), args.weight),
                parts, folds, out / "parts.cv", epochs, args.seed)
    if "strong_weak" in tables:
        strong_weak = strong_weak_table(out / "strong_weak", rows)
        compare("strong photo, weak record", variants(strong_weak_spec(), args.weight),
                strong_weak, folds, out / "strong_weak.cv", epochs, args.seed)
    if "memorising" in tables:
        memorising = memorising_table(out / "memorising", rows)
        compare("strong record that can memorise, weak photo",
                variants(memorising_spec(), args.weight), memorising, folds,
                out / "memorising.cv", epochs, args.seed)
    if "site_shortcut" in tables:
        shortcut = site_shortcut_table(out / "site_shortcut", rows)
        compare("weak record with a site shortcut, strong photo; folds by site",
                variants(site_shortcut_spec(), args.weight), shortcut, folds,
                out / "site_shortcut.cv", epochs, args.seed, group_by="site")


if __name__ == "__main__":
    main()

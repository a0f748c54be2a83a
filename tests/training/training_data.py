"""A tiny on-disk dataset (16 px PNG images and a CSV table) and specs that train in seconds."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from PIL import Image

COLUMNS = ["id", "photo", "color", "age", "label", "score"]


def write_dataset(folder: Path, rows: int = 48, seed: int = 0, name: str = "data.csv") -> Path:
    """Images with a red or blue square; ``label`` is ``yes`` when the square is red XOR the
    colour column is ``red``, so the label needs both inputs; ``score`` is numeric."""
    rng = np.random.default_rng(seed)
    (folder / "img").mkdir(parents=True, exist_ok=True)
    records = []
    for i in range(rows):
        red = int(rng.integers(0, 2))
        color = ["red", "blue", "green"][int(rng.integers(0, 3))]
        age = float(rng.normal(40, 10))
        pixels = np.full((16, 16, 3), 30, np.uint8)
        pixels[4:12, 4:12, 0 if red else 2] = 220
        path = f"img/{seed}_{i}.png"
        Image.fromarray(pixels).save(folder / path)
        label = "yes" if red ^ (color == "red") else "no"
        records.append([f"r{i}", path, color, f"{age:.1f}", label, f"{age / 10 + red:.3f}"])
    table = folder / name
    with table.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(COLUMNS)
        writer.writerows(records)
    return table


def spec_data(epochs: int = 2, augment: dict | None = None, **training) -> dict:
    """A fused model small enough for CPU tests: the image goes to the fusion unpooled.
    ``augment`` is the image adapter's augmentation."""
    photo = {"type": "image", "channels": 3, **({"augment": augment} if augment else {})}
    return {
        "name": "toy",
        "inputs": {
            "photo": {"adapter": photo},
            "report": {"adapter": {"type": "tabular", "categorical": ["color"],
                                   "numerical": ["age"]},
                       "backbone": {"type": "mlp", "hidden": [16]}},
        },
        "fusion": {"type": "concat", "hidden": [32]},
        "heads": {"label": {"type": "classification"}},
        # fp32: the tests' numbers must not depend on whether the CPU has bf16 (precision auto)
        "training": {"epochs": epochs, "batch_size": 8, "lr": 0.01, "precision": "fp32",
                     **training},
    }


def read_csv(path: Path) -> list[dict[str, str]]:
    with Path(path).open(newline="") as handle:
        return list(csv.DictReader(handle))


def write_csv(path: Path, rows: list[dict[str, str]]) -> Path:
    with Path(path).open("w", newline="") as handle:
        writer = csv.DictWriter(handle, list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def write_grouped_table(folder: Path, groups: int = 12, per_group: int = 4, seed: int = 0,
                        name: str = "grouped.csv") -> Path:
    """A table-only dataset whose rows come in groups (``site``): ``label`` is ``yes`` when
    ``x`` is positive, ``kind`` is noise, ``fold`` names one of three folds by site."""
    rng = np.random.default_rng(seed)
    rows = []
    for g in range(groups):
        for _ in range(per_group):
            x = float(rng.normal())
            rows.append({"site": f"s{g:02d}", "fold": g % 3 + 1, "x": f"{x:.3f}",
                         "kind": ["a", "b"][int(rng.integers(0, 2))],
                         "label": "yes" if x > 0 else "no", "value": f"{x * 2 + 1:.3f}"})
    path = Path(folder) / name
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def table_spec(epochs: int = 1, name: str = "tab", **training) -> dict:
    """A table-only model that trains in a fraction of a second."""
    return {
        "name": name,
        "inputs": {"record": {"adapter": {"type": "tabular", "categorical": ["kind"],
                                          "numerical": ["x"]},
                              "backbone": {"type": "mlp", "hidden": [8]}}},
        "heads": {"label": {"type": "classification"}},
        "training": {"epochs": epochs, "batch_size": 8, "lr": 0.05, "precision": "fp32",
                     **training},
    }

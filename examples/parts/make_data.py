"""Generate the demo dataset: photos of parts and their inspection records.

Each row has a 32 px photo (a red or blue part of random shape and place on a noisy background)
and a table row (material, sensor reading, two columns of noise). A part is rejected when the
evidence adds up: a red part and a steel part both point to `reject`, and when photo and
material disagree the sign of the sensor reading decides. So the photo alone or the table alone
is right about 75% of the time, and only a model that sees both can be right every time.

    python examples/parts/make_data.py OUT_DIR     # writes train.csv, test.csv and images/
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

SIZE = 32
MATERIALS = ["steel", "wood", "plastic"]
SITES = ["north", "south", "east", "west"]


def _photo(rng: np.random.Generator, red: bool) -> Image.Image:
    background = rng.normal(110, 25, (SIZE, SIZE, 3)).clip(0, 255).astype(np.uint8)
    image = Image.fromarray(background)
    draw = ImageDraw.Draw(image)
    radius = int(rng.integers(6, 11))
    cx, cy = (int(v) for v in rng.integers(radius, SIZE - radius, 2))
    tone = int(rng.integers(170, 240))
    colour = (tone, int(rng.integers(20, 70)), int(rng.integers(20, 70)))
    if not red:
        colour = (colour[2], colour[1], colour[0])
    box = (cx - radius, cy - radius, cx + radius, cy + radius)
    if rng.random() < 0.5:
        draw.ellipse(box, fill=colour)
    else:
        draw.rectangle(box, fill=colour)
    return image


def write_split(folder: Path, name: str, rows: int, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    images = folder / "images"
    images.mkdir(parents=True, exist_ok=True)
    records = []
    for i in range(rows):
        red = bool(rng.random() < 0.5)
        material = MATERIALS[int(rng.integers(0, 3))]
        reading = float(rng.normal(0, 1))
        photo = 1 if red else -1
        steel = 1 if material == "steel" else -1
        reject = photo + steel + (0.5 if reading > 0 else -0.5) > 0
        path = f"images/{name}_{i:05d}.png"
        _photo(rng, red).save(folder / path)
        records.append({
            "part_id": f"{name}-{i:05d}",
            "photo": path,
            "material": material,
            "reading": f"{reading:.3f}",
            "weight_kg": f"{rng.gamma(4.0, 0.5):.2f}",
            "site": SITES[int(rng.integers(0, 4))],
            "decision": "reject" if reject else "accept",
        })
    table = folder / f"{name}.csv"
    with table.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, list(records[0]))
        writer.writeheader()
        writer.writerows(records)
    return table


def generate(folder: Path, train_rows: int = 500, test_rows: int = 300) -> tuple[Path, Path]:
    """Write the train and test tables (deterministic: the same files every time)."""
    folder.mkdir(parents=True, exist_ok=True)
    return write_split(folder, "train", train_rows, seed=1), write_split(folder, "test", test_rows, seed=2)


if __name__ == "__main__":
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "runs/parts-data")
    train, test = generate(out)
    print(f"wrote {train} and {test}")

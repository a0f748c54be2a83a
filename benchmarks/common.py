"""Shared by the training benchmarks: a synthetic table with image files, and the spec."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np


def write_table(folder: Path, rows: int, size: int, image_format: str = "png", seed: int = 0) -> Path:
    """``rows`` images of ``size`` px (``png`` or uint8 ``npy``) and a table with two
    categorical and two numerical columns and a binary label."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    records = []
    for i in range(rows):
        pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
        path = f"images/{i}.{image_format}"
        if image_format == "npy":
            np.save(folder / path, np.ascontiguousarray(np.moveaxis(pixels, -1, 0)))
        else:
            Image.fromarray(pixels).save(folder / path)
        records.append([path, f"m{rng.integers(0, 20)}", f"c{rng.integers(0, 8)}",
                        f"{rng.normal():.3f}", f"{rng.normal():.3f}", str(rng.integers(0, 2))])
    table = folder / "table.csv"
    with table.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["photo", "make", "color", "age", "mileage", "label"])
        writer.writerows(records)
    return table


def spec(backbone: str, size: int, batch_size: int, epochs: int, augment: dict | None = None,
         **training) -> dict:
    """The benchmarks' model; ``augment`` is the image adapter's augmentation."""
    return {
        "name": "bench",
        "inputs": {
            "photo": {"adapter": {"type": "image", "channels": 3, "column": "photo",
                                  "mean": [0.5] * 3, "std": [0.25] * 3,
                                  **({"augment": augment} if augment else {})},
                      "backbone": {"type": "timm", "model": backbone}},
            "report": {"adapter": {"type": "tabular", "categorical": {"make": 20, "color": 8},
                                   "numerical": ["age", "mileage"]},
                       "backbone": {"type": "mlp", "hidden": [128, 64]}},
        },
        "fusion": {"type": "concat", "hidden": [256]},
        "heads": {"label": {"type": "classification", "classes": 2}},
        "training": {"epochs": epochs, "batch_size": batch_size, "val_fraction": 0.0,
                     "schedule": "none", **training},
    }


def hand_written_steps(model, batch, target, steps: int, device, autocast_dtype=None) -> float:
    """Images/s of a plain PyTorch loop (AdamW, cross-entropy) over one in-memory batch."""
    import time

    import torch

    model.to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-4)
    head = next(iter(model.heads))

    def step():
        with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            logits = model(batch)[head]
        loss = torch.nn.functional.cross_entropy(logits.float(), target)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    for _ in range(2):  # warm-up
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return steps * len(target) / (time.perf_counter() - started)

"""Pictures of an image input's attribution (``polymodal explain --attribute``): per group of up
to three bands, the image, the attribution as a grey map, and the image with it laid over in
red."""

from __future__ import annotations

import numpy as np
import torch

#: Pictures are enlarged (nearest neighbour) to at least this many pixels a side to be readable.
MIN_SIDE = 128


def band_groups(names: list[str]) -> list[tuple[str, list[int]]]:
    """Bands shown together: three bands as one RGB picture (``rgb`` where there are three
    bands in all), else groups of up to three consecutive bands named after them."""
    if len(names) == 3:
        return [("rgb", [0, 1, 2])]
    return [("+".join(names[i:i + 3]), list(range(i, min(i + 3, len(names)))))
            for i in range(0, len(names), 3)]


def _stretched(values: np.ndarray) -> np.ndarray:
    """The bands to 0..1 between their 1st and 99th percentile, all with the same two values
    (so a group's colours keep their balance)."""
    low, high = np.percentile(values, [1, 99])
    return np.clip((values - low) / max(high - low, 1e-8), 0, 1)


def _as_rgb(bands: np.ndarray) -> np.ndarray:
    """``[k, H, W]`` in 0..1 (k = 1..3) as ``[H, W, 3]``: one band grey, two as red and green."""
    if len(bands) == 1:
        return np.repeat(bands, 3, axis=0).transpose(1, 2, 0)
    padded = np.concatenate([bands, np.zeros((3 - len(bands), *bands.shape[1:]))])
    return padded.transpose(1, 2, 0)


def overlay(value: torch.Tensor, attribution: torch.Tensor, bands: list[int]) -> np.ndarray:
    """``[H, 3W, 3]`` uint8: the bands as a picture; the attribution's size (summed over the
    bands, scaled to its 99th percentile) as a grey map, white where it is largest; and the
    picture dimmed with the attribution laid over it in red."""
    image = _as_rgb(_stretched(value[bands].float().numpy()))
    heat = attribution[bands].float().abs().sum(dim=0).numpy()
    heat = np.clip(heat / max(float(np.percentile(heat, 99)), 1e-12), 0, 1)[..., None]
    grey = np.repeat(heat, 3, axis=2)
    laid = image * 0.4 * (1 - heat) + heat * np.array([1.0, 0.1, 0.1])
    panels = np.concatenate([image, grey, laid], axis=1)
    scale = max(1, -(-MIN_SIDE // panels.shape[0]))
    panels = panels.repeat(scale, axis=0).repeat(scale, axis=1)
    return (panels * 255).round().astype(np.uint8)


def pictures(value: torch.Tensor, attribution: torch.Tensor, names: list[str]) -> dict[str, np.ndarray]:
    """One picture per band group of one row (``value`` and ``attribution``: ``[1, C, H, W]``)."""
    return {label: overlay(value[0], attribution[0], bands) for label, bands in band_groups(names)}

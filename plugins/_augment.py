"""Augmentation of image batches ``[B, C, H, W]`` that is correct for any channel count: the
image adapter's ``augment`` options and what they do.

Only geometric operations and additive noise: colour jitter assumes RGB and would mix the bands
of a 12-band multispectral image. Each sample draws its own operations from ``generator``, so
a batch's augmentation is reproducible from its seed (and a resumed run sees the same ones).

What it computes is, per sample: flip left-right, flip up-down, turn by quarter turns, pad by
reflection and crop back at a random place, add noise, in that order. It runs in data-loading
workers, which must keep up with a GPU: so the batch is padded once, each sample is one slice
of it, flipped and turned in one copy (any flips and turns are one flip and a transpose), and
8-bit images stay 8-bit unless noise is added.
"""

from __future__ import annotations

import torch
from pydantic import BaseModel, ConfigDict, Field

ROWS, COLUMNS = -2, -1


class Augment(BaseModel):
    """Augmentation of the training batches (never of validation or prediction batches). Every
    operation is correct for any channel count (no colour operation that assumes RGB)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    hflip: bool = Field(False, description="Random horizontal flips.")
    vflip: bool = Field(False, description="Random vertical flips.")
    rot90: bool = Field(False, description="Random rotations by multiples of 90 degrees"
                        " (square images; others get 0 or 180 degrees).")
    crop_padding: int = Field(0, description="Pad by this many pixels (reflecting the border),"
                              " then crop back to the original size at a random place.",
                              ge=0, le=4096)
    noise_std: float = Field(0.0, description="Standard deviation of gaussian noise added to"
                             " the pixel values (0..1 for 8-bit images).", ge=0.0)

    def any(self) -> bool:
        return self.hflip or self.vflip or self.rot90 or self.crop_padding > 0 or self.noise_std > 0


def augment_images(images: torch.Tensor, options: Augment, generator: torch.Generator) -> torch.Tensor:
    """``images`` with each sample's operations drawn from ``generator``."""
    if not options.any():
        return images
    batch, _, height, width = images.shape

    def coin() -> list[bool]:
        return (torch.rand(batch, generator=generator) < 0.5).tolist()

    # The draws come first and in a fixed order: a batch's augmentation depends on its seed only.
    hflips = coin() if options.hflip else [False] * batch
    vflips = coin() if options.vflip else [False] * batch
    turns = [0] * batch
    if options.rot90:
        drawn = torch.randint(0, 4, (batch,), generator=generator)
        turns = (drawn if height == width else (drawn % 2) * 2).tolist()  # a quarter turn would change the shape
    pad = options.crop_padding
    tops = lefts = [pad] * batch
    if pad:
        tops = torch.randint(0, 2 * pad + 1, (batch,), generator=generator).tolist()
        lefts = torch.randint(0, 2 * pad + 1, (batch,), generator=generator).tolist()

    padded = _padded(images, pad) if pad else images
    out = torch.empty_like(images)
    for i in range(batch):
        flips, transposed = _as_flips(hflips[i], vflips[i], turns[i])
        # The crop window, taken after the flips and turn, is another window of the padded image
        # before them (padding is the same on every side, so it commutes with them).
        top, left = (lefts[i], tops[i]) if transposed else (tops[i], lefts[i])
        top = 2 * pad - top if ROWS in flips else top
        left = 2 * pad - left if COLUMNS in flips else left
        window = padded[i, :, top:top + height, left:left + width]
        if flips:
            window = window.flip(flips)
        out[i] = window.transpose(ROWS, COLUMNS) if transposed else window

    if options.noise_std:
        if not out.is_floating_point():
            out = out.to(torch.float32).div_(255.0)  # scaled as the image adapter scales 8-bit images
        noise = torch.randn(out.shape, generator=generator, dtype=out.dtype)
        out.add_(noise.mul_(options.noise_std))
    return out


def _as_flips(hflip: bool, vflip: bool, turns: int) -> tuple[tuple[int, ...], bool]:
    """The flips then transpose that do what flipping and then turning by ``turns`` quarter
    turns do (a turn is a flip and a transpose, as in ``torch.rot90``)."""
    flips = {COLUMNS} if hflip else set()
    flips ^= {ROWS} if vflip else set()
    flips ^= {0: set(), 1: {COLUMNS}, 2: {ROWS, COLUMNS}, 3: {ROWS}}[turns]
    return tuple(sorted(flips)), turns % 2 == 1


def _padded(images: torch.Tensor, pad: int) -> torch.Tensor:
    """``images`` padded by ``pad`` on every side: by reflection (the border not repeated) when
    ``pad`` is smaller than both sides, else by repeating the border."""
    batch, channels, height, width = images.shape
    reflect = pad < min(height, width)

    def source(position: int, size: int) -> int:
        if reflect:
            return -position if position < 0 else 2 * (size - 1) - position
        return min(max(position, 0), size - 1)

    out = images.new_empty(batch, channels, height + 2 * pad, width + 2 * pad)
    out[:, :, pad:pad + height, pad:pad + width] = images
    for offset in [*range(-pad, 0), *range(width, width + pad)]:
        out[:, :, pad:pad + height, pad + offset] = images[:, :, :, source(offset, width)]
    for offset in [*range(-pad, 0), *range(height, height + pad)]:
        out[:, :, pad + offset, :] = out[:, :, pad + source(offset, height), :]
    return out

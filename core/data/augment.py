"""Augmentation of image batches ``[B, C, H, W]`` that is correct for any channel count.

Only geometric operations and additive noise: colour jitter assumes RGB and would mix the bands
of a 12-band multispectral image. Each sample draws its own operations from ``generator``, so
a batch's augmentation is reproducible from its seed (and a resumed run sees the same ones).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..training.options import Augment


def augment_images(images: torch.Tensor, options: Augment, generator: torch.Generator) -> torch.Tensor:
    if not options.any():
        return images
    batch, _, height, width = images.shape
    if images.dtype == torch.uint8 and (options.crop_padding or options.noise_std):
        # Reflection padding and noise need floating point: scale as the image adapter would.
        images = images.float() / 255.0

    def coin() -> torch.Tensor:
        return torch.rand(batch, generator=generator) < 0.5

    out = images
    if options.hflip:
        flip = coin()
        out = torch.where(flip.view(-1, 1, 1, 1), out.flip(-1), out)
    if options.vflip:
        flip = coin()
        out = torch.where(flip.view(-1, 1, 1, 1), out.flip(-2), out)
    if options.rot90:
        turns = torch.randint(0, 4, (batch,), generator=generator)
        if height != width:
            turns = (turns % 2) * 2  # a quarter turn would change the shape
        out = torch.stack([torch.rot90(x, int(k), dims=(-2, -1)) for x, k in zip(out, turns)])
    if options.crop_padding:
        pad = options.crop_padding
        mode = "reflect" if pad < min(height, width) else "replicate"
        padded = F.pad(out, (pad, pad, pad, pad), mode=mode)
        tops = torch.randint(0, 2 * pad + 1, (batch,), generator=generator)
        lefts = torch.randint(0, 2 * pad + 1, (batch,), generator=generator)
        out = torch.stack([p[:, t:t + height, s:s + width]
                           for p, t, s in zip(padded, tops.tolist(), lefts.tolist())])
    if options.noise_std:
        noise = torch.randn(out.shape, generator=generator, dtype=out.dtype)
        out = out + noise * options.noise_std
    return out

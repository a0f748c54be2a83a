"""Augmentation of one batch, as a data-loading worker runs it (one thread): the engine's
`augment_images` against the same operations written per sample with plain torch calls
(flip, rot90, reflection pad then crop, noise), on 128 uint8 images of 3 x 224 x 224. The
per-sample baseline scales the images to float first, as a hand-written transform usually does;
the engine keeps 8 bits through the geometric operations, which is part of its gain.

    python benchmarks/bench_augment.py [--batch 128] [--size 224] [--repeats 5]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from polymodal_plugins._augment import Augment, augment_images
from _timing import parse_args

OPERATIONS = {
    "hflip": Augment(hflip=True),
    "vflip": Augment(vflip=True),
    "rot90": Augment(rot90=True),
    "crop (pad 4)": Augment(crop_padding=4),
    "noise": Augment(noise_std=0.01),
    "all of them": Augment(hflip=True, vflip=True, rot90=True, crop_padding=4, noise_std=0.01),
}


def per_sample(images: torch.Tensor, options: Augment, generator: torch.Generator) -> torch.Tensor:
    """The operations sample by sample, as a hand-written transform applies them."""
    out = []
    pad = options.crop_padding
    for image in images.float() / 255:
        if options.hflip and torch.rand(1, generator=generator) < 0.5:
            image = image.flip(-1)
        if options.vflip and torch.rand(1, generator=generator) < 0.5:
            image = image.flip(-2)
        if options.rot90:
            image = torch.rot90(image, int(torch.randint(0, 4, (1,), generator=generator)), (-2, -1))
        if pad:
            top, left = (int(v) for v in torch.randint(0, 2 * pad + 1, (2,), generator=generator))
            padded = F.pad(image[None], (pad,) * 4, mode="reflect")[0]
            image = padded[:, top:top + image.shape[1], left:left + image.shape[2]]
        if options.noise_std:
            image = image + torch.randn(image.shape, generator=generator) * options.noise_std
        out.append(image)
    return torch.stack(out)


def milliseconds(augment, images: torch.Tensor, options: Augment, repeats: int) -> float:
    generator = torch.Generator().manual_seed(0)
    augment(images, options, generator)  # warm-up
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        augment(images, options, generator)
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=5)
    args = parse_args(parser, batch=4, size=32, repeats=1)
    torch.set_num_threads(1)  # as in a data-loading worker
    images = torch.randint(0, 256, (args.batch, 3, args.size, args.size), dtype=torch.uint8)
    print(f"{args.batch} uint8 images of 3 x {args.size} x {args.size}, one thread,"
          f" median of {args.repeats} (ms per batch)")
    print(f"{'operation':16s} {'per sample':>11s} {'polymodal':>10s} {'speed-up':>9s}")
    for name, options in OPERATIONS.items():
        plain = milliseconds(per_sample, images, options, args.repeats)
        ours = milliseconds(augment_images, images, options, args.repeats)
        print(f"{name:16s} {plain:11.1f} {ours:10.1f} {plain / ours:8.1f}x")


if __name__ == "__main__":
    main()

"""How often bf16 autocast on this CPU gives non-finite weight gradients: the figure behind
`precision: auto` training a CPU in fp32 (docs/training.md).

A bare timm model (no polymodal), one backward pass per seed at each image size, bf16 autocast;
the same passes in fp32 as the baseline. Prints the CPU it ran on.

    python benchmarks/bench_bf16_gradients.py [--model resnet10t] [--passes 30] [--sizes 16 32 64]
"""

from __future__ import annotations

import argparse

import torch
from _timing import parse_args


def faulty_passes(model_name: str, passes: int, size: int, dtype: torch.dtype | None) -> int:
    """Backward passes (one per seed) whose weight gradients hold a value that is not finite."""
    import timm

    faulty = 0
    for seed in range(passes):
        torch.manual_seed(seed)
        model = timm.create_model(model_name, pretrained=False, in_chans=1, num_classes=0)
        images = torch.rand(32, 1, size, size)
        with torch.autocast("cpu", dtype=dtype or torch.bfloat16, enabled=dtype is not None):
            features = model(images)
        features.float().sum().backward()
        faulty += any(p.grad is not None and not torch.isfinite(p.grad).all()
                      for p in model.parameters())
    return faulty


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet10t")
    parser.add_argument("--passes", type=int, default=30)
    parser.add_argument("--sizes", type=int, nargs="+", default=[16, 32, 64])
    args = parse_args(parser, passes=1, sizes=[16], model="test_resnet")
    print(f"torch {torch.__version__}, CPU capability {torch.backends.cpu.get_cpu_capability()},"
          f" {torch.get_num_threads()} threads; timm {args.model}, batch 32, 1 channel")
    for size in args.sizes:
        bf16 = faulty_passes(args.model, args.passes, size, torch.bfloat16)
        fp32 = faulty_passes(args.model, args.passes, size, None)
        print(f"{size:>4} px: non-finite gradients in {bf16} of {args.passes} bf16 passes,"
              f" {fp32} of {args.passes} fp32 passes")


if __name__ == "__main__":
    main()

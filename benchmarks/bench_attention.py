"""Attention fusion over the spatial tokens of a ResNet-18 feature map vs concat fusion.

Both models are the same ResNet-18 (timm, 224x224 input, ``output: feature_map``) and the same
head; only the fusion differs: ``concat`` (mean-pooled) or ``attention`` (one transformer
layer over the 7x7 = 49 spatial tokens, width 256, 8 heads, summary token). Forward and
backward passes are timed alternately, and the medians compared. Target: attention adds at
most 10%.

    python benchmarks/bench_attention.py [--batch 4] [--reps 7] [--device cpu]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import polymodal
from _timing import parse_args


def spec(fusion: dict, model: str = "resnet18") -> dict:
    return {
        "inputs": {"photo": {"adapter": {"type": "image", "channels": 3},
                             "backbone": {"type": "timm", "model": model,
                                          "output": "feature_map"}}},
        "fusion": fusion,
        "heads": {"label": {"type": "classification", "classes": 10}},
    }


def step(model, batch, target, device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    out = model(batch)["label"]
    model.heads["label"].loss(out, target).backward()
    if device.type == "cuda":
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - start
    model.zero_grad(set_to_none=True)
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--model", default="resnet18", help="timm backbone of both models.")
    args = parse_args(parser, batch=2, reps=1, warmup=0, size=32, model="test_resnet")
    device = torch.device(args.device)
    torch.manual_seed(0)
    models = {
        "concat": polymodal.build(spec({"type": "concat"}, args.model)).to(device).train(),
        "attention": polymodal.build(
            spec({"type": "attention", "dim": 256, "heads": 8, "layers": 1}, args.model)).to(device).train(),
    }
    batch = {"photo": torch.randn(args.batch, 3, args.size, args.size, device=device)}
    target = torch.randint(0, 10, (args.batch,), device=device)
    times: dict[str, list[float]] = {name: [] for name in models}
    for rep in range(args.warmup + args.reps):
        for name, model in models.items():  # alternate, so drifts hit both alike
            elapsed = step(model, batch, target, device)
            if rep >= args.warmup:
                times[name].append(elapsed)
    base = statistics.median(times["concat"])
    print(f"ResNet-18 feature map, {args.size}x{args.size}, batch {args.batch}, forward+backward,"
          f" median of {args.reps} on {device.type} ({torch.get_num_threads()} threads)")
    print(f"{'fusion':<10} {'median ms':>10} {'min ms':>8} {'vs concat':>10}")
    for name, values in times.items():
        median = statistics.median(values)
        print(f"{name:<10} {median * 1e3:>10.1f} {min(values) * 1e3:>8.1f} {median / base:>9.3f}x")
    ratio = statistics.median(times["attention"]) / base
    verdict = "within" if ratio <= 1.10 else "OVER"
    print(f"attention / concat = {ratio:.3f}x ({verdict} the 1.10x target)")


if __name__ == "__main__":
    main()

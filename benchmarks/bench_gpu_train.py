"""GPU training throughput: `polymodal.train` (ResNet-50, 224 px, mixed precision) against a bare
timm training loop of the same network on the same device.

The bare loop trains `timm.create_model("resnet50", num_classes=2)` on one in-memory batch under
autocast. The engine trains an image-only spec (timm resnet50 backbone + classification head)
from a table of uint8 `.npy` files with data-loading workers. Two figures for it: the last
epoch's rows/s as its log shows it (with the start of the epoch, when the GPU waits for the first
batches), and the steady rate over that epoch's later steps. Synthetic data, no downloads.

    python benchmarks/bench_gpu_train.py --device cuda [--precision bf16] [--rows 8192] [--workers 12]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

import polymodal

from _timing import parse_args
from common import write_table


def bare_timm(device: torch.device, dtype: torch.dtype, batch: int, steps: int, channels_last: bool,
              name: str = "resnet50", size: int = 224) -> float:
    import timm

    model = timm.create_model(name, num_classes=2).to(device).train()
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    images = torch.randn(batch, 3, size, size, device=device)
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    target = torch.randint(0, 2, (batch,), device=device)

    def step():
        with torch.autocast(device.type, dtype=dtype):
            loss = torch.nn.functional.cross_entropy(model(images), target)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()

    for _ in range(5):
        step()
    torch.cuda.synchronize(device) if device.type == "cuda" else None
    started = time.perf_counter()
    for _ in range(steps):
        step()
    torch.cuda.synchronize(device) if device.type == "cuda" else None
    return steps * batch / (time.perf_counter() - started)


def engine(table: Path, out: Path, device: str, precision: str, batch: int, epochs: int,
           workers: int, channels_last: bool, model: str = "resnet50") -> tuple[float, float]:
    """(the last epoch's rows/s, its steady rows/s from its 6th step to its last)."""
    spec = {
        "name": "gpu_bench",
        "inputs": {"photo": {"adapter": {"type": "image", "channels": 3, "column": "photo",
                                         "mean": [0.5] * 3, "std": [0.25] * 3},
                             "backbone": {"type": "timm", "model": model}}},
        "heads": {"label": {"type": "classification", "classes": 2}},
        "training": {"epochs": epochs, "batch_size": batch, "val_fraction": 0.0,
                     "schedule": "none", "precision": precision, "device": device,
                     "workers": workers, "channels_last": channels_last},
    }
    rows = sum(1 for _ in table.open()) - 1
    last_step = -(-rows // batch) - 1 - (rows % batch == 1)  # a 1-row last batch is dropped
    marks: list[float] = []

    def mark(epoch: int, step: int) -> None:
        # Only these two steps wait for the GPU, so the steps between run as they would unwatched.
        if epoch == epochs and step in (5, last_step):
            if torch.device(device).type == "cuda":
                torch.cuda.synchronize()
            marks.append(time.perf_counter())

    result = polymodal.train(spec, table, out / "gpu.safetensors", progress=False, on_step=mark)
    return result.history[-1]["rows_per_s"], (last_step - 5) * batch / (marks[1] - marks[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--precision", choices=["bf16", "fp16"], default="bf16")
    parser.add_argument("--rows", type=int, default=8192)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--workers", type=int, default=12)
    parser.add_argument("--no-channels-last", action="store_true")
    parser.add_argument("--model", default="resnet50", help="timm model of both loops.")
    parser.add_argument("--size", type=int, default=224, help="Image size in px.")
    # The smoke run trains on the CPU: 16 rows at batch 2 still reach the 6th step it times.
    args = parse_args(parser, device="cpu", model="test_resnet", size=16, rows=16, batch=2,
                      epochs=1, steps=1, workers=0)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("bench_gpu_train: no CUDA GPU here; run it on a GPU machine (--device cuda)")
        return
    dtype = torch.bfloat16 if args.precision == "bf16" else torch.float16
    channels_last = not args.no_channels_last
    torch.backends.cudnn.benchmark = True
    bare = bare_timm(device, dtype, args.batch, args.steps, channels_last, args.model, args.size)
    print(f"bare timm loop: {bare:.1f} images/s", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        table = write_table(Path(tmp), args.rows, args.size, "npy")
        epoch_rate, steady = engine(table, Path(tmp), args.device, args.precision, args.batch, args.epochs,
                      args.workers, channels_last, args.model)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"\n{args.model}, {args.size} px, batch {args.batch}, {args.precision}, {name}")
    print(f"{'bare timm loop (in-memory batch)':40s} {bare:9.1f} images/s")
    print(f"{'polymodal train, whole last epoch':40s} {epoch_rate:9.1f} images/s  ({epoch_rate / bare:.0%})")
    print(f"{'polymodal train, steady (step 6 on)':40s} {steady:9.1f} images/s  ({steady / bare:.0%})")


if __name__ == "__main__":
    main()

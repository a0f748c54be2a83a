"""Training throughput: `polymodal.train` against a hand-written PyTorch loop, same model, same
in-memory data.

ResNet-18 (timm) + MLP over two categorical and two numerical columns, 64 px, batch 64, CPU.
The data is a dict of columns held in memory, its image cells uint8 arrays. The hand-written
loop gets it already encoded (float tensors, category ids) and shuffles batches out of it; the
engine gets the raw columns and encodes every batch itself (scaling, normalising, vocabulary
lookups), so its figure includes that work. Runs alternate, round after round, and each figure
is the median over rounds; the engine's is the rows/s of its last epoch (the first warms up and,
with compile, compiles). A hand-written bf16 + channels_last loop shows what the CPU itself gains
from bf16, the ceiling for the engine's bf16 figures.

    python benchmarks/bench_train.py [--rows 512] [--rounds 3] [--workers 0] [--skip-compile]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import polymodal
from polymodal._data.binding import Binding
from polymodal._data.table import read_table

from _timing import parse_args
from common import spec

SIZE, BATCH, MODEL = 64, 64, "resnet18"


def in_memory_columns(rows: int, seed: int = 0) -> dict[str, list]:
    rng = np.random.default_rng(seed)
    return {
        "photo": [rng.integers(0, 256, (3, SIZE, SIZE), dtype=np.uint8) for _ in range(rows)],
        "make": [f"m{v}" for v in rng.integers(0, 20, rows)],
        "color": [f"c{v}" for v in rng.integers(0, 8, rows)],
        "age": rng.normal(size=rows).tolist(),
        "mileage": rng.normal(size=rows).tolist(),
        "label": rng.integers(0, 2, rows).tolist(),
    }


def hand_written_epoch(model: torch.nn.Module, inputs: dict, target: torch.Tensor,
                       optimizer: torch.optim.Optimizer, generator: torch.Generator,
                       bf16_channels_last: bool = False) -> float:
    """Images/s of one epoch of a plain PyTorch loop over pre-encoded tensors (optionally in
    bf16 autocast with channels-last images: what the hardware gains without the engine)."""
    model.train()
    head = next(iter(model.heads))
    order = torch.randperm(len(target), generator=generator)
    started = time.perf_counter()
    for start in range(0, len(target) - BATCH + 1, BATCH):
        index = order[start:start + BATCH]
        photo = inputs["photo"][index]
        if bf16_channels_last:
            photo = photo.contiguous(memory_format=torch.channels_last)
        batch = {"photo": photo, "report": {k: v[index] for k, v in inputs["report"].items()}}
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16_channels_last):
            output = model(batch)[head]
        loss = torch.nn.functional.cross_entropy(output.float(), target[index])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return (len(target) // BATCH) * BATCH / (time.perf_counter() - started)


def engine_rows_per_s(columns: dict, out: Path, **training) -> float:
    result = polymodal.train(spec(MODEL, SIZE, BATCH, 2, optimizer="adamw", **training),
                             columns, out / "bench.safetensors", progress=False)
    return result.history[-1]["rows_per_s"]


def main() -> None:
    global SIZE, BATCH, MODEL  # the loops read them; the options (and --smoke) set them
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--skip-compile", action="store_true")
    parser.add_argument("--size", type=int, default=SIZE, help="Image size in px.")
    parser.add_argument("--batch", type=int, default=BATCH)
    parser.add_argument("--model", default=MODEL, help="timm backbone of every run.")
    args = parse_args(parser, rows=16, rounds=1, skip_compile=True, size=16, batch=8,
                      model="test_resnet")
    SIZE, BATCH, MODEL = args.size, args.batch, args.model
    torch.manual_seed(0)
    columns = in_memory_columns(args.rows)

    model = polymodal.build(spec(MODEL, SIZE, BATCH, 1))
    binding = Binding(model.spec)
    table = read_table(columns)
    encoded = binding.encode(table, binding.fit(table), True)
    inputs, target = encoded.inputs, encoded.targets["label"][0]
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-4)  # the engine's defaults
    generator = torch.Generator().manual_seed(0)
    hand_written_epoch(model, inputs, target, optimizer, generator)  # warm-up
    # Its own copy, kept channels-last, so neither loop converts the other's weights.
    model_bf16 = polymodal.build(spec(MODEL, SIZE, BATCH, 1))
    model_bf16.load_state_dict(model.state_dict())
    model_bf16.to(memory_format=torch.channels_last)
    optimizer_bf16 = torch.optim.AdamW(model_bf16.parameters(), lr=1e-3, weight_decay=1e-4)
    hand_written_epoch(model_bf16, inputs, target, optimizer_bf16, generator, True)  # warm-up

    runs = {"polymodal train, fp32": {"precision": "fp32"}, "polymodal train, bf16": {"precision": "bf16"},
            "polymodal train, bf16 + channels_last": {"precision": "bf16", "channels_last": True}}
    if not args.skip_compile:
        runs["polymodal train, bf16 + compile"] = {"precision": "bf16", "compile": True}
    figures: dict[str, list[float]] = {"hand-written loop, fp32": [],
                                       "hand-written loop, bf16 + channels_last": []}
    with tempfile.TemporaryDirectory() as tmp:
        for round_ in range(1, args.rounds + 1):
            for name, options in runs.items():
                figures["hand-written loop, fp32"].append(
                    hand_written_epoch(model, inputs, target, optimizer, generator))
                figures["hand-written loop, bf16 + channels_last"].append(
                    hand_written_epoch(model_bf16, inputs, target, optimizer_bf16, generator, True))
                try:
                    value = engine_rows_per_s(columns, Path(tmp), workers=args.workers, **options)
                except Exception as exc:  # noqa: BLE001 - a missing compiler must not hide the rest
                    print(f"{name}: failed ({type(exc).__name__}: {str(exc).splitlines()[0]})")
                    continue
                figures.setdefault(name, []).append(value)
            print(f"round {round_}: " + ", ".join(f"{n} {v[-1]:.0f}" for n, v in figures.items()),
                  flush=True)
    base = statistics.median(figures["hand-written loop, fp32"])
    print(f"\n{MODEL} + MLP, {SIZE} px, batch {BATCH}, CPU ({torch.get_num_threads()} threads),"
          f" {args.rows} rows in memory, median of {args.rounds} rounds")
    print(f"{'run':42s} {'images/s':>9s} {'vs hand fp32':>13s}")
    for name, values in figures.items():
        value = statistics.median(values)
        print(f"{name:42s} {value:9.1f} {value / base:12.2f}x")


if __name__ == "__main__":
    main()

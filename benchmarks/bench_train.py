"""Training throughput: `polymodal.train` against a hand-written PyTorch loop, same model.

ResNet-18 (timm) + MLP over two categorical and two numerical columns, 64 px, batch 64, CPU.
The hand-written loop trains on one in-memory batch (no data loading at all); the engine trains
from a table of uint8 `.npy` image files (page-cached), so its figure includes reading, encoding
and moving every batch. The engine's rows/s is that of its last epoch (the first warms up).

    python benchmarks/bench_train.py [--rows 512] [--epochs 2] [--steps 8] [--workers 1]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch

import polymodal
from polymodal.data.binding import Binding
from polymodal.data.table import read_table

from common import hand_written_steps, spec, write_table


def engine_rows_per_s(table: Path, out: Path, **training) -> float:
    result = polymodal.train(spec("resnet18", 64, 64, training.pop("epochs"), **training), table,
                             out / "bench.safetensors", progress=False)
    return result.history[-1]["rows_per_s"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=512)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--steps", type=int, default=8, help="Timed steps of the hand loop.")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--skip-compile", action="store_true")
    args = parser.parse_args()
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        table = write_table(folder, args.rows, 64, "npy")
        built = polymodal.build(spec("resnet18", 64, 64, 1))
        state = Binding(built.spec).fit(read_table(table))
        encoded = Binding(built.spec).encode(read_table(table).take(range(64)), state, True)
        target = encoded.targets["label"][0]
        device = torch.device("cpu")
        figures = {"hand-written loop, fp32": hand_written_steps(built, encoded.inputs, target,
                                                                args.steps, device)}
        print(f"hand-written loop fp32: {figures['hand-written loop, fp32']:.1f} images/s", flush=True)
        runs = {"polymodal train, fp32": {}, "polymodal train, bf16": {"precision": "bf16"},
                "polymodal train, bf16 + channels_last": {"precision": "bf16", "channels_last": True}}
        if not args.skip_compile:
            runs["polymodal train, bf16 + compile"] = {"precision": "bf16", "compile": True}
        for name, options in runs.items():
            try:
                figures[name] = engine_rows_per_s(table, folder, epochs=args.epochs,
                                                  workers=args.workers, **options)
            except Exception as exc:  # noqa: BLE001 - a missing compiler must not hide the rest
                print(f"{name}: failed ({type(exc).__name__}: {str(exc).splitlines()[0]})")
                continue
            print(f"{name}: {figures[name]:.1f} images/s", flush=True)
    base = figures["hand-written loop, fp32"]
    print(f"\nResNet-18 + MLP, 64 px, batch 64, CPU ({torch.get_num_threads()} threads)")
    print(f"{'run':42s} {'images/s':>9s} {'vs hand fp32':>13s}")
    for name, value in figures.items():
        print(f"{name:42s} {value:9.1f} {value / base:12.2f}x")


if __name__ == "__main__":
    main()

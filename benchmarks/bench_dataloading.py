"""Data loading alone against training: decode + augment + tabular encoding from PNG files on
disk, in the engine's own loader, compared with the training throughput of the model at that
size (ResNet-18 + MLP, 64 px, batch 64, CPU). Loading should be several times faster, so that
it never is the bottleneck.

    python benchmarks/bench_dataloading.py [--rows 512] [--workers 0 2] [--format npy --size 224]

With ``--no-training`` it prints loading alone: the rate one worker sustains at a size whose
training runs on a GPU (224 px uint8 ``.npy``, batch 128) tells how many workers that GPU needs.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import polymodal
from polymodal._data.binding import Binding
from polymodal._data.loader import BatchDataset, BatchPlan, loader
from polymodal._data.table import read_table

from common import hand_written_steps, spec, write_table
from _timing import parse_args


def loading_rows_per_s(table_path: Path, workers: int, size: int, batch: int) -> float:
    every_augmentation = {"hflip": True, "vflip": True, "rot90": True, "crop_padding": 4,
                          "noise_std": 0.01}
    model_spec = polymodal.load_spec(spec("resnet18", size, batch, 1, augment=every_augmentation))
    table = read_table(table_path)
    binding = Binding(model_spec)
    state = binding.fit(table)
    dataset = BatchDataset(table, binding, state, targets=True, seed=0, augment=True)
    order = np.random.default_rng(0).permutation(len(table))
    batches = [order[i:i + batch] for i in range(0, len(order), batch)]
    for _ in loader(dataset, BatchPlan(0, batches[:2]), workers):  # warm-up (and worker start)
        pass
    started = time.perf_counter()
    rows = sum(len(e.positions) for e in loader(dataset, BatchPlan(1, batches), workers))
    return rows / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=512)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--format", choices=["png", "npy"], default="png")
    parser.add_argument("--no-training", action="store_true")
    parser.add_argument("--model", default="resnet18", help="timm backbone of the training step.")
    args = parse_args(parser, rows=16, size=16, batch=8, workers=[0], steps=1, model="test_resnet")
    with tempfile.TemporaryDirectory() as tmp:
        table = write_table(Path(tmp), args.rows, args.size, args.format)
        loading = {w: loading_rows_per_s(table, w, args.size, args.batch) for w in args.workers}
        if args.no_training:
            print(f"{args.size} px {args.format} files, batch {args.batch}, CPU")
            for workers, value in loading.items():
                print(f"{f'load+augment+encode, {workers} worker(s)':40s} {value:9.1f} rows/s")
            return
        built = polymodal.build(spec(args.model, args.size, args.batch, 1))
        binding = Binding(built.spec)
        state = binding.fit(read_table(table))
        encoded = binding.encode(read_table(table).take(range(args.batch)), state, True)
        training = hand_written_steps(built, encoded.inputs, encoded.targets["label"][0],
                                      args.steps, torch.device("cpu"))
    print(f"{args.size} px {args.format} files, batch {args.batch}, CPU ({torch.get_num_threads()} threads)")
    print(f"{'':40s} {'rows/s':>9s} {'vs training':>12s}")
    print(f"{'training step (ResNet-18 + MLP, fp32)':40s} {training:9.1f} {1.0:11.2f}x")
    for workers, value in loading.items():
        label = f"load+augment+encode, {workers} worker(s)"
        print(f"{label:40s} {value:9.1f} {value / training:11.2f}x")


if __name__ == "__main__":
    main()

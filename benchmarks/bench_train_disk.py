"""Training from images on disk, end to end: polymodal at its default precision, against
pytorch-widedeep 1.7.0 and a hand-written PyTorch loop whose Dataset decodes each PNG on access.

The setting (issue: 1,879 rows of 64 px satellite patches): torchvision ResNet-18 (random
initialisation) on 64 px RGB PNG files, a categorical and 5 numerical columns through an MLP of
(128, 64), concatenation, a hidden layer of 256, a 10-class head; batch 64, AdamW at lr 1e-3
(weight decay 1e-4), no augmentation, no validation split, CPU with ``--threads`` threads. The
patches are generated (smooth fields with fine texture, tinted by class, so that they compress
as real satellite patches do), since the real table is not distributed with polymodal.

Each tool's run is a process of its own (pytorch-widedeep's in the interpreter given with
``--widedeep-python``, an environment of its own), so peak memory (the process's maximum
resident size, and the largest of its data-loading worker processes) is each tool's alone; the tools take turns round by round, so drift of the
machine's load hits each alike. Timed: end to end (from the table on disk to a trained model,
the libraries already imported) and the training loop alone (the tool's own epochs).

    python benchmarks/bench_train_disk.py [--rows 1879] [--epochs 2 10] [--rounds 2]
        [--threads 2] [--widedeep-python /path/to/env/bin/python]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _timing import parse_args  # noqa: E402

CLASSES = ["annual_crop", "forest", "herbaceous", "highway", "industrial", "pasture",
           "permanent_crop", "residential", "river", "sea_lake"]
NUMERICAL = ["b1", "b2", "b3", "b4", "b5"]
TOOLS = ("polymodal", "polymodal-decoding", "pytorch-widedeep", "hand-written")
GOALS = {2: 1.2, 10: 1.5}  # polymodal against pytorch-widedeep, end to end, by epochs


def _patch(rng: np.random.Generator, label: int, size: int) -> np.ndarray:
    coarse = rng.normal(0, 1, (max(size // 8, 1), max(size // 8, 1), 3))
    field = np.kron(coarse, np.ones((8, 8, 1)))[:size, :size]
    fine = rng.normal(0, 0.35, (size, size, 3))
    tint = np.array([(label * 37) % 90, (label * 53) % 90, (label * 71) % 90]) + 60
    return (tint + 25 * field + 20 * fine).clip(0, 255).astype(np.uint8)


def write_table(folder: Path, rows: int, size: int, seed: int = 0) -> Path:
    """``rows`` PNG patches of ``size`` px and a table: image path, region, b1..b5, class."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    records = []
    for i in range(rows):
        label = int(rng.integers(0, len(CLASSES)))
        path = f"images/{i:05d}.png"
        Image.fromarray(_patch(rng, label, size)).save(folder / path)
        records.append([path, f"r{rng.integers(0, 12)}",
                        *[f"{rng.normal() + 0.1 * label:.4f}" for _ in NUMERICAL], CLASSES[label]])
    table = folder / "table.csv"
    with table.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image", "region", *NUMERICAL, "land_cover"])
        writer.writerows(records)
    return table


# -- each tool, run in a process of its own (``--tool``) ------------------------------------------

def run_polymodal(table: Path, epochs: int, out: Path, keep: bool = True) -> dict:
    """polymodal as a user runs it; without ``keep``, with its decoded rows not kept in memory
    (``cache_mib: 0``: every epoch reads and decodes its files, as before they were kept)."""
    import polymodal

    spec = {
        "name": "land_cover",
        "inputs": {
            "image": {"adapter": {"type": "image", "channels": 3, "column": "image"},
                      "backbone": {"type": "torchvision", "model": "resnet18"}},
            "record": {"adapter": {"type": "tabular", "categorical": {"region": "auto"},
                                   "numerical": NUMERICAL},
                       "backbone": {"type": "mlp", "hidden": [128, 64]}},
        },
        "fusion": {"type": "concat", "hidden": [256]},
        "heads": {"land_cover": {"type": "classification"}},
        "training": {"epochs": epochs, "batch_size": 64, "lr": 1e-3, "weight_decay": 1e-4,
                     "schedule": "none", "val_fraction": 0.0,  # precision: the default
                     **({} if keep else {"cache_mib": 0})},
    }
    said: list[str] = []
    started = time.perf_counter()
    result = polymodal.train(spec, table, out / "model.safetensors", progress=False,
                             log=said.append)
    seconds = time.perf_counter() - started
    return {"end_to_end": seconds, "loop": sum(r["seconds"] for r in result.history),
            "said": [line for line in said if line.startswith(("precision", "data:"))]}


def run_widedeep(table: Path, epochs: int, out: Path) -> dict:
    import pandas as pd
    import torch
    from pytorch_widedeep import Trainer
    from pytorch_widedeep.models import TabMlp, Vision, WideDeep
    from pytorch_widedeep.preprocessing import ImagePreprocessor, TabPreprocessor

    started = time.perf_counter()
    frame = pd.read_csv(table)
    tab = TabPreprocessor(cat_embed_cols=["region"], continuous_cols=NUMERICAL, verbose=0)
    images = ImagePreprocessor(img_col="image", img_path=str(table.parent), width=64, height=64,
                               verbose=0)
    x_tab, x_img = tab.fit_transform(frame), images.fit_transform(frame)
    target = frame["land_cover"].map({c: i for i, c in enumerate(CLASSES)}).to_numpy()
    torch.manual_seed(0)
    deeptabular = TabMlp(column_idx=tab.column_idx, cat_embed_input=tab.cat_embed_input,
                         continuous_cols=NUMERICAL, mlp_hidden_dims=[128, 64], mlp_dropout=0.0)
    deepimage = Vision(pretrained_model_setup={"resnet18": None}, n_trainable=None)
    model = WideDeep(deeptabular=deeptabular, deepimage=deepimage, head_hidden_dims=[256],
                     pred_dim=len(CLASSES))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-4)
    trainer = Trainer(model, objective="multiclass", optimizers=optimizer, seed=0, verbose=0)
    fitted = time.perf_counter()
    trainer.fit(X_tab=x_tab, X_img=x_img, target=target, n_epochs=epochs, batch_size=64)
    done = time.perf_counter()
    return {"end_to_end": done - started, "loop": done - fitted}


def run_hand_written(table: Path, epochs: int, out: Path) -> dict:
    """What a user writes with torch and torchvision alone: a Dataset that decodes each PNG
    when a row is asked for, a DataLoader, a model of the same parts, the usual loop."""
    import torch
    import torchvision
    from PIL import Image
    from torch import nn

    started = time.perf_counter()
    with table.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    regions = {r: i for i, r in enumerate(sorted({row["region"] for row in rows}))}
    numbers = np.array([[float(row[c]) for c in NUMERICAL] for row in rows], np.float32)
    numbers = (numbers - numbers.mean(0)) / numbers.std(0)
    labels = torch.tensor([CLASSES.index(row["land_cover"]) for row in rows])
    codes = torch.tensor([regions[row["region"]] for row in rows])
    mean, std = torch.tensor([0.5, 0.5, 0.5]).view(3, 1, 1), torch.tensor([0.25] * 3).view(3, 1, 1)

    class Patches(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return len(rows)

        def __getitem__(self, i: int):
            with Image.open(table.parent / rows[i]["image"]) as image:
                pixels = torch.from_numpy(np.asarray(image.convert("RGB"))).permute(2, 0, 1)
            return ((pixels.float() / 255 - mean) / std, codes[i], torch.from_numpy(numbers[i]),
                    labels[i])

    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.image = torchvision.models.resnet18()
            self.image.fc = nn.Identity()
            self.embed = nn.Embedding(len(regions), 8)
            self.mlp = nn.Sequential(nn.Linear(8 + len(NUMERICAL), 128), nn.ReLU(),
                                     nn.Linear(128, 64), nn.ReLU())
            self.head = nn.Sequential(nn.Linear(512 + 64, 256), nn.ReLU(),
                                      nn.Linear(256, len(CLASSES)))

        def forward(self, image, code, number):
            record = self.mlp(torch.cat([self.embed(code), number], 1))
            return self.head(torch.cat([self.image(image), record], 1))

    torch.manual_seed(0)
    model = Model()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-4)
    batches = torch.utils.data.DataLoader(Patches(), batch_size=64, shuffle=True)
    looped = time.perf_counter()
    model.train()
    for _ in range(epochs):
        for image, code, number, label in batches:
            loss = nn.functional.cross_entropy(model(image, code, number), label)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    done = time.perf_counter()
    return {"end_to_end": done - started, "loop": done - looped}


def tool_main(tool: str, table: Path, epochs: int, threads: int) -> None:
    """One run of one tool in this process; prints its figures as one JSON line."""
    import resource

    import torch
    import torchvision  # noqa: F401 - imported before timing, by every tool alike

    torch.set_num_threads(threads)
    runs = {"polymodal": run_polymodal, "pytorch-widedeep": run_widedeep,
            "hand-written": run_hand_written,
            "polymodal-decoding": lambda *a: run_polymodal(*a, keep=False)}
    if tool == "pytorch-widedeep":
        import pytorch_widedeep  # noqa: F401
    else:
        import polymodal  # noqa: F401
    with tempfile.TemporaryDirectory() as out:
        figures = runs[tool](table, epochs, Path(out))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    # Data-loading worker processes (pytorch-widedeep starts one per core): the largest one's
    child = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    print(json.dumps({**figures, "peak_mib": peak / 1024, "child_peak_mib": child / 1024}))


# -- the comparison -------------------------------------------------------------------------------

def _one(python: str, tool: str, table: Path, epochs: int, threads: int) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    done = subprocess.run([python, __file__, "--tool", tool, "--table", str(table),
                           "--epochs", str(epochs), "--threads", str(threads)],
                          capture_output=True, text=True, env=env, timeout=7200)
    if done.returncode != 0:
        raise SystemExit(f"{tool} failed:\n{done.stdout}\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _widedeep_python(args) -> str | None:
    python = args.widedeep_python
    if python is None:
        return None
    check = subprocess.run([python, "-c", "import pytorch_widedeep, torch;"
                            " print(pytorch_widedeep.__version__, torch.__version__)"],
                           capture_output=True, text=True)
    if check.returncode != 0:
        raise SystemExit(f"--widedeep-python {python}: cannot import pytorch_widedeep there")
    print(f"pytorch-widedeep {check.stdout.strip()} (widedeep, torch) in {python}")
    return python


def _median_total(runs: dict, tool: str) -> float:
    return statistics.median(f["end_to_end"] for f in runs[tool])


def _ratio(runs: dict, other: str, total: float) -> str:
    return f"{_median_total(runs, other) / total:.2f}x" if other in runs else "-"


def _report(results: dict, epochs_list: list[int], rows: int) -> None:
    print(f"\n{'tool':18} {'epochs':>6} {'end to end s':>13} {'loop s':>8} {'rows/s':>8}"
          f" {'vs widedeep':>12} {'vs hand-written':>16} {'peak RSS MiB':>13} {'worker MiB':>11}")
    for epochs in epochs_list:
        runs = results[epochs]
        for tool, figures in runs.items():
            total = _median_total(runs, tool)
            loop = statistics.median(f["loop"] for f in figures)

            print(f"{tool:18} {epochs:6d} {total:13.1f} {loop:8.1f} {rows * epochs / total:8.1f}"
                  f" {_ratio(runs, 'pytorch-widedeep', total):>12} {_ratio(runs, 'hand-written', total):>16}"
                  f" {max(f['peak_mib'] for f in figures):13.0f}"
                  f" {max(f.get('child_peak_mib', 0) for f in figures):11.0f}")
    for epochs in epochs_list:
        runs = results[epochs]
        if "polymodal" not in runs:
            continue
        mine = statistics.median(f["end_to_end"] for f in runs["polymodal"])
        for other, goal in (("pytorch-widedeep", GOALS.get(epochs)), ("hand-written", 1.0)):
            if other in runs and goal is not None:
                theirs = statistics.median(f["end_to_end"] for f in runs[other])
                verdict = "meets" if theirs / mine >= goal else "MISSES"
                print(f"{epochs} epochs: polymodal {theirs / mine:.2f}x {other} end to end,"
                      f" {verdict} the goal of {goal:.1f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1879)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--epochs", type=int, nargs="+", default=[2, 10])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--widedeep-python", help="An interpreter with pytorch-widedeep 1.7.0"
                        " installed (an environment of its own); without it, widedeep is left out.")
    parser.add_argument("--tools", nargs="+", choices=TOOLS, default=list(TOOLS),
                        help="The tools to run (polymodal-decoding: cache_mib 0).")
    parser.add_argument("--tool", choices=TOOLS, help=argparse.SUPPRESS)
    parser.add_argument("--table", type=Path, help=argparse.SUPPRESS)
    args = parse_args(parser, rows=96, epochs=[1], rounds=1)
    if args.tool:
        tool_main(args.tool, args.table, args.epochs[0], args.threads)
        return
    import torch

    widedeep = _widedeep_python(args)
    tools = [t for t in args.tools if t != "pytorch-widedeep" or widedeep]
    print(f"CPU capability {torch.backends.cpu.get_cpu_capability()}, {os.cpu_count()} cores,"
          f" {args.threads} threads per tool; load average at the start"
          f" {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    with tempfile.TemporaryDirectory() as tmp:
        table = write_table(Path(tmp), args.rows, args.size)
        results: dict[int, dict[str, list[dict]]] = {e: {t: [] for t in tools} for e in args.epochs}
        for round_ in range(args.rounds):
            order = tools if round_ % 2 == 0 else tools[::-1]
            for epochs in args.epochs:
                for tool in order:
                    python = widedeep if tool == "pytorch-widedeep" else sys.executable
                    figures = _one(python, tool, table, epochs, args.threads)
                    results[epochs][tool].append(figures)
                    print(f"round {round_ + 1}, {epochs} epochs, {tool}: {figures['end_to_end']:.1f} s"
                          f" end to end, {figures['loop']:.1f} s loop, peak {figures['peak_mib']:.0f}"
                          f" MiB" + "".join(f"\n    {line}" for line in figures.get("said", [])),
                          flush=True)
    print(f"\n{args.rows} rows of {args.size} px PNG patches (generated); ResNet-18 + MLP(128, 64),"
          f" concat 256, batch 64, AdamW 1e-3; medians over {args.rounds} round(s); load average"
          f" at the end {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    _report(results, args.epochs, args.rows)


if __name__ == "__main__":
    main()

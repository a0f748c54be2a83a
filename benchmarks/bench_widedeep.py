"""polymodal against pytorch-widedeep: the same fused model on the same data, side by side.

The parts dataset of the demo (examples/parts: a decision that needs both a 32 px photo and
the inspection record). Both tools train the same architecture with the same settings: a
randomly initialised torchvision ResNet-18 on the photo, categorical embeddings plus the
numerical columns through an MLP of 32 on the record, concatenation, a hidden layer of 64, the
decision head; AdamW at lr 3e-3, batch 32, the same epochs, no augmentation, CPU. Printed:
training wall time and rows/s, and accuracy, balanced accuracy and AUROC on the held-out table.

Runs only where pytorch-widedeep is installed beside polymodal (`pip install pytorch-widedeep`
into a separate environment; it brings scikit-learn, pandas, opencv and more):

    python benchmarks/bench_widedeep.py [--epochs 6] [--seeds 3] [--threads 2]
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import polymodal
from _timing import parse_args
from polymodal_plugins._metrics import classification_metrics

HERE = Path(__file__).resolve().parent
PARTS = HERE.parent / "examples" / "parts"
CATEGORICAL, NUMERICAL, TARGET = ["material", "site"], ["reading", "weight_kg"], "decision"


def make_data(folder: Path, train_rows: int = 500, test_rows: int = 300) -> tuple[Path, Path]:
    loader = importlib.util.spec_from_file_location("make_data", PARTS / "make_data.py")
    module = importlib.util.module_from_spec(loader)
    loader.loader.exec_module(module)
    return module.generate(folder, train_rows, test_rows)


def run_polymodal(train: Path, test: Path, out: Path, epochs: int, seed: int) -> tuple[float, dict]:
    spec = {
        "name": "parts_bench",
        "inputs": {
            "photo": {"adapter": {"type": "image", "channels": 3, "column": "photo"},
                      "backbone": {"type": "torchvision", "model": "resnet18"}},
            "record": {"adapter": {"type": "tabular", "categorical": CATEGORICAL,
                                   "numerical": NUMERICAL},
                       "backbone": {"type": "mlp", "hidden": [32]}},
        },
        "fusion": {"type": "concat", "hidden": [64]},
        "heads": {TARGET: {"type": "classification"}},
        "training": {"epochs": epochs, "batch_size": 32, "lr": 3e-3, "schedule": "none",
                     "val_fraction": 0.0, "seed": seed},
    }
    started = time.perf_counter()
    polymodal.train(spec, train, out / "polymodal.safetensors", progress=False)
    seconds = time.perf_counter() - started
    columns = polymodal.predict(out / "polymodal.safetensors", test)["columns"]
    return seconds, {"reject": np.array(columns[f"{TARGET}_prob_reject"])}


def run_widedeep(train: Path, test: Path, epochs: int, seed: int) -> tuple[float, dict]:
    import pandas as pd
    from pytorch_widedeep import Trainer
    from pytorch_widedeep.models import TabMlp, Vision, WideDeep
    from pytorch_widedeep.preprocessing import ImagePreprocessor, TabPreprocessor

    frames = {name: pd.read_csv(path) for name, path in (("train", train), ("test", test))}
    tab = TabPreprocessor(cat_embed_cols=CATEGORICAL, continuous_cols=NUMERICAL, verbose=0)
    images = ImagePreprocessor(img_col="photo", img_path=str(train.parent), width=32, height=32,
                               verbose=0)
    started = time.perf_counter()
    x_tab, x_img = tab.fit_transform(frames["train"]), images.fit_transform(frames["train"])
    target = (frames["train"][TARGET] == "reject").to_numpy().astype(np.float32)
    torch.manual_seed(seed)
    deeptabular = TabMlp(column_idx=tab.column_idx, cat_embed_input=tab.cat_embed_input,
                         continuous_cols=NUMERICAL, mlp_hidden_dims=[32], mlp_dropout=0.0)
    # {"resnet18": None}: torchvision's ResNet-18 without downloaded weights, like polymodal's.
    deepimage = Vision(pretrained_model_setup={"resnet18": None}, n_trainable=None)
    model = WideDeep(deeptabular=deeptabular, deepimage=deepimage, head_hidden_dims=[64],
                     pred_dim=1)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
    trainer = Trainer(model, objective="binary", optimizers=optimizer, seed=seed, verbose=0)
    trainer.fit(X_tab=x_tab, X_img=x_img, target=target, n_epochs=epochs, batch_size=32)
    seconds = time.perf_counter() - started
    probabilities = trainer.predict_proba(X_tab=tab.transform(frames["test"]),
                                          X_img=images.transform(frames["test"]), batch_size=256)
    return seconds, {"reject": np.asarray(probabilities)[:, 1]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--rows", type=int, nargs=2, default=[500, 300],
                        help="Training and held-out rows of the generated parts data.")
    args = parse_args(parser, epochs=1, seeds=1, rows=[48, 24])
    tools = ["polymodal", "pytorch-widedeep"]
    if importlib.util.find_spec("pytorch_widedeep") is None:
        print("bench_widedeep: pytorch-widedeep is not installed here; install it beside"
              " polymodal in a separate environment to compare")
        if not args.smoke:
            return
        tools = ["polymodal"]  # the smoke run still checks polymodal's half
    torch.set_num_threads(args.threads)
    if "pytorch-widedeep" in tools:
        import pytorch_widedeep  # noqa: F401 - both tools' imports happen before any timing
    import torchvision  # noqa: F401
    with tempfile.TemporaryDirectory() as tmp:
        train, test = make_data(Path(tmp) / "data", *args.rows)
        import pandas as pd

        truth = (pd.read_csv(test)[TARGET] == "reject").to_numpy().astype(np.int64)
        rows = len(pd.read_csv(train))
        results: dict[str, list[tuple[float, dict]]] = {tool: [] for tool in tools}
        for seed in range(args.seeds):  # alternating, so that machine noise hits both alike
            results["polymodal"].append(run_polymodal(train, test, Path(tmp), args.epochs, seed))
            if "pytorch-widedeep" in results:
                results["pytorch-widedeep"].append(run_widedeep(train, test, args.epochs, seed))
    print(f"\nparts data: {rows} training rows, {len(truth)} held out; ResNet-18 (random init)"
          f" + MLP, concat, {args.epochs} epochs, batch 32, CPU ({args.threads} threads);"
          f" mean ± sd over {args.seeds} seeds")
    print(f"{'tool':18s} {'train s':>11s} {'rows/s':>10s} {'accuracy':>13s} {'bal. acc.':>13s}"
          f" {'AUROC':>13s}")
    for tool, runs in results.items():
        seconds = np.array([s for s, _ in runs])
        metrics = [classification_metrics(np.stack([1 - p["reject"], p["reject"]], axis=1), truth)
                   for _, p in runs]

        def spread(values) -> str:
            values = np.asarray(values, np.float64)
            return f"{values.mean():.3f} ± {values.std():.3f}"

        print(f"{tool:18s} {seconds.mean():6.1f} ± {seconds.std():2.0f}"
              f" {np.mean(rows * args.epochs / seconds):5.0f} ± {np.std(rows * args.epochs / seconds):2.0f}"
              f" {spread([m['accuracy'] for m in metrics]):>13s}"
              f" {spread([m['balanced_accuracy'] for m in metrics]):>13s}"
              f" {spread([m['auroc'] for m in metrics]):>13s}")
    sys.stdout.flush()


if __name__ == "__main__":
    main()

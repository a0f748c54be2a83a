"""polymodal against pytorch-widedeep: the same fused model on the same data, side by side.

The parts dataset of the demo (examples/parts: a decision that needs both a 32 px photo and
the inspection record). Both tools train the same architecture with the same settings: a
randomly initialised torchvision ResNet-18 on the photo, categorical embeddings plus the
numerical columns through an MLP of 32 on the record, concatenation, a hidden layer of 64, the
decision head; AdamW at lr 3e-3, batch 32, the same epochs, no augmentation, CPU. Printed:
training wall time and rows/s, and accuracy, balanced accuracy and AUROC on the held-out table.

Runs only where pytorch-widedeep is installed beside polymodal (`pip install pytorch-widedeep`
into a separate environment; it brings scikit-learn, pandas, opencv and more):

    python benchmarks/bench_widedeep.py [--epochs 6] [--threads 2]
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
from polymodal.training.metrics import classification_metrics

HERE = Path(__file__).resolve().parent
PARTS = HERE.parent / "examples" / "parts"
CATEGORICAL, NUMERICAL, TARGET = ["material", "site"], ["reading", "weight_kg"], "decision"


def make_data(folder: Path) -> tuple[Path, Path]:
    loader = importlib.util.spec_from_file_location("make_data", PARTS / "make_data.py")
    module = importlib.util.module_from_spec(loader)
    loader.loader.exec_module(module)
    return module.generate(folder)


def run_polymodal(train: Path, test: Path, out: Path, epochs: int) -> tuple[float, dict]:
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
                     "val_fraction": 0.0, "seed": 0},
    }
    started = time.perf_counter()
    polymodal.train(spec, train, out / "polymodal.safetensors", progress=False)
    seconds = time.perf_counter() - started
    columns = polymodal.predict(out / "polymodal.safetensors", test)["columns"]
    return seconds, {"reject": np.array(columns[f"{TARGET}_prob_reject"])}


def run_widedeep(train: Path, test: Path, epochs: int) -> tuple[float, dict]:
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
    deeptabular = TabMlp(column_idx=tab.column_idx, cat_embed_input=tab.cat_embed_input,
                         continuous_cols=NUMERICAL, mlp_hidden_dims=[32], mlp_dropout=0.0)
    # {"resnet18": None}: torchvision's ResNet-18 without downloaded weights, like polymodal's.
    deepimage = Vision(pretrained_model_setup={"resnet18": None}, n_trainable=None)
    model = WideDeep(deeptabular=deeptabular, deepimage=deepimage, head_hidden_dims=[64],
                     pred_dim=1)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
    trainer = Trainer(model, objective="binary", optimizers=optimizer, seed=0, verbose=0)
    trainer.fit(X_tab=x_tab, X_img=x_img, target=target, n_epochs=epochs, batch_size=32)
    seconds = time.perf_counter() - started
    probabilities = trainer.predict_proba(X_tab=tab.transform(frames["test"]),
                                          X_img=images.transform(frames["test"]), batch_size=256)
    return seconds, {"reject": np.asarray(probabilities)[:, 1]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    if importlib.util.find_spec("pytorch_widedeep") is None:
        print("bench_widedeep: pytorch-widedeep is not installed here; install it beside"
              " polymodal in a separate environment to compare")
        return
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        train, test = make_data(Path(tmp) / "data")
        import pandas as pd

        truth = (pd.read_csv(test)[TARGET] == "reject").to_numpy().astype(np.int64)
        rows = len(pd.read_csv(train))
        results = {"polymodal": run_polymodal(train, test, Path(tmp), args.epochs),
                   "pytorch-widedeep": run_widedeep(train, test, args.epochs)}
    print(f"\nparts data: {rows} training rows, {len(truth)} held out; ResNet-18 (random init)"
          f" + MLP, concat, {args.epochs} epochs, batch 32, CPU ({args.threads} threads)")
    print(f"{'tool':18s} {'train s':>8s} {'rows/s':>7s} {'accuracy':>9s} {'bal. acc.':>10s}"
          f" {'AUROC':>6s}")
    for tool, (seconds, scores) in results.items():
        p = scores["reject"]
        metrics = classification_metrics(np.stack([1 - p, p], axis=1), truth)
        print(f"{tool:18s} {seconds:8.1f} {rows * args.epochs / seconds:7.0f}"
              f" {metrics['accuracy']:9.3f} {metrics['balanced_accuracy']:10.3f}"
              f" {metrics['auroc']:6.3f}")
    sys.stdout.flush()


if __name__ == "__main__":
    main()

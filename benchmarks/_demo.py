"""The demo model (examples/parts/fused.yaml, trained as `make demo` trains it) for the serving
and int8 benchmarks: reused from ``runs/parts-demo`` when `make demo` made it, else trained."""

from __future__ import annotations

import importlib.util
from pathlib import Path

HERE = Path(__file__).resolve().parent
EXAMPLES = HERE.parent / "examples"


def _make_data():
    loader = importlib.util.spec_from_file_location("make_data", EXAMPLES / "parts" / "make_data.py")
    module = importlib.util.module_from_spec(loader)
    loader.loader.exec_module(module)
    return module


def demo_model(folder: Path, smoke: bool = False) -> tuple[Path, Path, Path]:
    """(model file, training table, held-out table) of the demo in ``folder``: the model
    `make demo` trains (``parts.safetensors``), trained here when missing. ``smoke``: a tiny
    one, trained for one epoch on a few rows (its figures mean nothing)."""
    import polymodal
    from polymodal._spec_files import read_spec_file

    folder = Path(folder)
    model = folder / "parts.safetensors"
    train, test = folder / "data" / "train.csv", folder / "data" / "test.csv"
    if smoke:
        train, test = _make_data().generate(folder / "data", train_rows=32, test_rows=16)
    elif not (train.is_file() and test.is_file()):
        train, test = _make_data().generate(folder / "data")
    if smoke or not model.is_file():
        spec = read_spec_file(EXAMPLES / "parts" / "fused.yaml")
        if smoke:
            spec["training"] = {**spec["training"], "epochs": 1}
        print(f"training the demo model into {model} ...", flush=True)
        polymodal.train(spec, train, model, progress=False)
    return model, train, test

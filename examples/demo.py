"""The demo: build the example spec, run a batch, save, reload, and show that nothing changed."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import torch

import polymodal

HERE = Path(__file__).parent


def main() -> None:
    spec = polymodal.load_spec(HERE / "claims.yaml")
    print(f"spec {spec.name!r}: inputs {', '.join(spec.inputs)}; heads {', '.join(spec.heads)}")
    start = time.perf_counter()
    model = polymodal.build(spec).eval()
    params = sum(p.numel() for p in model.parameters())
    print(f"built in {time.perf_counter() - start:.2f}s: {params:,} parameters")

    torch.manual_seed(0)
    batch = {
        "photo": torch.rand(4, 3, 64, 64),
        "report": {
            "make": torch.tensor([3, 17, 39, 99]),  # 99 is unseen: the unknown row handles it
            "color": torch.tensor([0, 5, 11, -1]),  # -1 is missing
            "age": torch.tensor([2.0, 7.5, float("nan"), 1.0]),  # NaN is imputed and flagged
            "mileage": torch.tensor([0.3, -1.2, 0.8, 1.5]),
        },
    }
    with torch.no_grad():
        out = model(batch)
    probs = out["fraud"].softmax(-1)
    print("fraud probabilities:", [round(p, 3) for p in probs[:, 1].tolist()])

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "claims.safetensors"
        polymodal.save(model, path)
        print(f"saved {path.name}: {path.stat().st_size / 1e6:.1f} MB")
        start = time.perf_counter()
        again = polymodal.load(path)
        print(f"loaded in {time.perf_counter() - start:.2f}s")
        with torch.no_grad():
            same = torch.equal(again(batch)["fraud"], out["fraud"])
    print("reloaded model gives identical outputs:", same)
    if not same:
        raise SystemExit(1)


if __name__ == "__main__":
    main()

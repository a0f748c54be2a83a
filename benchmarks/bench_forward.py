"""Forward + backward time of a spec-built model against a hand-written nn.Module of the same
architecture (seed 1: ResNet-18 photo + tabular MLP, concat, Linear(256), ReLU, Linear).

    python benchmarks/bench_forward.py [--repeats 30] [--batch 16] [--size 64] [--device cpu] [--threads 1]
"""

from __future__ import annotations

import argparse

import torch
import torchvision
from torch import nn

import polymodal
from _timing import alternate, parse_args, report

CATEGORICAL = {"make": 40, "color": 12}
EMBEDDING_DIMS = {"make": 8, "color": 4}
NUMERICAL = ["age", "mileage"]

SPEC = {
    "inputs": {
        "photo": {"adapter": {"type": "image", "channels": 3}, "backbone": "vision"},
        "report": {
            "adapter": {"type": "tabular", "categorical": CATEGORICAL,
                        "embedding_dims": EMBEDDING_DIMS, "numerical": NUMERICAL,
                        "missing_indicators": False},
            "backbone": {"type": "mlp", "hidden": [128, 64], "final_activation": False},
        },
    },
    "backbones": {"vision": {"type": "torchvision", "model": "resnet18"}},
    "fusion": {"type": "concat", "hidden": [256]},
    "heads": {"fraud": {"type": "classification", "classes": 2}},
}


class HandWritten(nn.Module):
    """What one would write by hand for the same architecture."""

    def __init__(self) -> None:
        super().__init__()
        resnet = torchvision.models.resnet18(weights=None)
        resnet.fc = nn.Identity()
        self.image = resnet
        self.embeddings = nn.ModuleList(
            nn.Embedding(CATEGORICAL[c], EMBEDDING_DIMS[c]) for c in CATEGORICAL)
        width = sum(EMBEDDING_DIMS.values()) + len(NUMERICAL)
        self.tabular = nn.Sequential(nn.Linear(width, 128), nn.ReLU(), nn.Linear(128, 64))
        self.fusion = nn.Sequential(nn.Linear(512 + 64, 256), nn.ReLU())
        self.head = nn.Linear(256, 2)

    def forward(self, photo: torch.Tensor, columns: dict[str, torch.Tensor]) -> torch.Tensor:
        embedded = [emb(columns[c]) for emb, c in zip(self.embeddings, CATEGORICAL)]
        numeric = torch.stack([columns[c] for c in NUMERICAL], dim=1)
        tabular = self.tabular(torch.cat([*embedded, numeric], dim=1))
        return self.head(self.fusion(torch.cat([self.image(photo), tabular], dim=1)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1,
                        help="CPU threads (1 keeps a shared machine's noise down)")
    args = parse_args(parser, repeats=1, batch=2, size=32)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)

    spec_model = polymodal.build(SPEC).to(device).train()
    hand = HandWritten().to(device).train()
    n = args.batch
    photo = torch.rand(n, 3, args.size, args.size, device=device)
    columns = {"make": torch.randint(0, 40, (n,), device=device),
               "color": torch.randint(0, 12, (n,), device=device),
               "age": torch.randn(n, device=device), "mileage": torch.randn(n, device=device)}
    target = torch.randint(0, 2, (n,), device=device)
    loss_fn = nn.CrossEntropyLoss()

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    def step_spec() -> None:
        spec_model.zero_grad(set_to_none=True)
        loss_fn(spec_model({"photo": photo, "report": columns})["fraud"], target).backward()
        sync()

    def step_hand() -> None:
        hand.zero_grad(set_to_none=True)
        loss_fn(hand(photo, columns), target).backward()
        sync()

    def count(m: nn.Module) -> int:
        return sum(p.numel() for p in m.parameters())

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {device}")
    print(f"batch {n}, {args.size}px; parameters: spec-built {count(spec_model):,},"
          f" hand-written {count(hand):,}")
    times = alternate({"hand-written nn.Module": step_hand, "spec-built (polymodal.build)": step_spec},
                      repeats=args.repeats)
    report("forward + backward, one training step", times, "hand-written nn.Module",
           "spec-built (polymodal.build)", 1.02)


if __name__ == "__main__":
    main()

"""Helpers shared by the built-in component tests: tiny specs and batches, error messages."""

from __future__ import annotations

import copy

import pytest
import torch

import polymodal

TINY_TIMM = {"type": "timm", "model": "resnet10t"}


def photo_and_table(fusion: dict | None = None, **photo_backbone) -> dict:
    """A spec with a 3-channel photo (timm resnet10t) and a small table (mlp), fused."""
    return {
        "inputs": {
            "photo": {"adapter": {"type": "image", "channels": 3},
                      "backbone": {**TINY_TIMM, **photo_backbone}},
            "table": {"adapter": {"type": "tabular", "categorical": {"make": 5},
                                  "numerical": ["age"]},
                      "backbone": {"type": "mlp", "hidden": [16]}},
        },
        "fusion": fusion or {"type": "concat"},
        "heads": {"label": {"type": "classification", "classes": 3}},
    }


def photo_and_table_batch(n: int = 2, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {"photo": torch.randn(n, 3, 32, 32, generator=g),
            "table": {"make": torch.randint(0, 5, (n,), generator=g),
                      "age": torch.randn(n, generator=g)}}


def randomize(module: torch.nn.Module, seed: int = 0) -> None:
    """Give every parameter random values (zero-initialised layers would hide effects)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.1)


def spec_error(spec: dict) -> str:
    """The message of the SpecError that building ``spec`` raises."""
    with pytest.raises(polymodal.SpecError) as info:
        polymodal.build(copy.deepcopy(spec))
    return str(info.value)

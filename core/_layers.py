"""Small building blocks that components share (plugins import these; core imports no plugin)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
from torch import nn

Activation = Literal["relu", "gelu", "silu", "tanh", "leaky_relu"]
Norm = Literal["none", "batch", "layer"]

_ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "tanh": nn.Tanh,
    "leaky_relu": nn.LeakyReLU,
}


def activation(name: str) -> nn.Module:
    return _ACTIVATIONS[name]()


class _Block(nn.Module):
    def __init__(self, in_dim: int, out_dim: int, act: str | None, norm: str, dropout: float,
                 residual: bool):
        super().__init__()
        self.linear = nn.Linear(in_dim, out_dim)
        norms: dict[str, Callable[[], nn.Module]] = {
            "none": nn.Identity, "batch": lambda: nn.BatchNorm1d(out_dim),
            "layer": lambda: nn.LayerNorm(out_dim)}
        self.norm = norms[norm]()
        self.act = activation(act) if act else nn.Identity()
        self.drop = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.residual = residual and in_dim == out_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.drop(self.act(self.norm(self.linear(x))))
        return x + y if self.residual else y


def mlp(
    in_dim: int,
    hidden: list[int],
    *,
    act: str = "relu",
    norm: str = "none",
    dropout: float = 0.0,
    residual: bool = False,
    final_activation: bool = True,
) -> nn.Module:
    """Linear layers of sizes ``hidden``, each followed by norm, activation and dropout.

    ``final_activation=False`` leaves the last layer linear. ``residual`` adds a skip connection
    around each layer whose input and output widths match.
    """
    layers: list[nn.Module] = []
    width = in_dim
    for i, size in enumerate(hidden):
        last = i == len(hidden) - 1
        layers.append(
            _Block(width, size, act if (final_activation or not last) else None,
                   norm if (final_activation or not last) else "none",
                   dropout if (final_activation or not last) else 0.0, residual)
        )
        width = size
    if not layers:
        return nn.Identity()
    return nn.Sequential(*layers)


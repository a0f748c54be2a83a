"""The ``mlp`` backbone: fully connected layers for vectors (tabular features, embeddings)."""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field, PositiveInt

from polymodal.plugin import (
    Activation,
    Backbone,
    BackboneConfig,
    ConnectionMismatch,
    Norm,
    Signal,
    Vector,
    hookimpl,
    mlp,
)

#: The plugin interface this module is written for.
POLYMODAL_PLUGIN_API = 2


class MLPBackbone(Backbone):
    """Fully connected layers over a vector: hidden sizes, activation, norm, dropout, residual.

    Each layer is Linear, then norm, activation and dropout; ``final_activation: false`` leaves
    the last layer linear. ``residual`` adds a skip connection around layers whose input and
    output widths match.
    """

    class Config(BackboneConfig):
        type: Literal["mlp"] = "mlp"
        hidden: list[PositiveInt] = Field(
            description="Output width of each layer, e.g. [128, 64].", min_length=1)
        activation: Activation = Field("relu", description="Activation after each layer.")
        norm: Norm = Field("none", description="Normalisation after each linear layer.")
        dropout: float = Field(0.0, description="Dropout after each layer.", ge=0.0, lt=1.0)
        residual: bool = Field(False, description="Skip connections where widths match.")
        final_activation: bool = Field(
            True, description="Apply norm/activation/dropout after the last layer too.")

        def describe(self) -> str:
            return f"mlp {self.hidden}"

        def gives(self, takes: Signal) -> Signal:
            if not isinstance(takes, Vector):
                raise ConnectionMismatch("takes a vector", wanted=Vector(takes.width))
            return Vector(self.hidden[-1])

    config: Config

    example_options = {"hidden": [64]}
    exportable = True

    def __init__(self, config: Config, takes: Vector):
        super().__init__(config, takes)
        self.layers = mlp(takes.dim, list(config.hidden), act=config.activation, norm=config.norm,
                          dropout=config.dropout, residual=config.residual,
                          final_activation=config.final_activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


@hookimpl
def polymodal_components():
    return [MLPBackbone]

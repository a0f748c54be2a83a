"""The ``concat`` fusion: late fusion by concatenation, optionally followed by an MLP."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

import torch
from pydantic import Field, PositiveInt
from torch import nn

from polymodal.plugin import (
    Activation,
    Fusion,
    FusionConfig,
    Norm,
    Signal,
    Vector,
    changed_options,
    hookimpl,
    mlp,
)

#: The plugin interface this module is written for.
POLYMODAL_PLUGIN_API = 2


class ConcatFusion(Fusion):
    """Concatenates each input's features (late fusion), then an optional MLP.

    Each input is first mean-pooled to a vector as its signal pools (a feature map over its
    positions, tokens over the tokens, a sequence over time). Inputs marked absent in a
    per-sample ``present`` mask are replaced by a learned placeholder vector, so every row
    still gets a prediction and an absent input's values have no influence.
    """

    class Config(FusionConfig):
        type: Literal["concat"] = "concat"
        hidden: list[PositiveInt] = Field(
            default_factory=list, description="Widths of an MLP after the concatenation"
            " (each Linear + activation); empty for none.")
        activation: Activation = Field("relu", description="Activation of the MLP layers.")
        norm: Norm = Field("none", description="Normalisation of the MLP layers.")
        dropout: float = Field(0.0, description="Dropout after each MLP layer.", ge=0.0, lt=1.0)

        def describe(self) -> str:
            return "concat" + (f" + mlp {self.hidden}" if self.hidden else "")

        def diagram_settings(self) -> list[str]:
            # describe() shows the MLP.
            return changed_options(self, skip=("hidden",))

        def gives(self, takes: Mapping[str, Signal]) -> Signal:
            width = sum(s.width for s in takes.values())
            return Vector(self.hidden[-1] if self.hidden else width)

    config: Config
    exportable = True

    def __init__(self, config: Config, takes: Mapping[str, Signal]):
        super().__init__(config, takes)
        self.placeholders = nn.ParameterDict({
            name: nn.Parameter(torch.zeros(signal.width)) for name, signal in takes.items()
        })
        width = sum(s.width for s in takes.values())
        self.mlp = mlp(width, list(config.hidden), act=config.activation, norm=config.norm,
                       dropout=config.dropout)

    def forward(self, features: Mapping[str, torch.Tensor],
                present: Mapping[str, torch.Tensor] | None = None) -> torch.Tensor:
        parts = []
        for name, signal in self.takes.items():
            vector = signal.pool(features[name])
            if present is not None and name in present:
                mask = present[name].to(torch.bool).view(-1, 1)
                # where, not a product: an absent input may hold NaN, and NaN * 0 is NaN.
                vector = torch.where(mask, vector, self.placeholders[name].to(vector.dtype))
            parts.append(vector)
        return self.mlp(torch.cat(parts, dim=1))


@hookimpl
def polymodal_components():
    return [ConcatFusion]

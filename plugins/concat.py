"""The ``concat`` fusion: late fusion by concatenation, optionally followed by an MLP."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

import torch
from pydantic import Field, PositiveInt
from torch import nn

import polymodal
from polymodal.plugin import Activation, Fusion, FusionConfig, hookimpl, mlp, Norm, Sequence, Signal, Vector
from polymodal._layers import Activation, Norm, mlp, pool_to_vector

#: The plugin interface this module is written for.
POLYMODAL_PLUGIN_API = 2


class ConcatFusion(Fusion):
    """Concatenates each input's features (late fusion), then an optional MLP.

    Feature maps, tokens and sequences are mean-pooled to vectors first. Inputs marked absent in a
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

        def gives(self, takes: Mapping[str, Signal]) -> Signal:
            width = sum(s.width for s in takes.values())
            return Vector(self.hidden[-1] if self.hidden else width)

    exportable = True

    def __init__(self, config: Config, takes: Mapping[str, Signal]):
        super().__init__(config, takes)
        self.names = list(takes)
        # Channels-first sequences become tokens so that pooling averages over time.
        self.sequences = {name for name, signal in takes.items() if isinstance(signal, Sequence)}
        self.placeholders = nn.ParameterDict({
            name: nn.Parameter(torch.zeros(signal.width)) for name, signal in takes.items()
        })
        width = sum(s.width for s in takes.values())
        self.mlp = mlp(width, list(config.hidden), act=config.activation, norm=config.norm,
                       dropout=config.dropout)

    def forward(self, features: Mapping[str, torch.Tensor],
                present: Mapping[str, torch.Tensor] | None = None) -> torch.Tensor:
        parts = []
        for name in self.names:
            x = features[name]
            vector = pool_to_vector(x.transpose(1, 2) if name in self.sequences else x)
            if present is not None and name in present:
                mask = present[name].to(torch.bool).view(-1, 1)
                # where, not a product: an absent input may hold NaN, and NaN * 0 is NaN.
                vector = torch.where(mask, vector, self.placeholders[name].to(vector.dtype))
            parts.append(vector)
        return self.mlp(torch.cat(parts, dim=1))


@hookimpl
def polymodal_components():
    return [ConcatFusion]

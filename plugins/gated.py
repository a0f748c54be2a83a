"""The ``gated`` fusion: a learned gate weighs each input's features (gated multimodal unit)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

import torch
from pydantic import Field, PositiveInt
from torch import nn

from polymodal.plugin import Fusion, FusionConfig, Signal, Vector, changed_options, hookimpl

#: The plugin interface this module is written for.
POLYMODAL_PLUGIN_API = 2


class GatedFusion(Fusion):
    """A learned gate weighting each input's features, gated multimodal unit style.

    Each input's features (mean-pooled to a vector as its signal pools) are mapped to ``dim`` and
    squashed by tanh; a gate computed from all inputs together gives, for every output feature,
    a softmax weight over the inputs; the output is the weighted sum (Arevalo et al., "Gated
    Multimodal Units for Information Fusion"). An input marked absent in ``present`` gets weight
    0 and is left out of the gate's own input, so its values have no influence; a sample with no
    input present gets zeros.
    """

    class Config(FusionConfig):
        type: Literal["gated"] = "gated"
        dim: PositiveInt = Field(256, description="Width of the fused vector.", le=65536)
        dropout: float = Field(0.0, description="Dropout on each input's transformed features.",
                               ge=0.0, lt=1.0)

        def describe(self) -> str:
            return f"gated, dim {self.dim}"

        def diagram_settings(self) -> list[str]:
            # describe() shows the width.
            return changed_options(self, skip=("dim",))

        def gives(self, takes: Mapping[str, Signal]) -> Signal:
            return Vector(self.dim)

    config: Config

    example_options = {"dim": 32}
    exportable = True

    def __init__(self, config: Config, takes: Mapping[str, Signal]):
        super().__init__(config, takes)
        self.transforms = nn.ModuleDict({
            name: nn.Linear(signal.width, config.dim) for name, signal in takes.items()})
        self.gate = nn.Linear(sum(s.width for s in takes.values()), config.dim * len(takes))
        self.dropout = nn.Dropout(config.dropout) if config.dropout else nn.Identity()

    def forward(self, features: Mapping[str, torch.Tensor],
                present: Mapping[str, torch.Tensor] | None = None) -> torch.Tensor:
        vectors, masks = [], []
        for name, signal in self.takes.items():
            vector = signal.pool(features[name])
            mask = torch.ones(vector.shape[0], dtype=torch.bool, device=vector.device)
            if present is not None and name in present:
                mask = present[name].to(torch.bool).view(-1)
                vector = torch.where(mask.unsqueeze(1), vector, torch.zeros_like(vector))
            vectors.append(vector)
            masks.append(mask)
        keep = torch.stack(masks, dim=1)  # [B, inputs]
        hidden = torch.stack([self.dropout(torch.tanh(self.transforms[n](v)))
                              for n, v in zip(self.takes, vectors)], dim=1)  # [B, inputs, dim]
        logits = self.gate(torch.cat(vectors, dim=1)).view(hidden.shape)
        logits = logits.masked_fill(~keep.unsqueeze(2), -torch.inf)
        any_present = keep.any(dim=1, keepdim=True).unsqueeze(2)
        weights = torch.where(any_present, logits, torch.zeros_like(logits)).softmax(dim=1)
        fused = (weights * torch.where(keep.unsqueeze(2), hidden, torch.zeros_like(hidden))).sum(1)
        return torch.where(any_present.squeeze(2), fused, torch.zeros_like(fused))


@hookimpl
def polymodal_components():
    return [GatedFusion]

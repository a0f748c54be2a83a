"""The ``attention`` fusion: multi-head self-attention over the tokens of every input."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

import torch
from pydantic import Field, PositiveInt, model_validator
from torch import nn

from polymodal.plugin import Fusion, FusionConfig, Signal, Vector, changed_options, hookimpl

#: The plugin interface this module is written for.
POLYMODAL_PLUGIN_API = 2


class AttentionFusion(Fusion):
    """Transformer layers over tokens from every input: vectors give one token, feature maps one
    per position, a sequence one per time step, tokens stay tokens.

    Each input's tokens are projected to ``dim`` and tagged with a learned per-input embedding.
    The result is a learned summary token (``pooling: cls``) or the mean of the tokens
    (``pooling: mean``). Inputs marked absent in a per-sample ``present`` mask are masked out
    of the attention: no token attends to them and the mean leaves them out, so their values
    have no influence. A sample with no input present gets zeros (``mean``) or the summary
    token alone (``cls``).
    """

    class Config(FusionConfig):
        type: Literal["attention"] = "attention"
        dim: PositiveInt = Field(256, description="Attention width (tokens are projected to it).",
                                 le=16384)
        heads: PositiveInt = Field(8, description="Attention heads; must divide dim.")
        layers: PositiveInt = Field(1, description="Transformer encoder layers.", le=64)
        ffn_ratio: float = Field(2.0, description="Feed-forward width as a multiple of dim.", gt=0)
        dropout: float = Field(0.0, description="Dropout in attention and feed-forward.",
                               ge=0.0, lt=1.0)
        pooling: Literal["cls", "mean"] = Field(
            "cls", description="Summary: a learned [CLS] token, or the mean of all tokens.")

        @model_validator(mode="after")
        def _check_heads(self):
            if self.dim % self.heads:
                raise ValueError(f"heads ({self.heads}) must divide dim ({self.dim})")
            return self

        def describe(self) -> str:
            return f"attention dim {self.dim}, {self.heads} heads"

        def diagram_settings(self) -> list[str]:
            # describe() shows the width and heads.
            return changed_options(self, skip=("dim", "heads"))

        def gives(self, takes: Mapping[str, Signal]) -> Signal:
            return Vector(self.dim)

    config: Config

    example_options = {"dim": 64, "heads": 4}
    exportable = True

    def __init__(self, config: Config, takes: Mapping[str, Signal]):
        super().__init__(config, takes)
        self.projections = nn.ModuleDict({
            name: nn.Linear(signal.width, config.dim) for name, signal in takes.items()
        })
        self.input_embeddings = nn.ParameterDict({
            name: nn.Parameter(torch.randn(config.dim) * 0.02) for name in takes
        })
        layer = nn.TransformerEncoderLayer(
            config.dim, config.heads, dim_feedforward=int(config.dim * config.ffn_ratio),
            dropout=config.dropout, batch_first=True, norm_first=True, activation="gelu")
        self.encoder = nn.TransformerEncoder(layer, config.layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(config.dim)
        if config.pooling == "cls":
            self.cls = nn.Parameter(torch.randn(1, 1, config.dim) * 0.02)

    def forward(self, features: Mapping[str, torch.Tensor],
                present: Mapping[str, torch.Tensor] | None = None) -> torch.Tensor:
        tokens, masks = [], []
        for name, signal in self.takes.items():
            raw = signal.to_tokens(features[name])
            keep = torch.ones(raw.shape[0], raw.shape[1], dtype=torch.bool, device=raw.device)
            if present is not None and name in present:
                keep = keep & present[name].to(torch.bool).view(-1, 1)
                # Zero absent tokens: masked attention weighs them 0, but NaN * 0 is NaN.
                raw = torch.where(keep.unsqueeze(2), raw, torch.zeros((), dtype=raw.dtype,
                                                                      device=raw.device))
            tokens.append(self.projections[name](raw) + self.input_embeddings[name])
            masks.append(keep)
        x = torch.cat(tokens, dim=1)
        keep = torch.cat(masks, dim=1)
        if self.config.pooling == "cls":
            x = torch.cat([self.cls.expand(x.shape[0], -1, -1).to(x.dtype), x], dim=1)
            keep = torch.cat([torch.ones_like(keep[:, :1]), keep], dim=1)
        padding = None
        if present is not None:
            # A sample with nothing present would attend to nothing (NaN): let it attend to its
            # own tokens and zero its output below.
            empty = ~keep.any(dim=1, keepdim=True)
            padding = ~(keep | empty)
        x = self.norm(self.encoder(x, src_key_padding_mask=padding))
        if self.config.pooling == "cls":
            return x[:, 0]
        weights = keep.to(x.dtype).unsqueeze(2)
        return (x * weights).sum(1) / weights.sum(1).clamp_min(1.0)


@hookimpl
def polymodal_components():
    return [AttentionFusion]

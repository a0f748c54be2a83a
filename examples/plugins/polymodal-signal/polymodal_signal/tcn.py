"""The ``tcn`` backbone: a temporal convolutional network over a 1-D sequence."""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field, PositiveInt, model_validator
from torch import nn

from polymodal.plugin import Backbone, BackboneConfig, ConnectionMismatch, Sequence, Signal, Vector


class _ResidualBlock(nn.Module):
    def __init__(self, width_in: int, width: int, kernel_size: int, dilation: int,
                 dropout: float, causal: bool):
        super().__init__()
        span = dilation * (kernel_size - 1)
        # Causal: all padding on the left, so step t sees only steps <= t.
        self.pad = (span, 0) if causal else (span // 2, span - span // 2)
        self.conv1 = nn.Conv1d(width_in, width, kernel_size, dilation=dilation)
        self.conv2 = nn.Conv1d(width, width, kernel_size, dilation=dilation)
        self.norm1 = nn.BatchNorm1d(width)
        self.norm2 = nn.BatchNorm1d(width)
        self.act = nn.ReLU()
        self.drop = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.skip = nn.Conv1d(width_in, width, 1) if width_in != width else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.drop(self.act(self.norm1(self.conv1(nn.functional.pad(x, self.pad)))))
        y = self.drop(self.norm2(self.conv2(nn.functional.pad(y, self.pad))))
        return self.act(y + self.skip(x))


class TCNBackbone(Backbone):
    """Dilated 1-D residual convolutions over a sequence, pooled over time to a vector.

    Level ``i`` dilates its convolutions by ``2**i``, so ``levels`` levels of kernel ``k`` see
    ``1 + 2 (k - 1) (2**levels - 1)`` time steps. ``causal`` pads on the left only (no step
    sees the future); ``pooling`` reduces the time axis by mean, max, or the last step.
    """

    class Config(BackboneConfig):
        type: Literal["tcn"] = "tcn"
        channels: PositiveInt = Field(64, description="Width of every level (the output vector's size).",
                                      le=8192)
        levels: PositiveInt = Field(4, description="Residual levels; level i dilates by 2**i.", le=16)
        kernel_size: PositiveInt = Field(3, description="Convolution kernel size.", ge=2, le=63)
        dropout: float = Field(0.0, description="Dropout after each convolution.", ge=0.0, lt=1.0)
        causal: bool = Field(False, description="Pad on the left only, so no step sees the future.")
        pooling: Literal["mean", "max", "last"] = Field(
            "mean", description="How the time axis becomes one vector.")

        @model_validator(mode="after")
        def _check_pooling(self):
            if self.pooling == "last" and not self.causal:
                raise ValueError("pooling: last needs causal: true (otherwise the last step"
                                 " has seen only half a receptive field)")
            return self

        def describe(self) -> str:
            return f"tcn {self.levels} levels of {self.channels}"

        def receptive_field(self) -> int:
            return 1 + 2 * (self.kernel_size - 1) * (2 ** self.levels - 1)

        def gives(self, takes: Signal) -> Signal:
            if not isinstance(takes, Sequence):
                raise ConnectionMismatch("takes a sequence [B, channels, T]",
                                         wanted=Sequence(takes.width))
            return Vector(self.channels)

    example_options = {"channels": 32, "levels": 3}
    exportable = True

    def __init__(self, config: Config, takes: Sequence):
        super().__init__(config, takes)
        widths = [takes.channels] + [config.channels] * config.levels
        self.blocks = nn.Sequential(*(
            _ResidualBlock(widths[i], widths[i + 1], config.kernel_size, 2 ** i,
                           config.dropout, config.causal)
            for i in range(config.levels)
        ))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.blocks(x)
        if self.config.pooling == "max":
            return y.amax(dim=2)
        if self.config.pooling == "last":
            return y[:, :, -1]
        return y.mean(dim=2)

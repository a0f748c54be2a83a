"""The ``regression`` head: real-valued targets, trained with MSE, Huber or L1 loss."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field, PositiveInt
from torch import nn

import polymodal
from polymodal.components import Head, HeadConfig
from polymodal.signals import Vector


class RegressionHead(Head):
    """Regression of ``outputs`` values a sample (``[B, outputs]``) with MSE, Huber or L1 loss."""

    class Config(HeadConfig):
        type: Literal["regression"] = "regression"
        outputs: PositiveInt = Field(1, description="Values predicted a sample.", le=100_000)
        loss: Literal["mse", "huber", "l1"] = Field("mse", description="Training loss.")
        huber_delta: float = Field(1.0, description="Delta of the Huber loss.", gt=0)
        dropout: float = Field(0.0, description="Dropout before the output layer.", ge=0.0, lt=1.0)

        def describe(self) -> str:
            return f"regression, {self.outputs} output(s)"

    def __init__(self, config: Config, takes: Vector):
        super().__init__(config, takes)
        self.dropout = nn.Dropout(config.dropout) if config.dropout else nn.Identity()
        self.linear = nn.Linear(takes.dim, config.outputs)

    def forward(self, fused: torch.Tensor) -> torch.Tensor:
        return self.linear(self.dropout(fused))

    def loss(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        target = target.to(output.dtype).view_as(output)
        if self.config.loss == "huber":
            return F.huber_loss(output, target, delta=self.config.huber_delta)
        if self.config.loss == "l1":
            return F.l1_loss(output, target)
        return F.mse_loss(output, target)

    def predict(self, output: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"value": output.float()}


@polymodal.hookimpl
def polymodal_components():
    return [RegressionHead]

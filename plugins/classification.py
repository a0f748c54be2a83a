"""The ``classification`` head: one class out of ``classes``, trained with cross-entropy."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import nn

import polymodal
from polymodal.components import Head, HeadConfig
from polymodal.signals import Vector


class ClassificationHead(Head):
    """Single-label classification: logits ``[B, classes]``, cross-entropy loss, softmax predictions.

    The loss takes optional per-class weights and label smoothing; targets are class indices.
    Predictions are the most probable class and every class's probability.
    """

    class Config(HeadConfig):
        type: Literal["classification"] = "classification"
        classes: int = Field(description="Number of classes (at least 2).", ge=2, le=1_000_000)
        dropout: float = Field(0.0, description="Dropout before the output layer.", ge=0.0, lt=1.0)
        class_weights: list[float] | None = Field(
            None, description="Loss weight of each class (one per class), for imbalanced data.")
        label_smoothing: float = Field(0.0, description="Label smoothing of the loss.",
                                       ge=0.0, lt=1.0)

        @model_validator(mode="after")
        def _check_weights(self):
            if self.class_weights is not None:
                if len(self.class_weights) != self.classes:
                    raise ValueError(f"class_weights has {len(self.class_weights)} values for"
                                     f" {self.classes} classes")
                if any(w < 0 for w in self.class_weights):
                    raise ValueError("class_weights must be >= 0")
            return self

        def describe(self) -> str:
            return f"classification, {self.classes} classes"

    example_options = {"classes": 2}

    def __init__(self, config: Config, takes: Vector):
        super().__init__(config, takes)
        self.dropout = nn.Dropout(config.dropout) if config.dropout else nn.Identity()
        self.linear = nn.Linear(takes.dim, config.classes)
        if config.class_weights is not None:
            self.register_buffer("class_weights", torch.tensor(config.class_weights),
                                 persistent=False)
        else:
            self.class_weights = None

    def forward(self, fused: torch.Tensor) -> torch.Tensor:
        return self.linear(self.dropout(fused))

    def loss(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        weights = None if self.class_weights is None else self.class_weights.to(output.dtype)
        return F.cross_entropy(output, target.long().view(-1), weight=weights,
                               label_smoothing=self.config.label_smoothing)

    def predict(self, output: torch.Tensor) -> dict[str, torch.Tensor]:
        probabilities = output.float().softmax(dim=-1)
        return {"class": probabilities.argmax(dim=-1), "probabilities": probabilities}


@polymodal.hookimpl
def polymodal_components():
    return [ClassificationHead]

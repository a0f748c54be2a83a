"""The ``multilabel`` head: any number of ``labels`` a sample, trained with binary cross-entropy."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import nn

import polymodal
from polymodal.components import Head, HeadConfig
from polymodal.signals import Vector


class MultilabelHead(Head):
    """Multi-label classification: one logit a label (``[B, labels]``), binary cross-entropy.

    Targets are 0/1 (or soft) values ``[B, labels]``. ``pos_weight`` weighs each label's
    positives in the loss (more than 1 for rare labels). Predictions are every label's
    probability and the labels at or above ``threshold``.
    """

    example_options = {"labels": 3}

    class Config(HeadConfig):
        type: Literal["multilabel"] = "multilabel"
        labels: int = Field(description="Number of labels.", ge=1, le=1_000_000)
        pos_weight: list[float] | None = Field(
            None, description="Loss weight of each label's positive examples (one per label).")
        threshold: float = Field(0.5, description="Probability at which a label is predicted.",
                                 gt=0.0, lt=1.0)
        dropout: float = Field(0.0, description="Dropout before the output layer.", ge=0.0, lt=1.0)

        @model_validator(mode="after")
        def _check_weights(self):
            if self.pos_weight is not None:
                if len(self.pos_weight) != self.labels:
                    raise ValueError(f"pos_weight has {len(self.pos_weight)} values for"
                                     f" {self.labels} labels")
                if any(w <= 0 for w in self.pos_weight):
                    raise ValueError("pos_weight values must be > 0")
            return self

        def describe(self) -> str:
            return f"multilabel, {self.labels} labels"

    example_options = {"labels": 3}

    def __init__(self, config: Config, takes: Vector):
        super().__init__(config, takes)
        self.dropout = nn.Dropout(config.dropout) if config.dropout else nn.Identity()
        self.linear = nn.Linear(takes.dim, config.labels)
        # Not persistent: it comes from the spec, which the model file holds.
        weight = None if config.pos_weight is None else torch.tensor(config.pos_weight)
        self.register_buffer("pos_weight", weight, persistent=False)

    def forward(self, fused: torch.Tensor) -> torch.Tensor:
        return self.linear(self.dropout(fused))

    def loss(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        weight = None if self.pos_weight is None else self.pos_weight.to(output.dtype)
        return F.binary_cross_entropy_with_logits(
            output, target.to(output.dtype).view_as(output), pos_weight=weight)

    def predict(self, output: torch.Tensor) -> dict[str, torch.Tensor]:
        probabilities = output.float().sigmoid()
        return {"labels": probabilities >= self.config.threshold, "probabilities": probabilities}


@polymodal.hookimpl
def polymodal_components():
    return [MultilabelHead]

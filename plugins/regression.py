"""The ``regression`` head: real-valued targets, trained with MSE, Huber or L1 loss."""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field, PositiveInt
from torch import nn

from polymodal.plugin import (
    DataError,
    Head,
    HeadConfig,
    RowIssues,
    SpecError,
    State,
    Table,
    TargetCodec,
    Vector,
    changed_options,
    hookimpl,
)

from ._columns import MAX_MAGNITUDE, check_statistic, numeric_column, too_large
from ._metrics import REGRESSION_METRICS, regression_metrics

#: The plugin interface this module is written for.
POLYMODAL_PLUGIN_API = 2


class RegressionHead(Head):
    """Regression of ``outputs`` values a sample (``[B, outputs]``) with MSE, Huber or L1 loss."""

    class Config(HeadConfig):
        type: Literal["regression"] = "regression"
        outputs: PositiveInt = Field(1, description="Values predicted a sample.", le=100_000)
        loss: Literal["mse", "huber", "l1"] = Field("mse", description="Training loss.")
        huber_delta: float = Field(1.0, description="Delta of the Huber loss.", gt=0)
        dropout: float = Field(0.0, description="Dropout before the output layer.", ge=0.0, lt=1.0)
        standardize: bool = Field(
            True, description="When trained on a table: learn the target in standard units"
            " (mean and standard deviation of the training targets, kept in the model file);"
            " predictions are turned back into the target's units.")

        def describe(self) -> str:
            return f"regression, {self.outputs} output{'s' if self.outputs > 1 else ''}"

        def diagram_settings(self) -> list[str]:
            # describe() shows the outputs; edges show the inputs; the target column is data.
            return changed_options(self, skip=("inputs", "target", "outputs"))

        def codec(self, name: str, where: str) -> RegressionCodec:
            return RegressionCodec(self, name, where)

    config: Config

    exportable = True

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


# -- reading tables ----------------------------------------------------------------------------


class RegressionCodec(TargetCodec[RegressionHead.Config]):
    """Reads a numeric target column; with ``standardize`` the head learns it in standard
    units and predictions are scaled back."""

    declared_metrics = REGRESSION_METRICS

    def column(self) -> str:
        return self.config.target or self.name

    def columns(self) -> list[str]:
        if self.config.outputs != 1:
            raise SpecError([(f"{self.where}.outputs", "training on a table reads one target"
                              " column, so outputs must be 1")])
        return [self.column()]

    def check(self, table: Table, issues: RowIssues, state: State | None) -> None:
        numeric_column(table, self.column(), issues)  # infinite and huge targets: bad rows

    def fit(self, table: Table) -> State:
        values = numeric_column(table, self.column(), None)
        finite = values[np.isfinite(values)]
        if not self.config.standardize or finite.size < 2:
            return {"mean": 0.0, "std": 1.0}
        extreme = float(finite[np.argmax(np.abs(finite))])
        if abs(extreme) > MAX_MAGNITUDE:  # bad rows, left out before fitting where checked
            raise DataError(f"{table.source}: target column {self.column()!r}:"
                            f" {too_large(extreme)}")
        mean, std = float(finite.mean()), float(finite.std())  # the squares fit float64
        return {"mean": mean, "std": std if std > 1e-12 else 1.0}

    def check_state(self, state: State) -> None:
        for key in ("mean", "std"):
            check_statistic(state.get(key), f"the fitted {key}", key, scale=key == "std")

    def encode(self, table: Table, state: State, issues: RowIssues) -> tuple[torch.Tensor, torch.Tensor]:
        values = numeric_column(table, self.column(), issues)
        present = np.isfinite(values)
        scaled = np.where(present, (values - state["mean"]) / state["std"], 0.0)
        return torch.from_numpy(scaled.astype(np.float32)).view(-1, 1), torch.from_numpy(present)

    def _values(self, output: torch.Tensor, state: State) -> torch.Tensor:
        return output.float() * state["std"] + state["mean"]

    def decode(self, output: torch.Tensor, state: State) -> dict[str, list[Any]]:
        # Each value with the digits float32 holds (14.150549, not 14.150548934936523).
        values = self._values(output, state).view(-1).numpy().astype(np.float32)
        return {self.name: [float(str(v)) for v in values]}

    def row_scores(self, output: torch.Tensor, state: State,
                   predicted: list[Any] | None = None) -> tuple[list[Any], np.ndarray]:
        """The predicted value, which is also its number."""
        values = self._values(output, state).view(-1).numpy().astype(np.float64)
        return (values.tolist() if predicted is None else predicted), values

    def metrics(self, output: torch.Tensor, target: torch.Tensor, state: State) -> dict[str, float]:
        return regression_metrics(self._values(output, state).numpy(),
                                  self._values(target, state).numpy())


@hookimpl
def polymodal_components():
    return [RegressionHead]

"""The ``signal`` adapter: N-channel time series, normalised per channel."""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field, PositiveInt, model_validator

from polymodal.plugin import AdapterConfig, DataError, ModalityAdapter, Sequence, Signal


class SignalAdapter(ModalityAdapter):
    """N-channel time series (ECG leads, sensor axes) ``[B, channels, T]``, normalised per channel.

    Fixed per-channel statistics (``mean``/``std``, e.g. measured on the training set) are kept
    as buffers in the model file. ``instance_norm`` standardises each sample's channels over
    time instead, which removes per-recording offsets and gains (electrode contact, sensor
    calibration). NaN samples, common where a lead drops out, are set to 0 after normalising.
    """

    class Config(AdapterConfig):
        type: Literal["signal"] = "signal"
        channels: PositiveInt = Field(description="Channels (leads) of each series.", le=4096)
        length: PositiveInt | None = Field(
            None, description="Required number of time steps T; None accepts any length.")
        mean: list[float] | None = Field(
            None, description="Per-channel mean subtracted from the input (one per channel).")
        std: list[float] | None = Field(
            None, description="Per-channel standard deviation dividing the input (one per channel).")
        instance_norm: bool = Field(
            False, description="Standardise each sample's channels over time (instead of mean/std).")

        @model_validator(mode="after")
        def _check_statistics(self):
            if self.instance_norm and (self.mean is not None or self.std is not None):
                raise ValueError("give either instance_norm or mean/std, not both")
            for name in ("mean", "std"):
                values = getattr(self, name)
                if values is not None and len(values) != self.channels:
                    raise ValueError(
                        f"{name} has {len(values)} values but the signal has {self.channels} channels")
            if self.std is not None and any(s <= 0 for s in self.std):
                raise ValueError("std values must be > 0")
            return self

        def describe(self) -> str:
            return f"signal, {self.channels} channels"

        def gives(self) -> Signal:
            return Sequence(self.channels)

    example_options = {"channels": 12}
    exportable = True  # `polymodal export` works for models holding it (check_export checks)

    def __init__(self, config: Config, takes: None = None):
        super().__init__(config, takes)
        mean = config.mean or [0.0] * config.channels
        std = config.std or [1.0] * config.channels
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1))

    def example_input(self, batch_size: int = 2) -> torch.Tensor:
        return torch.randn(batch_size, self.config.channels, self.config.length or 64)

    def forward(self, series: torch.Tensor) -> torch.Tensor:
        channels, length = self.config.channels, self.config.length
        if series.dim() != 3 or series.shape[1] != channels or (length and series.shape[2] != length):
            steps = length or "time"
            raise DataError(
                f"signal input: expected a [batch, {channels}, {steps}] tensor,"
                f" got shape {list(series.shape)}")
        series = series.float()
        if self.config.instance_norm:
            mean = series.nanmean(dim=2, keepdim=True)
            centred = torch.nan_to_num(series - mean)
            std = centred.pow(2).mean(dim=2, keepdim=True).sqrt().clamp_min(1e-5)
            normalised = centred / std
        else:
            normalised = (series - self.mean) / self.std
        return torch.nan_to_num(normalised, nan=0.0)

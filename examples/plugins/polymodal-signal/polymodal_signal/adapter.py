"""The ``signal`` adapter: N-channel time series, normalised per channel, and its codec, which
reads them from a table column of ``.npy`` file paths."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import Field, PositiveInt, model_validator

from polymodal.plugin import (
    AdapterConfig,
    Codec,
    DataError,
    ModalityAdapter,
    RowIssues,
    Sequence,
    Signal,
    State,
    Table,
    is_missing,
)


class SignalAdapter(ModalityAdapter):
    """N-channel time series (ECG leads, sensor axes) ``[B, channels, T]``, normalised per channel.

    Fixed per-channel statistics (``mean``/``std``, e.g. measured on the training set) are kept
    as buffers in the model file. ``instance_norm`` standardises each sample's channels over
    time instead, which removes per-recording offsets and gains (electrode contact, sensor
    calibration). NaN samples, common where a lead drops out, are set to 0 after normalising.

    Trained on a table, the input's ``column`` holds the path of one ``.npy`` file a row, a
    ``[channels, T]`` array (``[T]`` for one channel); every signal has the same length T.
    Unless ``mean``/``std`` or ``instance_norm`` is given, the per-channel mean and standard
    deviation are learned on the training signals.
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
        column: str | None = Field(
            None, description="Training on a table: the column with each row's .npy file path"
            " (relative to the table's folder); default: the input's name.", min_length=1)
        noise_std: float = Field(
            0.0, description="Training on a table: standard deviation of gaussian noise added"
            " to each training batch, in the signal's units.", ge=0.0)

        @model_validator(mode="after")
        def _check_statistics(self):
            if self.instance_norm and (self.mean is not None or self.std is not None):
                raise ValueError("give either instance_norm or mean/std, not both")
            for name, values in (("mean", self.mean), ("std", self.std)):
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

        def codec(self, name: str, where: str) -> SignalCodec:
            return SignalCodec(self, name, where)

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


# -- reading tables ----------------------------------------------------------------------------

#: Signals read to fit the per-channel statistics (evenly spaced over the training rows).
STATISTICS_SAMPLE = 512


class SignalCodec(Codec[SignalAdapter.Config]):
    """Reads the ``.npy`` file of each row into ``[B, channels, T]`` batches. Checking reads
    only each file's header; fitting learns each channel's mean and standard deviation (NaN
    samples left out), which :meth:`prepare` puts into the adapter's normalisation."""

    def column(self) -> str:
        return self.config.column or self.name

    def columns(self) -> list[str]:
        return [self.column()]

    def absent(self, table: Table) -> np.ndarray:
        """A row with an empty cell has no recording (plugin API 2.1): where the model fuses the
        signal with other inputs, such a row is used with those; elsewhere it is a bad row."""
        return np.array([is_missing(v) for v in table.columns[self.column()]], dtype=bool)

    def check(self, table: Table, issues: RowIssues, state: State | None) -> None:
        length = self.config.length or (state["length"] if state else None)
        for position in range(len(table)):
            signal = self._open(table, position, issues)
            if signal is None:
                continue
            steps = signal.shape[-1]
            if length is None:
                length = steps  # before fitting, the first signal sets the length
            elif steps != length:
                issues.bad_row(position, self.column(), self._length_problem(
                    table, position, steps, length, state))

    def fit(self, table: Table) -> State:
        issues = RowIssues(table)
        count = len(table)
        positions = np.unique(np.linspace(0, count - 1, min(count, STATISTICS_SAMPLE)).astype(int))
        total = np.zeros(self.config.channels)
        total_sq = np.zeros(self.config.channels)
        samples = np.zeros(self.config.channels)
        length = self.config.length
        for position in positions:
            signal = self._read(table, int(position), issues)
            if signal is None:
                continue
            length = signal.shape[1]
            finite = np.isfinite(signal)
            values = np.where(finite, signal, 0.0).astype(np.float64)
            total += values.sum(axis=1)
            total_sq += (values**2).sum(axis=1)
            samples += finite.sum(axis=1)
        if issues.bad:
            raise DataError(next(iter(issues.bad.values())))
        mean = total / np.maximum(samples, 1)
        std = np.sqrt(np.maximum(total_sq / np.maximum(samples, 1) - mean**2, 0.0))
        std = np.where(std > 1e-6, std, 1.0)  # a flat channel is left unscaled
        return {"mean": mean.tolist(), "std": std.tolist(), "length": length}

    def prepare(self, module: SignalAdapter, state: State) -> None:
        config = self.config
        if config.instance_norm or config.mean is not None or config.std is not None:
            return  # the spec's own normalisation
        with torch.no_grad():
            module.mean.copy_(torch.tensor(state["mean"], dtype=torch.float32).view(1, -1, 1))
            module.std.copy_(torch.tensor(state["std"], dtype=torch.float32).view(1, -1, 1))

    def encode(self, table: Table, state: State, issues: RowIssues) -> torch.Tensor:
        length = state["length"] or 1
        batch = np.zeros((len(table), self.config.channels, length), dtype=np.float32)
        for position in range(len(table)):
            signal = self._read(table, position, issues)
            if signal is None:
                continue
            if signal.shape[1] != length:
                issues.bad_row(position, self.column(), self._length_problem(
                    table, position, signal.shape[1], length, state))
                continue
            batch[position] = signal
        return torch.from_numpy(batch)

    def augment(self, value: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        if not self.config.noise_std:
            return value
        return value + torch.randn(value.shape, generator=generator) * self.config.noise_std

    # -- reading one row's file ----------------------------------------------------------------

    def _open(self, table: Table, position: int, issues: RowIssues) -> np.ndarray | None:
        """The row's signal, mapped from its file (only the header is read), as
        ``[channels, T]``; None, and a bad row, when it is missing or does not fit."""
        value = table.columns[self.column()][position]
        if is_missing(value):
            issues.bad_row(position, self.column(), "no signal file (empty)")
            return None
        written = str(value).strip()
        path = Path(written) if Path(written).is_absolute() else table.base_dir / written
        try:
            signal = np.load(path, mmap_mode="r", allow_pickle=False)
        except FileNotFoundError:
            folder = "" if Path(written).is_absolute() else f" in {table.base_dir}"
            issues.bad_row(position, self.column(), f"signal file {written!r} not found{folder}")
            return None
        except (OSError, ValueError) as exc:
            issues.bad_row(position, self.column(), f"signal file {written!r} is not a readable"
                           f" .npy array ({str(exc).splitlines()[0]})")
            return None
        problem = self._shape_problem(signal)
        if problem is not None:
            issues.bad_row(position, self.column(), f"signal file {written!r} {problem}")
            return None
        return signal.reshape(1, -1) if signal.ndim == 1 else signal

    def _shape_problem(self, signal: Any) -> str | None:
        channels = self.config.channels
        if not isinstance(signal, np.ndarray):
            return "is not a .npy array (an .npz archive?)"
        if signal.dtype.kind not in "biuf":
            return f"holds {signal.dtype} values, not numbers"
        if signal.ndim == 1 and channels == 1:
            return None
        if signal.ndim != 2 or signal.shape[0] != channels:
            return (f"holds an array of shape {list(signal.shape)}; {self.where}.channels is"
                    f" {channels}, so it must be [{channels}, T]")
        return None

    def _read(self, table: Table, position: int, issues: RowIssues) -> np.ndarray | None:
        signal = self._open(table, position, issues)
        return None if signal is None else np.asarray(signal, dtype=np.float32)

    def _length_problem(self, table: Table, position: int, steps: int, length: int,
                        state: State | None) -> str:
        written = str(table.columns[self.column()][position]).strip()
        if self.config.length:
            why = f"{self.where}.length is {length}"
        elif state:
            why = f"the model was trained on signals of {length}"
        else:
            why = (f"the others have {length}; bring every signal to one length (or set"
                   f" {self.where}.length to say which)")
        return f"signal file {written!r} has {steps} time steps but {why}"

"""What flows between components, described before any weight exists.

A component's config states the signal it gives from the signal it takes, so assembly can check
every connection of a spec statically and say how to fix a mismatch.

Each signal kind also knows its tensor's layout, so a consumer needs no case per kind:
:meth:`Signal.pool` reduces it to one vector a sample, :meth:`Signal.to_tokens` lays it out as
tokens, and :meth:`Signal.broadcast` spreads a per-feature vector over its positions (to scale or
shift it). All three keep :attr:`Signal.width` features. Presence masks are per sample and stay
the fusion's business: these methods see whole batches.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the module stays importable without torch (listing, docs, the CLI)
    from torch import Tensor


@dataclass(frozen=True)
class Signal:
    """Base of the shapes a component can give (batch dimension first, always)."""

    def describe(self) -> str:
        """A short phrase for messages: ``a vector of 64``."""
        raise self._missing("describe()")

    @property
    def width(self) -> int:
        """Features per position: D of a vector or tokens, C of a feature map or sequence.

        The vector :meth:`pool` gives and each token :meth:`to_tokens` gives have this width."""
        raise self._missing("width")

    def example_shape(self, batch: int) -> tuple[int, ...]:
        """A small tensor shape carrying this signal (for tests and conformance checks)."""
        raise self._missing("example_shape(batch)")

    def pool(self, x: Tensor) -> Tensor:
        """``x`` (a tensor carrying this signal) averaged over its positions: ``[B, width]``."""
        raise self._missing("pool(x)")

    def to_tokens(self, x: Tensor) -> Tensor:
        """``x`` as a sequence of tokens ``[B, N, width]``, one token a position."""
        raise self._missing("to_tokens(x)")

    def broadcast(self, v: Tensor) -> Tensor:
        """A per-feature vector ``v`` ``[B, width]`` viewed so that it broadcasts against a
        tensor carrying this signal: the same value at every position of a feature."""
        raise self._missing("broadcast(v)")

    def shape_problem(self, shape: tuple[int, ...]) -> str | None:
        """Why a tensor of ``shape`` does not carry this signal, or ``None`` when it does."""
        wanted = self.example_shape(1)
        fixed = self._fixed_dims()
        if len(shape) != len(wanted) or any(shape[d] != wanted[d] for d in fixed):
            layout = self.layout()
            return f"expected {self.describe()} ({layout}), got a tensor of shape {list(shape)}"
        return None

    def layout(self) -> str:
        """The tensor layout, e.g. ``[B, 64]``."""
        raise self._missing("layout()")

    def _fixed_dims(self) -> tuple[int, ...]:
        """Dimensions (after the batch) whose size this signal fixes."""
        raise self._missing("_fixed_dims()")

    def _missing(self, member: str) -> NotImplementedError:
        return NotImplementedError(
            f"signal {type(self).__name__} does not implement {member}; a Signal subclass"
            " implements describe, width, example_shape, layout, _fixed_dims, pool, to_tokens"
            " and broadcast")


@dataclass(frozen=True)
class Vector(Signal):
    """``[B, dim]``: one feature vector a sample."""

    dim: int

    def describe(self) -> str:
        return f"a vector of {self.dim}"

    @property
    def width(self) -> int:
        return self.dim

    def example_shape(self, batch: int) -> tuple[int, ...]:
        return (batch, self.dim)

    def pool(self, x: Tensor) -> Tensor:
        return x

    def to_tokens(self, x: Tensor) -> Tensor:
        return x.unsqueeze(1)  # one token

    def broadcast(self, v: Tensor) -> Tensor:
        return v

    def layout(self) -> str:
        return f"[B, {self.dim}]"

    def _fixed_dims(self) -> tuple[int, ...]:
        return (1,)


@dataclass(frozen=True)
class FeatureMap(Signal):
    """``[B, channels, H, W]``: an image or a convolutional feature map.

    ``bands`` optionally names each channel (``("red", "green", "blue", "nir")``): an adapter
    states what its channels are, and a backbone loading pretrained weights can match them to
    the bands its stem was trained on. Two maps with the same channel count connect whatever
    their band names.

    ``size`` optionally states ``(height, width)`` when every map has that size (an image
    adapter that resizes its images): a backbone built for one input size can then check it, or
    be built for it, before any weight exists. None: any size.
    """

    channels: int
    bands: tuple[str, ...] | None = None
    size: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        if self.bands is not None and len(self.bands) != self.channels:
            raise ValueError(f"{len(self.bands)} band names for {self.channels} channels")
        if self.size is not None and (len(self.size) != 2 or min(self.size) < 1):
            raise ValueError(f"size {self.size} is not (height, width)")

    def describe(self) -> str:
        return f"a feature map of {self.channels} channel{'s' if self.channels != 1 else ''}"

    def fits(self, other: Signal) -> bool:
        """Whether ``other`` connects where this map is taken (same channel count)."""
        return isinstance(other, FeatureMap) and other.channels == self.channels

    @property
    def width(self) -> int:
        return self.channels

    def example_shape(self, batch: int) -> tuple[int, ...]:
        return (batch, self.channels, 32, 32)

    def pool(self, x: Tensor) -> Tensor:
        return x.mean(dim=(2, 3))

    def to_tokens(self, x: Tensor) -> Tensor:
        return x.flatten(2).transpose(1, 2)  # H*W tokens of C, row by row

    def broadcast(self, v: Tensor) -> Tensor:
        return v[:, :, None, None]

    def layout(self) -> str:
        return f"[B, {self.channels}, H, W]"

    def _fixed_dims(self) -> tuple[int, ...]:
        return (1,)


@dataclass(frozen=True)
class Tokens(Signal):
    """``[B, N, dim]``: a sequence of N tokens (spatial positions, table columns, ...)."""

    dim: int

    def describe(self) -> str:
        return f"tokens of {self.dim}"

    @property
    def width(self) -> int:
        return self.dim

    def example_shape(self, batch: int) -> tuple[int, ...]:
        return (batch, 5, self.dim)

    def pool(self, x: Tensor) -> Tensor:
        return x.mean(dim=1)

    def to_tokens(self, x: Tensor) -> Tensor:
        return x

    def broadcast(self, v: Tensor) -> Tensor:
        return v[:, None, :]

    def layout(self) -> str:
        return f"[B, N, {self.dim}]"

    def _fixed_dims(self) -> tuple[int, ...]:
        return (2,)


@dataclass(frozen=True)
class Sequence(Signal):
    """``[B, channels, T]``: a 1-D signal over time (ECG leads, sensor channels), channels first.

    Unlike :class:`Tokens` the feature axis comes before the time axis, as 1-D convolutions
    take it; :meth:`pool` and :meth:`to_tokens` know that.
    """

    channels: int

    def describe(self) -> str:
        return f"a sequence of {self.channels} channel{'s' if self.channels != 1 else ''}"

    @property
    def width(self) -> int:
        return self.channels

    def example_shape(self, batch: int) -> tuple[int, ...]:
        return (batch, self.channels, 64)

    def pool(self, x: Tensor) -> Tensor:
        return x.mean(dim=2)

    def to_tokens(self, x: Tensor) -> Tensor:
        return x.transpose(1, 2)  # T tokens of C

    def broadcast(self, v: Tensor) -> Tensor:
        return v[:, :, None]

    def layout(self) -> str:
        return f"[B, {self.channels}, T]"

    def _fixed_dims(self) -> tuple[int, ...]:
        return (1,)


def example_signals() -> tuple[Signal, ...]:
    """One small signal of each kind, in the order conformance checks and docs try them."""
    return (FeatureMap(3), Vector(16), Tokens(16), Sequence(4))

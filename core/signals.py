"""What flows between components, described before any weight exists.

A component's config states the signal it gives from the signal it takes, so assembly can check
every connection of a spec statically and say how to fix a mismatch.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Signal:
    """Base of the shapes a component can give (batch dimension first, always)."""

    def describe(self) -> str:  # pragma: no cover - every subclass overrides
        raise NotImplementedError

    @property
    def width(self) -> int:
        """Features per position: D of a vector or tokens, C of a feature map."""
        raise NotImplementedError


@dataclass(frozen=True)
class Vector(Signal):
    """``[B, dim]``: one feature vector a sample."""

    dim: int

    def describe(self) -> str:
        return f"a vector of {self.dim}"

    @property
    def width(self) -> int:
        return self.dim


@dataclass(frozen=True)
class FeatureMap(Signal):
    """``[B, channels, H, W]``: an image or a convolutional feature map.

    ``bands`` optionally names each channel (``("red", "green", "blue", "nir")``): an adapter
    states what its channels are, and a backbone loading pretrained weights can match them to
    the bands its stem was trained on. Two maps with the same channel count connect whatever
    their band names.
    """

    channels: int
    bands: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if self.bands is not None and len(self.bands) != self.channels:
            raise ValueError(f"{len(self.bands)} band names for {self.channels} channels")

    def describe(self) -> str:
        return f"a feature map of {self.channels} channels"

    def fits(self, other: Signal) -> bool:
        """Whether ``other`` connects where this map is taken (same channel count)."""
        return isinstance(other, FeatureMap) and other.channels == self.channels

    @property
    def width(self) -> int:
        return self.channels


@dataclass(frozen=True)
class Tokens(Signal):
    """``[B, N, dim]``: a sequence of N tokens (spatial positions, table columns, ...)."""

    dim: int

    def describe(self) -> str:
        return f"tokens of {self.dim}"

    @property
    def width(self) -> int:
        return self.dim

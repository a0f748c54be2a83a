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
    """``[B, channels, H, W]``: an image or a convolutional feature map."""

    channels: int

    def describe(self) -> str:
        return f"a feature map of {self.channels} channels"

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

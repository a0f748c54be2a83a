"""The probe components: the smallest adapter, backbone, fusion and head of each signal, with
which the conformance kit makes a minimal spec around the component it checks, so that the
check depends on no other plugin."""

from __future__ import annotations

import types
from collections.abc import Mapping
from typing import TYPE_CHECKING, Literal

import torch
from pydantic import Field, PositiveInt
from torch import nn

from ._components import (
    AdapterConfig,
    Backbone,
    BackboneConfig,
    Component,
    Fusion,
    FusionConfig,
    Head,
    HeadConfig,
    ModalityAdapter,
)
from ._errors import ConnectionMismatch
from ._hooks import hookimpl
from ._registry import ComponentRecord, Registry
from ._signals import FeatureMap, Sequence, Signal, Tokens, Vector

if TYPE_CHECKING:
    pass

PROBE_PACKAGE = "polymodal-testing"
SUBJECT_PACKAGE = "polymodal-testing-subject"
PROBE_SIGNALS: dict[str, type[Signal]] = {
    "vector": Vector, "feature_map": FeatureMap, "tokens": Tokens, "sequence": Sequence,
}

#: Stages of the probe backbone, numbered like a ResNet's (0 the stem, 1-4 the stages).
PROBE_STAGES = 5


class ConformanceError(AssertionError):
    """A component class does not behave as polymodal requires; the message names the check."""


ConformanceError.__module__ = "polymodal.plugin"  # where plugin authors import it from


def _signal(name: str, width: int) -> Signal:
    return PROBE_SIGNALS[name](width)  # type: ignore[call-arg]


def probe_name(signal: Signal) -> str:
    for name, cls in PROBE_SIGNALS.items():
        if type(signal) is cls:
            return name
    raise ConformanceError(
        f"the conformance check's probes know the signals {', '.join(PROBE_SIGNALS)};"
        f" {signal.describe()} ({type(signal).__name__}) is not one of them, so no minimal"
        " spec can give or take it"
    )


def probe_shape(signal: Signal, batch: int, positions: int | None = None) -> tuple[int, ...]:
    """``signal.example_shape(batch)`` with each axis the signal leaves free (H and W of a
    feature map, N of tokens, T of a sequence) set to ``positions`` when given."""
    shape = signal.example_shape(batch)
    if positions is None:
        return shape
    fixed = {0, *signal._fixed_dims()}
    return tuple(size if axis in fixed else positions for axis, size in enumerate(shape))


class ProbeAdapter(ModalityAdapter):
    """Gives the signal its options name (a conformance-check helper)."""

    class Config(AdapterConfig):
        type: Literal["probe"] = "probe"
        signal: Literal["vector", "feature_map", "tokens", "sequence"] = Field(
            "vector", description="The kind of signal given.")
        width: PositiveInt = Field(8, description="Its width (dim or channels).")
        positions: PositiveInt | None = Field(
            None, description="Size of each position axis of its example input (default: the"
            " signal's example shape).")

        def gives(self) -> Signal:
            return _signal(self.signal, self.width)

    config: Config

    def __init__(self, config: Config, takes: None = None):
        super().__init__(config, takes)
        self.scale = nn.Parameter(torch.ones(()))

    def example_input(self, batch_size: int = 2) -> torch.Tensor:
        return torch.randn(probe_shape(self.config.gives(), batch_size, self.config.positions))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale


class ProbeBackbone(Backbone):
    """Keeps a feature map's channels through five 1x1 convolutions, its stages (a
    conformance-check helper for fusions that condition a backbone)."""

    class Config(BackboneConfig):
        type: Literal["probe"] = "probe"

        def gives(self, takes: Signal) -> Signal:
            if not isinstance(takes, FeatureMap):
                raise ConnectionMismatch("takes a feature map", wanted=FeatureMap(takes.width))
            return FeatureMap(takes.channels)

        def stages(self, takes: Signal) -> tuple[Signal, ...]:
            return (self.gives(takes),) * PROBE_STAGES

    config: Config

    def __init__(self, config: Config, takes: FeatureMap):
        super().__init__(config, takes)
        self.layers = nn.ModuleList(
            nn.Conv2d(takes.channels, takes.channels, 1) for _ in range(PROBE_STAGES))

    def stage_modules(self) -> list[nn.Module]:
        return list(self.layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
        return x


class ProbeFusion(Fusion):
    """Mean-pools each input to a vector and concatenates them (a conformance-check helper)."""

    class Config(FusionConfig):
        type: Literal["probe"] = "probe"

        def gives(self, takes: Mapping[str, Signal]) -> Signal:
            for signal in takes.values():
                probe_name(signal)
            return Vector(sum(s.width for s in takes.values()))

    config: Config

    def forward(self, features, present=None):
        return torch.cat([s.pool(features[n]) for n, s in self.takes.items()], dim=1)


class ProbeHead(Head):
    """One linear output with an MSE loss (a conformance-check helper)."""

    class Config(HeadConfig):
        type: Literal["probe"] = "probe"

    config: Config

    def __init__(self, config: Config, takes: Vector):
        super().__init__(config, takes)
        self.linear = nn.Linear(takes.dim, 1)

    def forward(self, fused: torch.Tensor) -> torch.Tensor:
        return self.linear(fused)

    def loss(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return nn.functional.mse_loss(output, target.view_as(output))

    def predict(self, output: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"value": output}


def _probes_plugin() -> types.ModuleType:
    module = types.ModuleType("polymodal._testing.probes")

    @hookimpl
    def polymodal_components():
        return [ProbeAdapter, ProbeBackbone, ProbeFusion, ProbeHead]

    module.polymodal_components = polymodal_components  # type: ignore[attr-defined]
    return module


def _subject_plugin(cls: type[Component]) -> types.ModuleType:
    module = types.ModuleType(f"{cls.__module__}.subject")

    @hookimpl
    def polymodal_components():
        return [cls]

    module.polymodal_components = polymodal_components  # type: ignore[attr-defined]
    return module


def check_registry(cls: type[Component], registry: Registry | None = None) -> tuple[Registry, ComponentRecord]:
    """A registry holding the installed plugins, the probes, and ``cls`` (registered if needed)."""
    registry = registry or Registry()
    registry.load_all()
    if not any(p.package == PROBE_PACKAGE for p in registry.plugins):
        registry.add_plugin(_probes_plugin(), PROBE_PACKAGE, name="probes")
    record = next((r for r in registry.components() if r.cls is cls), None)
    if record is None:
        plugin = registry.add_plugin(_subject_plugin(cls), SUBJECT_PACKAGE,
                                     name=f"{cls.__module__}.{cls.__qualname__}")
        if plugin.status != "loaded":
            raise ConformanceError(f"registering {cls.__qualname__} failed: {plugin.error}")
        record = next(r for r in plugin.components if r.cls is cls)
    return registry, record

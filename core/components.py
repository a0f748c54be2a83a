"""The four component kinds a plugin can provide.

A component is an ``nn.Module`` subclass of one of :class:`ModalityAdapter`, :class:`Backbone`,
:class:`Fusion` or :class:`Head`, with a nested Pydantic ``Config`` whose ``type`` literal names
it in specs. The config states what the component gives (:mod:`polymodal.signals`) from what it
takes, so a spec's connections are checked before any weight exists; the module is built from
the config and the signal it takes::

    class Identity(Backbone):
        \"\"\"Passes its input on unchanged.\"\"\"

        class Config(BackboneConfig):
            type: Literal["identity"] = "identity"

            def gives(self, takes: Signal) -> Signal:
                return takes

        def forward(self, x):
            return x
"""

from __future__ import annotations

import typing
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from .errors import ConnectionMismatch, PolymodalError
from .signals import Signal, Vector

if TYPE_CHECKING:
    from .data.binding import Codec, TargetCodec


class ComponentConfig(BaseModel):
    """Options of a component. Subclasses add typed, described fields and a ``type`` literal."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: str

    def describe(self) -> str:
        """A short phrase naming this configured component in messages (``timm resnet18``)."""
        return self.type


class AdapterConfig(ComponentConfig):
    def gives(self) -> Signal:
        """The signal this adapter gives from its raw input."""
        raise NotImplementedError

    def fix_for(self, wanted: Signal) -> str | None:
        """How to change this config so that it gives ``wanted`` (``set project_to: 3``)."""
        return None

    def codec(self) -> Codec | None:
        """How this adapter reads table columns (for training and prediction on tables);
        None: it cannot."""
        return None


class BackboneConfig(ComponentConfig):
    def gives(self, takes: Signal) -> Signal:
        """The features given for input ``takes``; raise :class:`ConnectionMismatch` if unfit."""
        raise NotImplementedError


class FusionConfig(ComponentConfig):
    def gives(self, takes: Mapping[str, Signal]) -> Signal:
        """The fused signal given for the features of each input, by input name."""
        raise NotImplementedError


class HeadConfig(ComponentConfig):
    inputs: list[str] | None = Field(
        None,
        description="Inputs this head uses (default: all). A head is computed only when all"
        " its inputs are in the batch; heads over different inputs get their own fusion.",
        min_length=1,
    )

    target: str | None = Field(
        None, description="Table column holding this head's target (default: the head's name).",
        min_length=1)

    def check_takes(self, takes: Signal) -> None:
        """Raise :class:`ConnectionMismatch` if the head cannot take ``takes``."""
        if not isinstance(takes, Vector):
            raise ConnectionMismatch(f"takes a vector, not {takes.describe()}", wanted=None)

    def codec(self) -> TargetCodec | None:
        """How this head reads its target column and decodes its outputs; None: it cannot."""
        return None


class Component(nn.Module):
    """Base of every component module; subclass one of the four kinds below."""

    kind: ClassVar[str]
    Config: ClassVar[type[ComponentConfig]]

    def __init__(self, config: ComponentConfig, takes: Any = None):
        super().__init__()
        self.config = config
        self.takes = takes

    def load_pretrained(self) -> None:
        """Load pretrained weights named by the config, if any.

        Called once after a fresh build, never when a model file is loaded (its weights come
        from the file)."""

    @classmethod
    def type_name(cls) -> str:
        return component_identity(cls)[1]


class ModalityAdapter(Component):
    """Turns one raw input (a batched tensor, or a dict of column tensors) into a signal."""

    kind = "adapter"
    Config = AdapterConfig


class Backbone(Component):
    """Turns an adapter's signal into features (a vector, a feature map or tokens)."""

    kind = "backbone"
    Config = BackboneConfig


class Fusion(Component):
    """Fuses the features of several inputs into one tensor."""

    kind = "fusion"
    Config = FusionConfig

    def forward(
        self, features: Mapping[str, torch.Tensor], present: Mapping[str, torch.Tensor] | None = None
    ) -> torch.Tensor:
        raise NotImplementedError


class Head(Component):
    """Predicts one task from the fused features and knows its loss."""

    kind = "head"
    Config = HeadConfig

    def loss(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The training loss of ``output`` (this head's forward result) against ``target``."""
        raise NotImplementedError

    def predict(self, output: torch.Tensor) -> dict[str, torch.Tensor]:
        """Turn outputs into predictions (``{"class": ..., "probabilities": ...}`` etc.)."""
        raise NotImplementedError


KIND_BASES: dict[str, type[Component]] = {
    "adapter": ModalityAdapter,
    "backbone": Backbone,
    "fusion": Fusion,
    "head": Head,
}
CONFIG_BASES: dict[str, type[ComponentConfig]] = {
    "adapter": AdapterConfig,
    "backbone": BackboneConfig,
    "fusion": FusionConfig,
    "head": HeadConfig,
}


def component_identity(cls: object) -> tuple[str, str]:
    """``(kind, type)`` of a component class, or a clear error saying why it is not one."""
    if not isinstance(cls, type) or not issubclass(cls, Component):
        raise PolymodalError(
            f"returned {cls!r}, which is not a component class (a subclass of"
            " polymodal.ModalityAdapter, Backbone, Fusion or Head)"
        )
    kind = next((k for k, base in KIND_BASES.items() if issubclass(cls, base)), None)
    if kind is None or cls in KIND_BASES.values():
        raise PolymodalError(f"{cls.__qualname__} must subclass one of the four component kinds")
    config = cls.__dict__.get("Config")
    base = CONFIG_BASES[kind]
    if not (isinstance(config, type) and issubclass(config, base)) or config is base:
        raise PolymodalError(
            f"{cls.__qualname__} needs its own nested `class Config({base.__name__})`"
        )
    field = config.model_fields.get("type")
    literal = field.annotation if field is not None else None
    if typing.get_origin(literal) is not Literal or len(typing.get_args(literal)) != 1:
        raise PolymodalError(
            f"{cls.__qualname__}.Config needs `type: Literal[\"<name>\"] = \"<name>\"`"
        )
    (type_name,) = typing.get_args(literal)
    if not isinstance(type_name, str) or not type_name or ":" in type_name:
        raise PolymodalError(f"{cls.__qualname__}.Config type {type_name!r} is not a valid name")
    try:
        config.model_json_schema()
    except Exception as exc:  # noqa: BLE001 - a broken config must not break the registry
        raise PolymodalError(f"{cls.__qualname__}.Config is invalid: {exc}") from None
    return kind, type_name

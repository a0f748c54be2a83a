"""polymodal: multimodal PyTorch models (images of any channel count, tables) from a spec file.

    import polymodal
    spec = polymodal.load_spec("claims.yaml")
    model = polymodal.build(spec)
    polymodal.save(model, "claims.safetensors")
    model = polymodal.load("claims.safetensors")
    result = polymodal.train("claims.yaml", "claims.csv", "claims.safetensors")
    polymodal.predict("claims.safetensors", "new_claims.csv", "predictions.csv")

Importing polymodal is light: torch, timm and torchvision are imported only when something
that needs them is used.
"""

from __future__ import annotations

import importlib
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

from .errors import (
    ComponentError,
    ConnectionMismatch,
    DataError,
    ModelFileError,
    PolymodalError,
    SpecError,
)
from .hooks import PLUGIN_API, hookimpl

try:
    __version__ = version("polymodal")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0"

_LAZY = {
    # name: module that defines it
    "load_spec": "spec",
    "ModelSpec": "spec",
    "build": "assembly",
    "plan": "assembly",
    "PolymodalModel": "assembly",
    "save": "modelfile",
    "load": "modelfile",
    "ModalityAdapter": "components",
    "Backbone": "components",
    "Fusion": "components",
    "Head": "components",
    "Component": "components",
    "ComponentConfig": "components",
    "AdapterConfig": "components",
    "BackboneConfig": "components",
    "FusionConfig": "components",
    "HeadConfig": "components",
    "Vector": "signals",
    "FeatureMap": "signals",
    "Tokens": "signals",
    "Sequence": "signals",
    "Signal": "signals",
    "get_registry": "registry",
    "list_components": "registry",
    "train": "training.engine",
    "evaluate": "training.inference",
    "predict": "training.inference",
    "decode": "training.inference",
    "read_table": "data.table",
}

__all__ = [
    "ComponentError",
    "ConnectionMismatch",
    "DataError",
    "ModelFileError",
    "PolymodalError",
    "SpecError",
    "PLUGIN_API",
    "hookimpl",
    "__version__",
    *_LAZY,
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'polymodal' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)


if TYPE_CHECKING:
    from .assembly import PolymodalModel, build, plan
    from .components import (
        AdapterConfig,
        Backbone,
        BackboneConfig,
        Component,
        ComponentConfig,
        Fusion,
        FusionConfig,
        Head,
        HeadConfig,
        ModalityAdapter,
    )
    from .modelfile import load, save
    from .registry import get_registry, list_components
    from .data.table import read_table
    from .signals import FeatureMap, Sequence, Signal, Tokens, Vector
    from .spec import ModelSpec, load_spec
    from .training.engine import train
    from .training.inference import evaluate, predict

"""polymodal: multimodal PyTorch models (images of any channel count, tables) from a spec file.

    import polymodal
    spec = polymodal.load_spec("claims.yaml")
    model = polymodal.build(spec)
    polymodal.save(model, "claims.safetensors")
    model = polymodal.load("claims.safetensors")
    result = polymodal.train("claims.yaml", "claims.csv", "claims.safetensors")
    polymodal.cv("claims.yaml", "claims.csv", folds=5, group_by="claim_id")
    polymodal.tune("claims.yaml", "claims.csv", trials=20)   # the spec's `search` section
    polymodal.predict("claims.safetensors", "new_claims.csv", "predictions.csv")
    polymodal.export("claims.safetensors", "claims.onnx")    # ONNX Runtime, no polymodal needed

Importing polymodal is light: torch, timm and torchvision are imported only when something
that needs them is used.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ._errors import (
    ComponentError,
    ConnectionMismatch,
    DataError,
    ExportError,
    ModelFileError,
    PolymodalError,
    SpecError,
)
from ._hooks import MOVED_TO_PLUGIN_API
from ._version import __version__

_LAZY = {
    # name: private module that defines it
    "load_spec": "_spec",
    "ModelSpec": "_spec",
    "build": "_assembly",
    "plan": "_assembly",
    "PolymodalModel": "_assembly",
    "save": "_modelfile",
    "load": "_modelfile",
    "get_registry": "_registry",
    "list_components": "_registry",
    "train": "_training.engine",
    "cv": "_training.cv",
    "tune": "_training.tune",
    "evaluate": "_training.inference",
    "predict": "_training.inference",
    "decode": "_training.inference",
    "encode": "_training.inference",
    "explain": "_training.explain",
    "read_table": "_data.table",
    "export": "_export",
}

__all__ = [
    "ComponentError",
    "ConnectionMismatch",
    "DataError",
    "ExportError",
    "ModelFileError",
    "PolymodalError",
    "SpecError",
    "__version__",
    *_LAZY,
]


def __getattr__(name: str) -> Any:
    if name == "plugin":  # `import polymodal` then `polymodal.plugin.hookimpl`
        return importlib.import_module(".plugin", __name__)
    module = _LAZY.get(name)
    if module is None:
        if name in MOVED_TO_PLUGIN_API:
            # A plugin written for plugin API 1 imports these from here: say what changed.
            raise AttributeError(
                f"polymodal.{name} is part of the plugin API, which moved to polymodal.plugin"
                f" in plugin API 2 (`from polymodal.plugin import {name}`); a plugin importing"
                " it from `polymodal` was written for plugin API 1")
        raise AttributeError(f"module 'polymodal' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)


if TYPE_CHECKING:  # the names of _LAZY, for type checkers; `X as X` marks a re-export
    from ._assembly import PolymodalModel as PolymodalModel, build as build, plan as plan
    from ._data.table import read_table as read_table
    from ._export import export as export
    from ._modelfile import load as load, save as save
    from ._registry import get_registry as get_registry, list_components as list_components
    from ._spec import ModelSpec as ModelSpec, load_spec as load_spec
    from ._training.cv import cv as cv
    from ._training.engine import train as train
    from ._training.explain import explain as explain
    from ._training.inference import (
        decode as decode,
        encode as encode,
        evaluate as evaluate,
        predict as predict,
    )
    from ._training.tune import tune as tune

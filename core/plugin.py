"""The plugin API: everything a polymodal plugin may import, and nothing else.

A plugin (built-in or third-party) imports from this module and from the user API of
``polymodal`` only; every other module of polymodal is private and may change between
releases. The names below are stable within one :data:`PLUGIN_API` version; a plugin module
declares the version it is written for as ``POLYMODAL_PLUGIN_API = 2``, and polymodal refuses a
plugin written for another version with a message naming both.

Importing this module is light: torch is imported when the component bases or a codec are
first used, not before.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ._errors import (
    ComponentError,
    ConnectionMismatch,
    DataError,
    ModelFileError,
    PolymodalError,
    SpecError,
    did_you_mean,
)
from ._hooks import PLUGIN_API, hookimpl

_LAZY = {
    # The four component kinds and their configs.
    "Component": "_components",
    "ComponentConfig": "_components",
    "ModalityAdapter": "_components",
    "AdapterConfig": "_components",
    "Backbone": "_components",
    "BackboneConfig": "_components",
    "Fusion": "_components",
    "FusionConfig": "_components",
    "FusionInputs": "_components",
    "Head": "_components",
    "HeadConfig": "_components",
    "Modulate": "_components",
    # Signals: what flows between components.
    "Signal": "_signals",
    "Vector": "_signals",
    "FeatureMap": "_signals",
    "Tokens": "_signals",
    "Sequence": "_signals",
    # Building blocks.
    "mlp": "_layers",
    "Activation": "_layers",
    "Norm": "_layers",
    # Freezing and pretrained weights.
    "Freeze": "_freezing",
    "PretrainedImageConfig": "_weights",
    "adapt_and_load": "_weights",
    "read_weights": "_weights",
    "download_failed": "_weights",
    # Reading table columns: codecs and what they report.
    "Codec": "_data.binding",
    "TargetCodec": "_data.binding",
    "RowIssues": "_data.binding",
    "State": "_data.binding",
    "Table": "_data.table",
    "is_missing": "_data.table",
    "category": "_data.encoding",
    "key": "_data.encoding",
    "fit_vocabulary": "_data.encoding",
    "lookup": "_data.encoding",
    "encode_categories": "_data.encoding",
    "numeric_column": "_data.encoding",
    "listing": "_data.encoding",
    "names_for_count": "_data.encoding",
    # The conformance kit.
    "check_component": "_testing",
    "check_export": "_testing",
    "ConformanceError": "_testing",
    "ConformanceReport": "_testing",
}

__all__ = [
    "PLUGIN_API",
    "hookimpl",
    "ComponentError",
    "ConnectionMismatch",
    "DataError",
    "ModelFileError",
    "PolymodalError",
    "SpecError",
    "did_you_mean",
    *_LAZY,
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'polymodal.plugin' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"polymodal.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)


if TYPE_CHECKING:
    from ._components import (
        AdapterConfig,
        Backbone,
        BackboneConfig,
        Component,
        ComponentConfig,
        Fusion,
        FusionConfig,
        FusionInputs,
        Head,
        HeadConfig,
        ModalityAdapter,
        Modulate,
    )
    from ._data.binding import Codec, RowIssues, State, TargetCodec
    from ._data.encoding import (
        category,
        encode_categories,
        fit_vocabulary,
        key,
        listing,
        lookup,
        names_for_count,
        numeric_column,
    )
    from ._data.table import Table, is_missing
    from ._freezing import Freeze
    from ._layers import Activation, Norm, mlp
    from ._signals import FeatureMap, Sequence, Signal, Tokens, Vector
    from ._testing import ConformanceError, ConformanceReport, check_component, check_export
    from ._weights import PretrainedImageConfig, adapt_and_load, download_failed, read_weights

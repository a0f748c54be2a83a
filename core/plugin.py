"""The plugin API: everything a polymodal plugin may import, and nothing else.

A plugin (built-in or third-party) imports from this module and from the user API of
``polymodal`` only; every other module of polymodal is private and may change between
releases. The names below are stable within one :data:`PLUGIN_API` version; a plugin module
declares the version it is written for as ``POLYMODAL_PLUGIN_API = 2``, and polymodal refuses a
plugin written for another version with a message naming both. :data:`PLUGIN_API_MINOR` counts
additions within a version (2.1: ``Codec.absent``, ``TargetCodec.fixed_options``,
``TargetCodec.holds_classes`` and the explain hooks; 2.2: ``Backbone.discrete_input``,
``Component.example_takes``, ``Codec.reads_files`` and the image kit
:mod:`polymodal.imagekit`, for plugins of images; 2.3: ``Codec.keep_encoded``; 2.4:
``Codec.expects``): a plugin
written for 2.0 keeps working unchanged.

Importing this module is light: torch is imported when the component bases or a codec are
first used, not before.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ._errors import (
    ComponentError,
    ConfigError,
    ConnectionMismatch,
    DataError,
    ModelFileError,
    PolymodalError,
    SpecError,
    did_you_mean,
)
from ._hooks import PLUGIN_API, PLUGIN_API_MINOR, hookimpl

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
    "changed_options": "_components",
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
    # Freezing and pretrained weights (the image-only helpers live in polymodal.imagekit; the
    # two named here stay for plugins written for plugin API 2.0 and 2.1).
    "Freeze": "_freezing",
    "PretrainedImageConfig": "imagekit",
    "adapt_and_load": "imagekit",
    "read_weights": "_weights",
    "download_failed": "_weights",
    # Reading table columns (docs/plugins.md, "Reading table columns: codecs"): an adapter's
    # codec, a head's target codec with the metrics it declares, the table they read, and where
    # they report bad rows.
    "Codec": "_data.codec",
    "TargetCodec": "_data.codec",
    "Metric": "_data.codec",
    "RowIssues": "_data.codec",
    "State": "_data.codec",
    "Table": "_data.table",
    "is_missing": "_data.table",
    # The conformance kit.
    "check_component": "_testing",
    "check_export": "_testing",
    "ConformanceError": "_testing",
    "ConformanceReport": "_testing",
}

__all__ = [
    "PLUGIN_API",
    "PLUGIN_API_MINOR",
    "hookimpl",
    "ComponentError",
    "ConfigError",
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


if TYPE_CHECKING:  # the names of _LAZY, for type checkers; `X as X` marks a re-export
    from ._components import (
        AdapterConfig as AdapterConfig,
        Backbone as Backbone,
        BackboneConfig as BackboneConfig,
        Component as Component,
        ComponentConfig as ComponentConfig,
        Fusion as Fusion,
        FusionConfig as FusionConfig,
        FusionInputs as FusionInputs,
        Head as Head,
        HeadConfig as HeadConfig,
        ModalityAdapter as ModalityAdapter,
        Modulate as Modulate,
        changed_options as changed_options,
    )
    from ._data.codec import (
        Codec as Codec,
        Metric as Metric,
        RowIssues as RowIssues,
        State as State,
        TargetCodec as TargetCodec,
    )
    from ._data.table import Table as Table, is_missing as is_missing
    from ._freezing import Freeze as Freeze
    from ._layers import Activation as Activation, Norm as Norm, mlp as mlp
    from ._signals import (
        FeatureMap as FeatureMap,
        Sequence as Sequence,
        Signal as Signal,
        Tokens as Tokens,
        Vector as Vector,
    )
    from ._testing import (
        ConformanceError as ConformanceError,
        ConformanceReport as ConformanceReport,
        check_component as check_component,
        check_export as check_export,
    )
    from ._weights import download_failed as download_failed, read_weights as read_weights
    from .imagekit import (
        PretrainedImageConfig as PretrainedImageConfig,
        adapt_and_load as adapt_and_load,
    )

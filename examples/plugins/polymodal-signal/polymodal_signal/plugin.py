"""The entry point of polymodal-signal: the hook that hands polymodal its components."""

from polymodal.plugin import hookimpl

from .adapter import SignalAdapter
from .tcn import TCNBackbone

POLYMODAL_PLUGIN_API = 2


@hookimpl
def polymodal_components():
    return [SignalAdapter, TCNBackbone]

"""The entry point of polymodal-signal: the hook that hands polymodal its components."""

import polymodal

from .adapter import SignalAdapter
from .tcn import TCNBackbone

POLYMODAL_PLUGIN_API = 1


@polymodal.hookimpl
def polymodal_components():
    return [SignalAdapter, TCNBackbone]

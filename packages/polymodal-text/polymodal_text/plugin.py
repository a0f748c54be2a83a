"""The entry point of polymodal-text: the hook that hands polymodal its components."""

from polymodal.plugin import hookimpl

from .adapter import TextAdapter
from .backbone import TransformersBackbone

POLYMODAL_PLUGIN_API = 2


@hookimpl
def polymodal_components():
    return [TextAdapter, TransformersBackbone]

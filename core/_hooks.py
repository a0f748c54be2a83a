"""The plugin hook: what a plugin module implements to contribute components.

A plugin is a module named by an entry point in group ``polymodal``::

    import polymodal

    @polymodal.hookimpl
    def polymodal_components():
        return [MyAdapter, MyHead]
"""

from __future__ import annotations

import pluggy

PROJECT = "polymodal"
#: The plugin interface version. A plugin module may declare ``POLYMODAL_PLUGIN_API = N``; one
#: whose N differs from this is reported as incompatible instead of being loaded.
PLUGIN_API = 2

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def polymodal_components() -> list[type]:
    """Return the component classes (subclasses of ModalityAdapter, Backbone, Fusion or Head)
    this plugin provides."""
    raise NotImplementedError

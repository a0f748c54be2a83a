"""The plugin hook: what a plugin module implements to contribute components.

A plugin is a module named by an entry point in group ``polymodal``::

    from polymodal.plugin import hookimpl

    POLYMODAL_PLUGIN_API = 2

    @hookimpl
    def polymodal_components():
        return [MyAdapter, MyHead]
"""

from __future__ import annotations

import pluggy

PROJECT = "polymodal"
#: The plugin interface version. A plugin module declares ``POLYMODAL_PLUGIN_API = N`` (or its
#: static manifest states ``api = N``); a plugin written for another version, or declaring none,
#: is refused with a message naming both versions instead of being loaded.
PLUGIN_API = 2
#: Additions within :data:`PLUGIN_API` that a plugin may use, and that a plugin written for an
#: earlier minor version never needs: 1 -- ``Codec.absent`` (an input absent in some rows),
#: ``TargetCodec.fixed_options`` (a head's classes settled on a whole table before it is split)
#: and the explain hooks; 2 -- the image kit, :mod:`polymodal.imagekit`,
#: ``Backbone.discrete_input`` (a backbone reading token ids: no gradient to its input),
#: ``Component.example_takes`` (the input its conformance check takes by default) and
#: ``Codec.reads_files`` (the columns whose cells name files, for polymodal serve); 3 --
#: ``Codec.keep_encoded`` (encoded training rows kept in memory across epochs); 4 --
#: ``Codec.expects`` (what a row's value must be, for a model's clients); 5 --
#: ``Codec.read_sent`` (a file sent to polymodal serve read as its request is read).
PLUGIN_API_MINOR = 5

#: Names that plugin API 1 took from ``polymodal`` itself; they live in ``polymodal.plugin``.
MOVED_TO_PLUGIN_API = frozenset({
    "ModalityAdapter", "Backbone", "Fusion", "Head", "Component", "ComponentConfig",
    "AdapterConfig", "BackboneConfig", "FusionConfig", "HeadConfig", "Vector", "FeatureMap",
    "Tokens", "Sequence", "Signal", "hookimpl", "PLUGIN_API",
})

#: What changed since each earlier plugin API version, for the message refusing such a plugin.
API_CHANGES: dict[int, str] = {
    1: "everything a plugin may use moved to the one module `polymodal.plugin` (`from"
       " polymodal.plugin import Head, hookimpl, ...`), the other modules of polymodal became"
       " private, and a plugin module declares `POLYMODAL_PLUGIN_API = 2`",
}

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def polymodal_components() -> list[type]:
    """Return the component classes (subclasses of ModalityAdapter, Backbone, Fusion or Head)
    this plugin provides."""
    raise NotImplementedError

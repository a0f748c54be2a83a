"""What the registry knows of a plugin and of each component it provides."""

from __future__ import annotations

import builtins
import importlib.metadata as metadata
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from ._errors import PolymodalError

if TYPE_CHECKING:
    from ._components import Component


def normalize_package(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


@dataclass
class ComponentRecord:
    """A component known to the registry, loaded or not yet."""

    kind: str
    type: str
    package: str
    version: str
    plugin: str
    summary: str
    target: str
    cls: builtins.type[Component] | None = None  # `type` is a field of this class

    @property
    def canonical(self) -> str:
        return f"{self.package}:{self.type}"


@dataclass
class PluginInfo:
    """One entry point of group ``polymodal`` and what became of it."""

    name: str
    package: str
    version: str
    value: str
    status: str = "pending"  # lazy (manifest, not imported) | loaded | failed | disabled
    error: str | None = None
    api: int | None = None  # the plugin API it is written for, once known
    components: list[ComponentRecord] = field(default_factory=list)
    entry_point: metadata.EntryPoint | None = field(default=None, repr=False)
    #: (kind, type) of each component its manifest lists; None: listed by no manifest.
    listed: frozenset[tuple[str, str]] | None = None
    manifest: Path | None = None  # a third-party plugin's manifest file

    @property
    def label(self) -> str:
        return f"{self.package} {self.version}, entry point {self.name!r} ({self.value})"

    @property
    def key(self) -> str:
        return f"{self.package}:{self.name}"

    @property
    def top_module(self) -> str:
        return self.value.split(":", 1)[0].split(".", 1)[0]


class Refused(PolymodalError):
    """A plugin's code fails a check of the registry (its API version, its component classes,
    its manifest); unlike a failing import or hook, the same files always fail it again."""

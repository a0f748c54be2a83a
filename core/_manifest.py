"""Static manifests: what a plugin provides, readable without importing the plugin.

The format is the one of the built-ins' entries in ``registry.toml``::

    [[plugin]]
    entry_point = "image"                     # the entry point's name in group "polymodal"
    api = 1                                   # the plugin API it is built for (optional)
    [[plugin.component]]
    kind = "adapter"
    type = "image"
    target = "polymodal_plugins.image:ImageAdapter"
    summary = "Images of any channel count ..."

A third-party distribution ships the same tables in a file ``polymodal.toml`` inside the
top-level package its entry points name. ``registry.toml`` also lists known extra plugin
packages (``[[extra]]``), so an unknown type can be answered with the ``pip install`` line.
"""

from __future__ import annotations

import importlib.util
import sys
from dataclasses import dataclass, field
from pathlib import Path

from ._errors import PolymodalError

if sys.version_info >= (3, 11):
    import tomllib
else:  # the same parser, before it joined the standard library
    import tomli as tomllib

KINDS = ("adapter", "backbone", "fusion", "head")
MANIFEST_NAME = "polymodal.toml"
CATALOG_PATH = Path(__file__).with_name("registry.toml")


@dataclass(frozen=True)
class ComponentEntry:
    """One component as a manifest states it."""

    kind: str
    type: str
    target: str
    summary: str = ""


@dataclass(frozen=True)
class ExtraPackage:
    """A plugin package polymodal knows of, installable with pip."""

    package: str
    requirement: str
    summary: str
    components: tuple[tuple[str, str], ...] = field(default_factory=tuple)  # (kind, type)


@dataclass(frozen=True)
class Manifest:
    plugins: dict[str, tuple[ComponentEntry, ...]]  # entry-point name -> components
    extras: tuple[ExtraPackage, ...] = ()
    #: entry-point name -> the plugin API it is built for, where the manifest states it, so an
    #: incompatible plugin is reported without importing it.
    api: dict[str, int] = field(default_factory=dict)


def parse_manifest(text: str, where: str) -> Manifest:
    """Parse manifest TOML; ``where`` names the file in errors."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise PolymodalError(f"{where}: not valid TOML: {exc}") from None
    plugins: dict[str, tuple[ComponentEntry, ...]] = {}
    api: dict[str, int] = {}
    for i, table in enumerate(data.get("plugin", [])):
        loc = f"{where}: plugin[{i}]"
        name = table.get("entry_point")
        if not isinstance(name, str):
            raise PolymodalError(f"{loc}: needs entry_point = \"<entry point name>\"")
        if "api" in table:
            if not isinstance(table["api"], int) or isinstance(table["api"], bool):
                raise PolymodalError(f"{loc}.api: must be an integer, not {table['api']!r}")
            api[name] = table["api"]
        entries = []
        for j, comp in enumerate(table.get("component", [])):
            missing = [k for k in ("kind", "type", "target") if not isinstance(comp.get(k), str)]
            if missing:
                raise PolymodalError(f"{loc}.component[{j}]: missing {', '.join(missing)}")
            if comp["kind"] not in KINDS:
                raise PolymodalError(
                    f"{loc}.component[{j}].kind: {comp['kind']!r} is not one of {', '.join(KINDS)}"
                )
            entries.append(
                ComponentEntry(comp["kind"], comp["type"], comp["target"], comp.get("summary", ""))
            )
        plugins[name] = tuple(entries)
    extras = tuple(
        ExtraPackage(
            package=e["package"],
            requirement=e.get("requirement", e["package"]),
            summary=e.get("summary", ""),
            components=tuple((c["kind"], c["type"]) for c in e.get("component", [])),
        )
        for e in data.get("extra", [])
    )
    return Manifest(plugins=plugins, extras=extras, api=api)


def read_manifest(path: Path) -> Manifest:
    return parse_manifest(path.read_text(encoding="utf-8"), str(path))


def catalog() -> Manifest:
    """polymodal's own ``registry.toml``: the built-in plugins and the known extra packages."""
    return read_manifest(CATALOG_PATH)


def find_package_manifest(module: str) -> Path | None:
    """Locate ``polymodal.toml`` in the top-level package of ``module`` without importing it.

    ``importlib.util.find_spec`` on a top-level name only searches the path; it executes nothing.
    """
    top = module.split(".", 1)[0]
    try:
        spec = importlib.util.find_spec(top)
    except (ImportError, ValueError):
        return None
    if spec is None:
        return None
    dirs = list(spec.submodule_search_locations or [])
    if not dirs and spec.origin:
        dirs = [str(Path(spec.origin).parent)]
    for directory in dirs:
        candidate = Path(directory) / MANIFEST_NAME
        if candidate.is_file():
            return candidate
    return None


def _toml_string(text: str) -> str:
    # JSON string escapes are valid TOML basic-string escapes.
    import json

    return json.dumps(text, ensure_ascii=False)


def render_plugins(plugins: dict[str, tuple[ComponentEntry, ...]], api: dict[str, int]) -> str:
    """The ``[[plugin]]`` tables of a manifest, for entry-point name -> components and the
    plugin API each entry point is built for."""
    blocks = []
    for entry_point, components in plugins.items():
        lines = ["[[plugin]]", f"entry_point = {_toml_string(entry_point)}",
                 f"api = {api[entry_point]}"]
        for comp in components:
            lines += [
                "",
                "[[plugin.component]]",
                f"kind = {_toml_string(comp.kind)}",
                f"type = {_toml_string(comp.type)}",
                f"target = {_toml_string(comp.target)}",
                f"summary = {_toml_string(comp.summary)}",
            ]
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks) + "\n"


def merge_plugins(existing: str, plugins_text: str) -> str:
    """``existing`` manifest text with its ``[[plugin]]`` tables replaced by ``plugins_text``.

    What precedes the first ``[[plugin]]`` (comments) and the ``[[extra]]`` tables after them are
    kept, so the catalog's hand-written parts survive regeneration."""
    lines = existing.splitlines()

    def first(prefix: str, start: int = 0) -> int | None:
        return next((i for i in range(start, len(lines)) if lines[i].startswith(prefix)), None)

    start = first("[[plugin]]")
    if start is None:
        extra = first("[[extra]]")
        head = lines if extra is None else lines[:extra]
        tail = [] if extra is None else lines[extra:]
    else:
        head = lines[:start]
        extra = first("[[extra]]", start)
        tail = [] if extra is None else lines[extra:]
    head_text = "\n".join(head).rstrip()
    parts = [head_text + "\n\n" if head_text else "", plugins_text]
    if tail:
        parts.append("\n" + "\n".join(tail).rstrip() + "\n")
    return "".join(parts)

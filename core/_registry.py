"""Plugin discovery and the component registry.

Each entry point in group ``polymodal`` is one plugin, loaded on its own so a broken plugin is
recorded with its reason and never stops the others (pluggy's bulk loader stops at the first
failure and skips duplicate names silently). A plugin whose components are listed in a static
manifest is not imported until a spec uses one of them, so listing imports no plugin code; a
manifest that states another plugin API marks the plugin incompatible without importing it.

Environment:
    ``POLYMODAL_DISABLE_PLUGINS=a,b``  plugins (entry-point or package names) never imported.
    ``POLYMODAL_PLUGINS=a,b``          allow-list: only these plugins are used (reproducible runs).
    A name in both is disabled: disabling wins.
"""

from __future__ import annotations

import importlib.metadata as metadata
import os
import re
import traceback
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pluggy

from . import _hooks as hooks
from ._errors import ComponentError, PolymodalError, did_you_mean
from ._manifest import KINDS, ComponentEntry, Manifest, catalog, find_package_manifest, read_manifest

if TYPE_CHECKING:
    from ._components import Component

ENTRY_POINT_GROUP = "polymodal"
DISABLE_ENV = "POLYMODAL_DISABLE_PLUGINS"
ALLOW_ENV = "POLYMODAL_PLUGINS"
CORE_PACKAGE = "polymodal"


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
    cls: type[Component] | None = None

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
    api: int | None = None  # the plugin API it is built for, once known
    components: list[ComponentRecord] = field(default_factory=list)
    entry_point: metadata.EntryPoint | None = field(default=None, repr=False)

    @property
    def label(self) -> str:
        return f"{self.package} {self.version}, entry point {self.name!r} ({self.value})"


def _env_names(var: str) -> set[str] | None:
    raw = os.environ.get(var)
    if raw is None or not raw.strip():
        return None
    return {part.strip() for part in raw.split(",") if part.strip()}


def summary_of(cls: type) -> str:
    """The first paragraph of a class's docstring, on one line."""
    doc = (cls.__doc__ or "").strip()
    first = doc.split("\n\n", 1)[0]
    return " ".join(line.strip() for line in first.splitlines()).strip()


def _selected(names: set[str], entry_point: str, package: str) -> bool:
    """Whether a name list (from the environment) names this entry point or its package."""
    wanted = {normalize_package(n) if ":" not in n else n for n in names}
    return bool(
        {entry_point, package, f"{package}:{entry_point}"} & (names | wanted)
    )


class Registry:
    """Every plugin found through entry points, and the components they provide."""

    def __init__(self, entry_points: list[metadata.EntryPoint] | None = None):
        self.plugins: list[PluginInfo] = []
        self.manager = pluggy.PluginManager(hooks.PROJECT)
        self.manager.add_hookspecs(hooks)
        self._catalog: Manifest | None = None
        self._manifests: dict[Any, Manifest] = {}
        if entry_points is None:
            entry_points = list(metadata.entry_points(group=ENTRY_POINT_GROUP))
        disabled = _env_names(DISABLE_ENV) or set()
        allowed = _env_names(ALLOW_ENV)
        for ep in entry_points:
            self._discover(ep, disabled, allowed)

    # -- discovery -------------------------------------------------------------------------
    def _discover(self, ep: metadata.EntryPoint, disabled: set[str], allowed: set[str] | None):
        dist = getattr(ep, "dist", None)
        package = normalize_package(dist.metadata["Name"]) if dist is not None else "unknown"
        version = dist.version if dist is not None else "unknown"
        plugin = PluginInfo(ep.name, package, version, ep.value, entry_point=ep)
        self.plugins.append(plugin)
        if _selected(disabled, ep.name, package):
            plugin.status, plugin.error = "disabled", f"disabled by {DISABLE_ENV}"
            return
        if allowed is not None and not _selected(allowed, ep.name, package):
            plugin.status, plugin.error = "disabled", f"not in {ALLOW_ENV}"
            return
        try:
            entries = self._manifest_entries(plugin)
        except PolymodalError as exc:
            plugin.status, plugin.error = "failed", str(exc)
            return
        if plugin.api is not None and plugin.api != hooks.PLUGIN_API:
            plugin.status, plugin.error = "failed", _api_mismatch(plugin)
            return
        if entries is None:
            self._activate(plugin)
            return
        plugin.status = "lazy"
        plugin.components = [
            ComponentRecord(e.kind, e.type, package, version, ep.name, e.summary, e.target)
            for e in entries
        ]

    def _manifest_entries(self, plugin: PluginInfo) -> tuple[ComponentEntry, ...] | None:
        if plugin.package == CORE_PACKAGE:
            manifest = self.catalog
        else:
            module = plugin.value.split(":", 1)[0]
            path = find_package_manifest(module)
            if path is None:
                return None
            if path not in self._manifests:
                self._manifests[path] = read_manifest(path)
            manifest = self._manifests[path]
        if plugin.name in manifest.api:
            plugin.api = manifest.api[plugin.name]
        return manifest.plugins.get(plugin.name)

    @property
    def catalog(self) -> Manifest:
        if self._catalog is None:
            self._catalog = catalog()
        return self._catalog

    def _activate(self, plugin: PluginInfo) -> None:
        """Import a plugin, register it with pluggy and collect its components."""

        assert plugin.entry_point is not None
        try:
            obj = plugin.entry_point.load()
        except BaseException as exc:  # noqa: BLE001 - any failure of third-party code is reported
            if isinstance(exc, KeyboardInterrupt):
                raise
            plugin.status = "failed"
            plugin.error = f"import failed: {type(exc).__name__}: {exc}"
            plugin.components = []
            plugin.error += _origin(exc)
            return
        self._register(plugin, obj)

    def add_plugin(self, obj: object, package: str, version: str = "0", name: str | None = None) -> PluginInfo:
        """Register a plugin object (a module or any object with the hook) without an entry point.

        For tests of components that are not installed; it is checked like any plugin, and a
        failure is recorded in ``plugins`` like one from an entry point."""
        plugin = PluginInfo(name or getattr(obj, "__name__", package), normalize_package(package),
                            version, getattr(obj, "__name__", repr(obj)))
        self.plugins.append(plugin)
        self._register(plugin, obj)
        return plugin

    def _register(self, plugin: PluginInfo, obj: object) -> None:
        from ._components import component_identity

        listed = {(c.kind, c.type): c for c in plugin.components}
        plugin.api = getattr(obj, "POLYMODAL_PLUGIN_API", hooks.PLUGIN_API)
        if plugin.api != hooks.PLUGIN_API:
            plugin.status, plugin.error = "failed", _api_mismatch(plugin)
            plugin.components = []
            return
        try:
            self.manager.register(obj, name=f"{plugin.package}:{plugin.name}")
            impls = [
                impl
                for impl in self.manager.hook.polymodal_components.get_hookimpls()
                if impl.plugin is obj
            ]
            if not impls:
                raise PolymodalError("implements no polymodal_components() hook")
            classes: list[Any] = []
            for impl in impls:
                returned = impl.function()
                if not isinstance(returned, (list, tuple)):
                    raise PolymodalError(
                        f"polymodal_components() returned {type(returned).__name__},"
                        " not a list of component classes"
                    )
                classes.extend(returned)
            records = []
            for cls in classes:
                kind, type_name = component_identity(cls)
                records.append(
                    ComponentRecord(
                        kind, type_name, plugin.package, plugin.version, plugin.name,
                        summary_of(cls), f"{cls.__module__}:{cls.__qualname__}", cls,
                    )
                )
        except Exception as exc:  # noqa: BLE001
            self._unregister(obj)
            plugin.status = "failed"
            plugin.error = str(exc) if isinstance(exc, PolymodalError) else (
                f"{type(exc).__name__}: {exc}{_origin(exc)}"
            )
            plugin.components = []
            return
        seen: set[tuple[str, str]] = set()
        for rec in records:
            key = (rec.kind, rec.type)
            if key in seen:
                self._unregister(obj)
                plugin.status = "failed"
                plugin.error = f"provides {rec.kind} {rec.type!r} twice"
                plugin.components = []
                return
            seen.add(key)
        if listed:
            missing = sorted(set(listed) - seen)
            if missing:
                self._unregister(obj)
                plugin.status = "failed"
                plugin.error = "its manifest lists " + ", ".join(
                    f"{k} {t!r}" for k, t in missing
                ) + " but the plugin does not provide " + ("it" if len(missing) == 1 else "them")
                plugin.components = []
                return
        plugin.components = records
        plugin.status = "loaded"

    def _unregister(self, obj: object) -> None:
        if self.manager.is_registered(obj):
            self.manager.unregister(obj)

    # -- queries ---------------------------------------------------------------------------
    def components(self, kind: str | None = None) -> list[ComponentRecord]:
        found = [
            c
            for p in self.plugins
            if p.status in ("lazy", "loaded")
            for c in p.components
            if kind is None or c.kind == kind
        ]
        return sorted(found, key=lambda c: (KINDS.index(c.kind), c.type, c.package))

    def failures(self) -> list[PluginInfo]:
        return [p for p in self.plugins if p.status == "failed"]

    def duplicates(self) -> dict[tuple[str, str], list[ComponentRecord]]:
        """(kind, type) pairs that more than one package provides."""
        by_key: dict[tuple[str, str], list[ComponentRecord]] = {}
        for rec in self.components():
            by_key.setdefault((rec.kind, rec.type), []).append(rec)
        return {k: v for k, v in by_key.items() if len(v) > 1}

    def resolve(self, kind: str, name: str) -> ComponentRecord:
        """The component of ``kind`` that ``name`` (``type`` or ``package:type``) means."""
        if ":" in name:
            package, short = name.split(":", 1)
            package = normalize_package(package)
            matches = [
                c for c in self.components(kind) if c.package == package and c.type == short
            ]
        else:
            short = name
            matches = [c for c in self.components(kind) if c.type == name]
        if len(matches) == 1:
            return matches[0]
        if len(matches) > 1 and len({c.package for c in matches}) == 1:
            raise ComponentError(
                f"{kind} type {name!r} is provided twice by {matches[0].package} (entry points"
                f" {', '.join(repr(c.plugin) for c in matches)}); disable one with {DISABLE_ENV}"
            )
        if len(matches) > 1:
            options = " or ".join(repr(c.canonical) for c in matches)
            raise ComponentError(
                f"{kind} type {name!r} is provided by more than one package"
                f" ({', '.join(f'{c.package} {c.version}' for c in matches)}); write {options}"
            )
        raise ComponentError(self._unknown_message(kind, name, short))

    def _unknown_message(self, kind: str, name: str, short: str) -> str:
        installed = self.components(kind)
        names = sorted({c.type for c in installed})
        msg = f"unknown {kind} type {name!r}."
        msg += did_you_mean(short, names)
        providers = [extra for extra in self.catalog.extras if (kind, short) in extra.components]
        if ":" in name:
            package = normalize_package(name.split(":", 1)[0])
            known = {p.package for p in self.plugins}
            if package not in known and package not in {extra.package for extra in providers}:
                msg += f" Package {package!r} is not installed{self._install_line(package)}."
        for extra in providers:
            msg += (
                f" It is provided by the plugin package {extra.package}:"
                f" pip install {extra.requirement!r}"
                f" (or: polymodal install {extra.package})."
            )
        for plugin in self.plugins:
            if plugin.status in ("failed", "disabled"):
                provides = self._manifest_types(plugin)
                if (kind, short) in provides:
                    msg += f" Plugin {plugin.label} would provide it but is {plugin.status}: {plugin.error}."
                elif not provides:
                    msg += f" (Plugin {plugin.label} is {plugin.status}: {plugin.error}.)"
        msg += f" Installed {kind} types: {', '.join(names) if names else 'none'}."
        return msg

    def _install_line(self, package: str) -> str:
        """How to install ``package``: offered only where the catalog knows it, since a spec or
        model file naming it may come from anyone."""
        for extra in self.catalog.extras:
            if extra.package == package:
                return f": pip install {extra.requirement!r}"
        return (" (and polymodal's catalog does not know it: install it only if it is the"
                " plugin package you mean)")

    def _manifest_types(self, plugin: PluginInfo) -> set[tuple[str, str]]:
        try:
            entries = self._manifest_entries(plugin) or ()
        except PolymodalError:
            entries = ()
        return {(e.kind, e.type) for e in entries}

    def load(self, record: ComponentRecord) -> type[Component]:
        """The component class, importing its plugin if it was listed from a manifest."""
        if record.cls is not None:
            return record.cls
        plugin = next(p for p in self.plugins if p.name == record.plugin and p.package == record.package)
        if plugin.status == "lazy":
            self._activate(plugin)
        if plugin.status == "failed":
            raise ComponentError(
                f"{record.kind} {record.canonical!r} cannot be used: plugin {plugin.label}"
                f" failed to load: {plugin.error}"
            )
        for rec in plugin.components:
            if (rec.kind, rec.type) == (record.kind, record.type) and rec.cls is not None:
                record.cls = rec.cls
                return rec.cls
        raise ComponentError(  # pragma: no cover - _activate checks the manifest
            f"plugin {plugin.label} does not provide {record.kind} {record.type!r}"
        )

    def record_for_config(self, config_cls: type) -> ComponentRecord:
        """The record of the loaded component whose ``Config`` is ``config_cls`` (or a subclass)."""
        for rec in self.components():
            if rec.cls is not None and issubclass(config_cls, rec.cls.Config):
                if config_cls is rec.cls.Config:
                    return rec
        for rec in self.components():
            if rec.cls is not None and issubclass(config_cls, rec.cls.Config):
                return rec
        raise ComponentError(f"{config_cls.__qualname__} belongs to no installed component")

    def load_all(self) -> list[ComponentRecord]:
        """Import every usable plugin (for schema and docs); failures are recorded, not raised."""
        for plugin in self.plugins:
            if plugin.status == "lazy":
                self._activate(plugin)
        return self.components()


def _api_mismatch(plugin: PluginInfo) -> str:
    return (
        f"built for plugin API {plugin.api}; this polymodal provides API {hooks.PLUGIN_API}"
        f" (upgrade polymodal or install a {plugin.package} release made for API"
        f" {hooks.PLUGIN_API})"
    )


def _origin(exc: BaseException) -> str:
    frames = traceback.extract_tb(exc.__traceback__)
    if not frames:
        return ""
    last = frames[-1]
    return f" (at {last.filename}:{last.lineno})"


_REGISTRY: Registry | None = None


def get_registry() -> Registry:
    """The process-wide registry; discovery runs once."""
    global _REGISTRY
    if _REGISTRY is None:
        _REGISTRY = Registry()
    return _REGISTRY


def reset_registry() -> None:
    """Forget discovery results (after installing a plugin or changing the environment)."""
    global _REGISTRY
    _REGISTRY = None


def plugin_entries(distribution: str) -> tuple[dict[str, tuple[ComponentEntry, ...]], dict[str, int]]:
    """What each entry point of an installed distribution provides, and the plugin API it is
    built for, by importing it.

    The source of a static manifest; a plugin that fails to load is an error here, since a
    manifest must not list what does not load."""
    package = normalize_package(distribution)
    try:
        dist = metadata.distribution(package)
    except metadata.PackageNotFoundError:
        raise ComponentError(f"distribution {distribution!r} is not installed") from None
    points = [ep for ep in dist.entry_points if ep.group == ENTRY_POINT_GROUP]
    if not points:
        raise ComponentError(
            f"{distribution} declares no entry point in group {ENTRY_POINT_GROUP!r}")
    registry = Registry(entry_points=[])
    entries: dict[str, tuple[ComponentEntry, ...]] = {}
    api: dict[str, int] = {}
    for ep in sorted(points, key=lambda e: e.name):
        plugin = PluginInfo(ep.name, package, dist.version, ep.value, entry_point=ep)
        registry.plugins.append(plugin)
        registry._activate(plugin)
        if plugin.status != "loaded":
            raise ComponentError(f"plugin {plugin.label} failed to load: {plugin.error}")
        entries[ep.name] = tuple(
            ComponentEntry(c.kind, c.type, c.target, c.summary) for c in plugin.components
        )
        api[ep.name] = hooks.PLUGIN_API
    return entries, api


def list_components(kind: str | None = None) -> list[ComponentRecord]:
    """Every available component (of ``kind``), like timm's ``list_models``."""
    return get_registry().components(kind)

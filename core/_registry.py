"""Plugin discovery and the component registry.

Each entry point in group ``polymodal`` is one plugin, loaded on its own so a broken plugin is
recorded with its reason and never stops the others (pluggy's bulk loader stops at the first
failure and skips duplicate names silently). A plugin whose components are listed in a static
manifest is not imported until a spec uses one of them, so listing imports no plugin code; a
manifest that states another plugin API marks the plugin incompatible without importing it.

When such a plugin is imported (by a spec that uses it, or by ``polymodal plugins``), its code is
checked against its manifest: a component listed but not provided, or provided but not listed,
marks the whole plugin failed, and the reason is remembered (see ``_known_failures``) so that a
later listing shows the plugin as failed too.

A plugin declares the plugin API it is written for (``POLYMODAL_PLUGIN_API`` in its module, or
``api`` in its manifest); one written for another version, or declaring none, is refused with a
message naming both versions and what changed.

Environment:
    ``POLYMODAL_DISABLE_PLUGINS=a,b``  plugins (entry-point or package names) never imported.
    ``POLYMODAL_PLUGINS=a,b``          allow-list: only these plugins are used (reproducible runs).
    A name in both is disabled: disabling wins.
"""

from __future__ import annotations

import importlib.metadata as metadata
import os
import traceback
from typing import TYPE_CHECKING, Any

import pluggy

from . import _hooks as hooks
from ._errors import ComponentError, PolymodalError, Problem, did_you_mean, located
from ._known_failures import KnownFailures, fingerprint
from ._manifest import (
    KINDS,
    ComponentEntry,
    Manifest,
    catalog,
    find_package_manifest,
    read_manifest,
)
from ._plugin_faults import (
    api_mismatch,
    as_sentence,
    check_api,
    check_records,
    described,
    exception_chain,
    older_api_use,
    origin_of,
    top_module,
    underlying_import_error,
)
from ._plugin_records import ComponentRecord, PluginInfo, Refused, normalize_package
from ._version import __version__

if TYPE_CHECKING:
    from ._components import Component

ENTRY_POINT_GROUP = "polymodal"
DISABLE_ENV = "POLYMODAL_DISABLE_PLUGINS"
ALLOW_ENV = "POLYMODAL_PLUGINS"
CORE_PACKAGE = "polymodal"


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

    def __init__(self, entry_points: list[metadata.EntryPoint] | None = None,
                 known_failures: KnownFailures | None = None):
        """Discover the plugins of ``entry_points`` (default: the environment's).

        ``known_failures`` remembers what importing a plugin listed by its manifest showed;
        discovering the environment uses polymodal's cache of them by default."""
        self.plugins: list[PluginInfo] = []
        self.manager = pluggy.PluginManager(hooks.PROJECT)
        self.manager.add_hookspecs(hooks)
        self._catalog: Manifest | None = None
        self._manifests: dict[Any, Manifest] = {}
        if entry_points is None:
            entry_points = list(metadata.entry_points(group=ENTRY_POINT_GROUP))
            known_failures = known_failures or KnownFailures()
        self._known = known_failures
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
            plugin.status, plugin.error = "failed", api_mismatch(plugin)
            return
        if entries is None:
            self._activate(plugin)
            return
        plugin.status = "lazy"
        plugin.listed = frozenset((e.kind, e.type) for e in entries)
        plugin.components = [
            ComponentRecord(e.kind, e.type, package, version, ep.name, e.summary, e.target)
            for e in entries
        ]
        remembered = self._remembered(plugin)
        if remembered is not None:
            plugin.status, plugin.components = "failed", []
            plugin.error = f"{remembered} (found when polymodal last imported it)"

    def _manifest_entries(self, plugin: PluginInfo) -> tuple[ComponentEntry, ...] | None:
        if plugin.package == CORE_PACKAGE:
            manifest = self.catalog
        else:
            module = plugin.value.split(":", 1)[0]
            path = find_package_manifest(module)
            if path is None:
                return None
            plugin.manifest = path
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
            self._import_failed(plugin, exc)
            return
        self._register(plugin, obj)

    def _import_failed(self, plugin: PluginInfo, exc: BaseException) -> None:
        plugin.status, plugin.components = "failed", []
        plugin.error = f"import failed: {described(exc, plugin.top_module)}"
        underlying = underlying_import_error(exc)
        if underlying is not None:
            plugin.error += f", caused by {described(underlying, plugin.top_module)}"
        older = older_api_use(exc)
        if older is not None:
            plugin.api = 1
            plugin.error = f"{api_mismatch(plugin)} It {older} ({plugin.error})."

    def add_plugin(self, obj: object, package: str, version: str = "0", name: str | None = None) -> PluginInfo:
        """Register a plugin object (a module or any object with the hook) without an entry point.

        For tests of components that are not installed; it is checked like any plugin, and a
        failure is recorded in ``plugins`` like one from an entry point. Made in this process,
        an object that declares no ``POLYMODAL_PLUGIN_API`` is taken to be written for this
        polymodal's plugin API."""
        plugin = PluginInfo(name or str(getattr(obj, "__name__", package)), normalize_package(package),
                            version, getattr(obj, "__name__", repr(obj)))
        self.plugins.append(plugin)
        self._register(plugin, obj, assumed_api=hooks.PLUGIN_API)
        return plugin

    def _register(self, plugin: PluginInfo, obj: object, assumed_api: int | None = None) -> None:
        try:
            check_api(plugin, obj, assumed_api)
            self.manager.register(obj, name=f"{plugin.package}:{plugin.name}")
            records = self._records(plugin, obj)
            check_records(plugin, records)
        except Refused as exc:
            self._fail(plugin, obj, str(exc))
            self._remember(plugin, str(exc))
            return
        except Exception as exc:  # noqa: BLE001 - the plugin's hook raised
            self._fail(plugin, obj, str(exc) if isinstance(exc, PolymodalError) else (
                f"{type(exc).__name__}: {exc}{origin_of(exc)}"))
            return
        plugin.components, plugin.status, plugin.error = records, "loaded", None
        self._remember(plugin, None)

    def _records(self, plugin: PluginInfo, obj: object) -> list[ComponentRecord]:
        """The components the plugin's hooks return, each class checked."""
        from ._components import check_defaults, component_identity

        impls = [impl for impl in self.manager.hook.polymodal_components.get_hookimpls()
                 if impl.plugin is obj]
        if not impls:
            raise Refused("implements no polymodal_components() hook")
        records = []
        for impl in impls:
            returned = impl.function()
            if not isinstance(returned, (list, tuple)):
                raise Refused(f"polymodal_components() returned {type(returned).__name__},"
                              " not a list of component classes")
            for cls in returned:
                try:
                    kind, type_name = component_identity(cls)
                    check_defaults(cls)
                except PolymodalError as exc:
                    raise Refused(str(exc)) from None
                records.append(ComponentRecord(
                    kind, type_name, plugin.package, plugin.version, plugin.name,
                    summary_of(cls), f"{cls.__module__}:{cls.__qualname__}", cls))
        return records

    def _fail(self, plugin: PluginInfo, obj: object, reason: str) -> None:
        self._unregister(obj)
        plugin.status, plugin.error, plugin.components = "failed", reason, []

    # -- what importing a manifest's plugin showed, remembered for listing ------------------
    def _fingerprint(self, plugin: PluginInfo) -> str:
        assert plugin.manifest is not None
        return fingerprint(plugin.manifest, __version__, str(hooks.PLUGIN_API), plugin.version,
                           plugin.name, plugin.value)

    def _remembered(self, plugin: PluginInfo) -> str | None:
        if self._known is None or plugin.manifest is None or not self._known.has(plugin.key):
            return None
        try:
            return self._known.reason(plugin.key, self._fingerprint(plugin))
        except OSError:
            return None

    def _remember(self, plugin: PluginInfo, reason: str | None) -> None:
        if self._known is None or plugin.manifest is None or plugin.listed is None:
            return
        if reason is None and not self._known.has(plugin.key):
            return  # nothing to forget
        try:
            self._known.record(plugin.key, self._fingerprint(plugin), reason)
        except OSError:
            pass

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
                    msg += (f" Plugin {plugin.label} would provide it but is {plugin.status}:"
                            f" {as_sentence(plugin.error)}")
                elif not provides:
                    msg += (f" (Plugin {plugin.label} is {plugin.status}:"
                            f" {as_sentence(plugin.error)})")
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

    def verify(self) -> list[PluginInfo]:
        """Import every third-party plugin listed by its manifest, and check it against the
        manifest again where a remembered failure marked it; return the failed plugins.

        ``polymodal plugins`` runs this so that it shows each plugin as it is. polymodal's own
        plugins are left unimported: its catalog is generated from them and checked by its
        tests."""
        for plugin in self.plugins:
            if plugin.package == CORE_PACKAGE or plugin.manifest is None:
                continue
            if plugin.status == "lazy" or plugin.status == "failed" and plugin.listed is not None:
                self._activate(plugin)
        return self.failures()

    def raised(self, exc: BaseException, component: object) -> str:
        """The message for an exception that is no :class:`PolymodalError`, raised by the code
        of ``component`` (a config, a config class, or a record): it names the component, its
        package and where it raised, and whose bug it is if the spec is right."""
        record = component if isinstance(component, ComponentRecord) else self._record_of(component)
        if record is None:
            cls = component if isinstance(component, type) else type(component)
            what, package, module = cls.__qualname__, None, cls.__module__
        else:
            what = f"{record.kind} {record.canonical!r} ({record.package} {record.version})"
            package, module = record.package, record.target.split(":", 1)[0]
        origin = origin_of(exc, prefer=module.split(".", 1)[0])
        if package == CORE_PACKAGE:
            whose = "a bug in polymodal: please report it"
        elif package is not None:
            whose = f"a bug in {package}: please report it to its authors"
        else:
            whose = "a bug in the plugin that provides it"
        return (f"{what} raised {type(exc).__name__}: {exc}{origin}; if the spec is right, this"
                f" is {whose} (--debug shows the traceback)")

    def _record_of(self, component: object) -> ComponentRecord | None:
        config = component if isinstance(component, type) else type(component)
        try:
            return self.record_for_config(config)
        except (ComponentError, TypeError):
            return None

    def blame(self, exc: BaseException) -> str | None:
        """For an unexpected exception, the message naming the third-party plugin whose code
        raised it (the innermost of its frames), or None when no plugin's code is involved."""
        owners = {p.top_module: p for p in self.plugins
                  if p.status == "loaded" and p.package != CORE_PACKAGE}
        for link in exception_chain(exc):
            for frame, lineno in reversed(list(traceback.walk_tb(link.__traceback__))):
                plugin = owners.get(top_module(frame))
                if plugin is not None:
                    return (f"plugin {plugin.label} raised {type(exc).__name__}: {exc} (at"
                            f" {frame.f_code.co_filename}:{lineno}); this is a bug in"
                            f" {plugin.package} or a mistake it does not explain (--debug shows"
                            " the traceback)")
        return None


def component_problems(exc: Exception, where: str, component: object,
                       registry: Registry | None = None) -> list[Problem]:
    """The spec problems of an exception raised by a component's code (its config's methods,
    its codec, its module) that polymodal called for the spec path ``where``.

    A :class:`PolymodalError` is the component's report of a user mistake and is placed as
    :func:`polymodal._errors.located` says; any other exception is reported at ``where`` as
    raised by the component, naming its plugin package (:meth:`Registry.raised`)."""
    if isinstance(exc, PolymodalError):
        return located(exc, where)
    return [Problem(where, (registry or get_registry()).raised(exc, component), exc)]


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
        api[ep.name] = plugin.api if plugin.api is not None else hooks.PLUGIN_API
    return entries, api


def list_components(kind: str | None = None) -> list[ComponentRecord]:
    """Every available component (of ``kind``), like timm's ``list_models``."""
    return get_registry().components(kind)

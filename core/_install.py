"""``polymodal install`` / ``uninstall``: pip, run in polymodal's own environment.

Catalog names (``registry.toml``'s ``[[extra]]`` packages) resolve to their pip requirement; a
local wheel, sdist or project directory is passed to pip as it is. Neither step imports any
plugin, so a broken installed plugin cannot stop them; discovery is reset afterwards and the
result is reported from a fresh discovery: a plugin the install brought that polymodal refuses
is an error (it cannot be used), any other broken plugin only a reported failure.
"""

from __future__ import annotations

import importlib
import importlib.metadata as metadata
import re
import subprocess
import sys
from pathlib import Path

from ._errors import PolymodalError
from ._manifest import catalog
from ._registry import (
    CORE_PACKAGE,
    ENTRY_POINT_GROUP,
    PluginInfo,
    Registry,
    normalize_package,
    reset_registry,
)

_NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)")


class InstallError(PolymodalError):
    """pip could not install or uninstall a plugin package."""


def _is_local(name: str) -> bool:
    return name.endswith((".whl", ".tar.gz", ".zip")) or "/" in name or "\\" in name or Path(name).is_dir()


def resolve_requirement(name: str) -> tuple[str, str | None]:
    """``(what pip gets, the package name when known)`` for NAME."""
    if _is_local(name):
        path = Path(name)
        if not path.exists():
            raise InstallError(f"{name}: no such file or directory")
        package = None
        if path.suffix == ".whl":
            package = normalize_package(path.name.split("-", 1)[0])
        return str(path.resolve()), package
    match = _NAME.match(name)
    if match is None:
        raise InstallError(f"{name!r} is neither a package name nor a local path")
    package = normalize_package(match.group(1))
    extras = {normalize_package(e.package): e for e in catalog().extras}
    known = extras.get(package)
    if known is None:
        from ._errors import did_you_mean

        listed = ", ".join(sorted(extras)) or "none"
        raise InstallError(
            f"{name!r} is not a plugin package polymodal knows of.{did_you_mean(package, extras)}"
            f" Known packages: {listed} (see `polymodal plugins --available`); for any other"
            " package run pip yourself, or give a local wheel or project directory."
        )
    rest = name[match.end():].strip()
    return (known.requirement + rest if rest else known.requirement), package


def _pip(args: list[str]) -> None:
    command = [sys.executable, "-m", "pip", *args]
    result = subprocess.run(command, check=False)
    if result.returncode != 0:
        raise InstallError(
            f"pip failed (exit {result.returncode}): {' '.join(command[2:])}")


def _plugin_distributions() -> dict[str, str]:
    """Each installed distribution with a polymodal entry point, and its version (read from
    metadata: nothing is imported)."""
    found: dict[str, str] = {}
    for dist in metadata.distributions():
        name = dist.metadata["Name"]
        if name and any(ep.group == ENTRY_POINT_GROUP for ep in dist.entry_points):
            found.setdefault(normalize_package(name), dist.version)  # the first on the path
    return found


def _installed_plugins(packages: set[str] | None) -> list[PluginInfo]:
    """The plugins of ``packages`` (None: of every package), each imported afresh."""
    reset_registry()
    importlib.invalidate_caches()
    registry = Registry()
    registry.verify()  # import what was installed: a plugin that fails shows it now
    return [p for p in registry.plugins if packages is None or p.package in packages]


def _line(plugin: PluginInfo) -> str:
    if plugin.status not in ("lazy", "loaded"):
        return (f"{plugin.package} {plugin.version}: entry point {plugin.name!r} is"
                f" {plugin.status}: {plugin.error}")
    provided = ", ".join(f"{c.kind} {c.type}" for c in plugin.components) or "nothing"
    return f"{plugin.package} {plugin.version}: entry point {plugin.name!r} provides {provided}"


def install_plugin(name: str, pip_args: list[str] | None = None) -> list[str]:
    """Install NAME with pip; returns lines describing the plugins it brought. Raises
    :class:`InstallError` when polymodal refuses a plugin it brought (written for another
    plugin API, failing on import): installed, it still cannot be used."""
    requirement, package = resolve_requirement(name)
    before = _plugin_distributions()
    _pip(["install", requirement, *(pip_args or [])])
    after = _plugin_distributions()
    # A local project or sdist names no package: what pip added or changed is what it brought.
    changed = {p for p, version in after.items() if before.get(p) != version}
    brought = {package} if package is not None else changed or None
    plugins = _installed_plugins(brought)
    refused = [p for p in plugins if p.status == "failed"]
    if refused and brought is not None:  # unknown (nothing changed): others' failures aside
        raise InstallError(_refused(refused))
    lines = [_line(p) for p in plugins]
    if package is not None and not lines:
        lines.append(f"installed {requirement}, but it provides no polymodal plugin")
    return lines or [f"installed {requirement}"]


def _refused(plugins: list[PluginInfo]) -> str:
    installed = ", ".join(dict.fromkeys(f"{p.package} {p.version}" for p in plugins))
    reasons = "; ".join(f"its entry point {p.name!r} failed: {p.error}" for p in plugins)
    return (f"pip installed {installed} (it stays installed until `polymodal uninstall"
            f" {plugins[0].package}`), but polymodal cannot use it: {reasons}")


def uninstall_plugin(name: str) -> list[str]:
    """Uninstall the plugin package NAME with pip."""
    package = normalize_package(name)
    if package == CORE_PACKAGE:
        raise InstallError("refusing to uninstall polymodal itself; use pip for that")
    try:
        version = metadata.distribution(package).version
    except metadata.PackageNotFoundError:
        raise InstallError(f"{name!r} is not installed") from None
    _pip(["uninstall", "--yes", package])
    reset_registry()
    importlib.invalidate_caches()
    return [f"uninstalled {package} {version}"]

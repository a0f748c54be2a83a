"""A plugin's code checked against the plugin API, and an exception traced to the plugin that
raised it: the words the registry uses for a plugin it refuses or blames."""

from __future__ import annotations

import importlib.util
import re
import traceback
from types import FrameType

from . import _hooks as hooks
from ._manifest import CATALOG_PATH
from ._plugin_records import ComponentRecord, PluginInfo, Refused


def check_api(plugin: PluginInfo, obj: object, assumed: int | None) -> None:
    """Settle the plugin API the plugin is written for: its module's ``POLYMODAL_PLUGIN_API``,
    else its manifest's ``api``, else ``assumed``; refuse it unless that is this polymodal's."""
    declared = getattr(obj, "POLYMODAL_PLUGIN_API", None)
    if declared is not None and (not isinstance(declared, int) or isinstance(declared, bool)):
        raise Refused(f"POLYMODAL_PLUGIN_API must be the plugin API version as an integer"
                      f" (POLYMODAL_PLUGIN_API = {hooks.PLUGIN_API}), not {declared!r}")
    if declared is not None and plugin.api is not None and declared != plugin.api:
        raise Refused(f"its module declares POLYMODAL_PLUGIN_API = {declared} but its manifest"
                      f" states api = {plugin.api}; {_regenerate(plugin)}")
    api = declared if declared is not None else plugin.api if plugin.api is not None else assumed
    if api is None:
        older = _since(1)
        raise Refused(
            f"declares no plugin API version: a plugin for this polymodal (plugin API"
            f" {hooks.PLUGIN_API}) declares `POLYMODAL_PLUGIN_API = {hooks.PLUGIN_API}` in its"
            f" module {plugin.value.split(':', 1)[0]} (or `api = {hooks.PLUGIN_API}` in its"
            f" manifest)" + (f". If it was written for plugin API 1, which did not ask for this:"
                             f" {older}." if older else "."))
    plugin.api = api
    if api != hooks.PLUGIN_API:
        raise Refused(api_mismatch(plugin))


def check_records(plugin: PluginInfo, records: list[ComponentRecord]) -> None:
    """Each (kind, type) once, and exactly those its manifest lists."""
    provided: set[tuple[str, str]] = set()
    for rec in records:
        if (rec.kind, rec.type) in provided:
            raise Refused(f"provides {rec.kind} {rec.type!r} twice")
        provided.add((rec.kind, rec.type))
    if plugin.listed is None:
        return
    missing, extra = sorted(plugin.listed - provided), sorted(provided - plugin.listed)
    reasons = []
    if missing:
        reasons.append(f"its manifest lists {_components(missing)} but the plugin does not"
                       f" provide {'it' if len(missing) == 1 else 'them'}")
    if extra:
        reasons.append(f"the plugin provides {_components(extra)} but its manifest does not"
                       f" list {'it' if len(extra) == 1 else 'them'}")
    if reasons:
        raise Refused("; ".join(reasons) + f"; {_regenerate(plugin)}")


def _components(keys: list[tuple[str, str]]) -> str:
    return ", ".join(f"{kind} {type_name!r}" for kind, type_name in keys)


def _regenerate(plugin: PluginInfo) -> str:
    path = plugin.manifest or CATALOG_PATH
    return f"regenerate the manifest: polymodal manifest {plugin.package} -o {path}"


def _since(api: int) -> str:
    """What changed in the plugin API since version ``api`` (a sentence), or ``""``."""
    changes = [hooks.API_CHANGES[v] for v in range(api, hooks.PLUGIN_API) if v in hooks.API_CHANGES]
    return f"since plugin API {api}, {'; '.join(changes)}" if changes else ""


def api_mismatch(plugin: PluginInfo) -> str:
    assert plugin.api is not None
    both = (f"written for plugin API {plugin.api}, but this polymodal provides plugin API"
            f" {hooks.PLUGIN_API}")
    if plugin.api < hooks.PLUGIN_API:
        changed = _since(plugin.api)
        return (f"{both}{'; ' + changed if changed else ''}. Install a release of"
                f" {plugin.package} made for plugin API {hooks.PLUGIN_API}.")
    return (f"{both}. Upgrade polymodal (pip install -U polymodal), or install a release of"
            f" {plugin.package} made for plugin API {hooks.PLUGIN_API}.")


def older_api_use(exc: BaseException) -> str | None:
    """How a failed import shows a plugin written for plugin API 1 (a phrase), or None.

    Such a plugin imports the plugin API from ``polymodal`` itself (``from polymodal import
    Head``), uses an attribute that moved (``polymodal.hookimpl``), or imports a module that
    became private (``polymodal.signals``)."""
    for link in exception_chain(exc):
        if isinstance(link, ModuleNotFoundError) and link.name and link.name.startswith("polymodal."):
            public = link.name.split(".")[1]
            if not public.startswith("_") and importlib.util.find_spec(f"polymodal._{public}"):
                return f"imports the module {link.name}, which plugin API 2 made private"
        elif isinstance(link, ImportError) and link.name == "polymodal":
            found = re.match(r"cannot import name '(\w+)' from 'polymodal'", str(link))
            if found and found.group(1) in hooks.MOVED_TO_PLUGIN_API:
                return f"imports {found.group(1)} from `polymodal` instead of `polymodal.plugin`"
        elif isinstance(link, AttributeError) and "written for plugin API 1" in str(link):
            return "uses " + str(link).split(" is part of", 1)[0]
    return None


def exception_chain(exc: BaseException) -> list[BaseException]:
    """``exc`` and the exceptions it was raised from or while handling, innermost last."""
    found: list[BaseException] = []
    link: BaseException | None = exc
    while link is not None and link not in found and len(found) < 8:
        found.append(link)
        link = link.__cause__ or link.__context__
    return found


def described(exc: BaseException, prefer: str | None = None) -> str:
    """``Type: message (at FILE:LINE)`` of an exception."""
    return f"{type(exc).__name__}: {exc}{origin_of(exc, prefer)}"


def underlying_import_error(exc: BaseException) -> BaseException | None:
    """The import error a plugin's own exception was raised from or while handling (``raise
    RuntimeError('backend missing') from exc``): the missing module is what the user must fix."""
    return next((link for link in exception_chain(exc)[1:] if isinstance(link, ImportError)), None)


def as_sentence(text: str | None) -> str:
    """``text`` as the end of a sentence: one final period, never two."""
    text = (text or "").rstrip()
    return text if text.endswith((".", "!", "?")) else text + "."


def top_module(frame: FrameType) -> str:
    return str(frame.f_globals.get("__name__", "")).split(".", 1)[0]


def origin_of(exc: BaseException, prefer: str | None = None) -> str:
    """`` (at FILE:LINE)``: where ``exc`` was raised, or its innermost frame in the top-level
    module ``prefer`` (the plugin's own code rather than the library it called)."""
    if isinstance(exc, SyntaxError) and exc.filename:  # its frames are the import system's
        return f" (at {exc.filename}:{exc.lineno})"
    frames = list(traceback.walk_tb(exc.__traceback__))
    if not frames:
        return ""
    chosen = frames[-1]
    if prefer:
        chosen = next((f for f in reversed(frames) if top_module(f[0]) == prefer), chosen)
    frame, lineno = chosen
    return f" (at {frame.f_code.co_filename}:{lineno})"

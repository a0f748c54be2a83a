"""What importing a plugin showed about it, remembered so that listing can show it.

A plugin listed from its static manifest is imported only when a spec uses it (or by
``polymodal plugins``). When its code then disagrees with its manifest, or a component class in
it fails the registry's checks, the reason is written to a small file in polymodal's cache
folder, so that a later ``polymodal list``, which imports no plugin code, shows the plugin as
failed. A reason holds only for the exact code it was found in: it is keyed by a fingerprint of
polymodal's version, the plugin's version, its manifest and its source files, so changing any of
them forgets it. The cache folder is ``$XDG_CACHE_HOME/polymodal`` (``~/.cache/polymodal``).

Only results that the plugin's files decide are remembered; an import that fails (a missing
dependency, a driver) may work next time and is never recorded.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

FILE_NAME = "known-plugin-failures.json"


def cache_folder() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "polymodal"


def fingerprint(manifest: Path, *facts: str) -> str:
    """A digest of ``facts`` (versions, the entry point), the manifest's text and the size and
    modification time of every Python file in the package folder that holds the manifest."""
    digest = hashlib.sha256()
    for fact in facts:
        digest.update(fact.encode() + b"\0")
    digest.update(manifest.read_bytes())
    for path in sorted(manifest.parent.rglob("*.py")):
        stat = path.stat()
        digest.update(f"{path.relative_to(manifest.parent)}:{stat.st_size}:{stat.st_mtime_ns}\0".encode())
    return digest.hexdigest()


class KnownFailures:
    """The remembered reasons, by plugin key (``package:entry point``). Reading or writing the
    file never fails the caller: a cache that cannot be used is no cache."""

    def __init__(self, path: Path | None = None):
        self.path = path or cache_folder() / FILE_NAME
        self._entries: dict[str, dict[str, str]] | None = None

    def _load(self) -> dict[str, dict[str, str]]:
        if self._entries is None:
            try:
                data = json.loads(self.path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                data = {}
            self._entries = data if isinstance(data, dict) else {}
        return self._entries

    def has(self, key: str) -> bool:
        return key in self._load()

    def reason(self, key: str, print_: str) -> str | None:
        """The reason remembered for ``key`` under fingerprint ``print_``, if any."""
        entry = self._load().get(key)
        if isinstance(entry, dict) and entry.get("fingerprint") == print_:
            reason = entry.get("reason")
            return reason if isinstance(reason, str) else None
        return None

    def record(self, key: str, print_: str, reason: str | None) -> None:
        """Remember ``reason`` for ``key`` (None: the plugin is fine; forget any reason)."""
        entries = self._load()
        if reason is None:
            if entries.pop(key, None) is None:
                return
        else:
            if entries.get(key) == {"fingerprint": print_, "reason": reason}:
                return
            entries[key] = {"fingerprint": print_, "reason": reason}
        import tempfile  # only when something is recorded: listing stays light

        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", dir=self.path.parent)
        except OSError:
            return
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                json.dump(entries, handle, indent=1, sort_keys=True)
            os.replace(tmp, self.path)  # atomic: a reader sees the old file or the new one
        except OSError:
            Path(tmp).unlink(missing_ok=True)

"""The temporary files of polymodal's writes: their recognisable names, and the sweep that
removes those an ended process left.

A write's temporary folder is named ``.<target>.polymodal-<host>-<pid>-<random>.tmp`` beside its
target. One that a killed process could not remove names that process, so the next write beside
it removes it (and says so) once that process has ended; another host's is left alone, since its
process cannot be asked whether it still runs.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import socket
from pathlib import Path

from ._cleanup import discard, removed_on_signal

_log = logging.getLogger("polymodal")

_TEMP = re.compile(r"\.polymodal-(?P<host>[0-9a-f]{8})-(?P<pid>\d+)-[0-9a-z]+\.tmp$")
#: The part of a target's name a temporary or lock name keeps: a temporary name adds at most
#: ~40 characters, and names stay under 255 bytes.
NAME_ROOM = 180


def host_tag() -> str:
    return hashlib.sha1(socket.gethostname().encode()).hexdigest()[:8]


def temp_path(target: Path) -> Path:
    """A fresh name beside ``target`` for a write's temporary folder, of polymodal's
    recognisable naming."""
    token = os.urandom(4).hex()
    return target.with_name(f".{target.name[:NAME_ROOM]}.polymodal-{host_tag()}-{os.getpid()}-{token}.tmp")


def is_temp(path: Path) -> bool:
    return _TEMP.search(path.name) is not None


def process_alive(pid: int) -> bool:
    """Whether process ``pid`` of this host is running (a zombie has ended)."""
    if os.name != "posix":  # no harmless probe: assume it runs
        return True
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's
        return True
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def _stale(path: Path) -> bool:
    found = _TEMP.search(path.name)
    if found is None or found["host"] != host_tag():
        return False  # another host's process cannot be asked whether it still runs
    pid = int(found["pid"])
    if pid == os.getpid():
        return not removed_on_signal(path)  # one of this process's own writes in progress
    return not process_alive(pid)


def sweep(folder: str | Path, name: str | None = None) -> list[Path]:
    """Remove the temporary files that ended processes left in ``folder`` (only those beside
    the file ``name`` when given), and say so; returns them."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    pattern = f".{_glob_escape(name[:NAME_ROOM])}.polymodal-*.tmp" if name else ".*.polymodal-*.tmp"
    removed, size = [], 0
    for path in sorted(folder.glob(pattern)):
        if not _stale(path):
            continue
        size += _size_of(path)
        discard(path)
        if not path.exists():
            removed.append(path)
    if removed:
        shown = ", ".join(p.name for p in removed[:3]) + (", ..." if len(removed) > 3 else "")
        where = folder if str(folder) != "." else Path.cwd()
        _log.warning("note: removed %d temporary file(s) (%s) that an interrupted write left in"
                     " %s: %s", len(removed), _size(size), where, shown)
    return removed


def _size_of(path: Path) -> int:
    try:
        if path.is_dir():
            return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
        return path.stat().st_size
    except OSError:
        return 0


def _glob_escape(text: str) -> str:
    return re.sub(r"([*?\[])", r"[\1]", text)


def _size(count: float) -> str:
    for unit in ("bytes", "KB", "MB", "GB"):
        if count < 1000 or unit == "GB":
            return f"{count} {unit}" if unit == "bytes" else f"{count:.1f} {unit}"
        count /= 1000
    return f"{count} bytes"  # pragma: no cover

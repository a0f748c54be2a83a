"""The lock that keeps two runs off one output.

An output lock is a file ``.<target>.polymodal-lock`` beside the target, holding the owner's
process id, host, start time and command, and locked with ``flock`` for as long as the owner
runs. The kernel drops the lock when its owner dies, however it dies, so a lock file left by a
killed run is taken over (with a note), while a live owner makes a second run fail at once with
a message naming it.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import socket
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from ._cleanup import absolute, keep_on_signal, remove_on_signal
from ._errors import OutputLockedError
from ._files import refused, write_refusal
from ._temporaries import NAME_ROOM

_log = logging.getLogger("polymodal")

_LOCK_SUFFIX = ".polymodal-lock"
_held_lock_fds: set[int] = set()  # the locks this process holds, by their open file


def _forget_after_fork() -> None:
    # A forked child (a data-loading worker) must not hold its parent's output locks.
    for fd in _held_lock_fds:
        with contextlib.suppress(OSError):
            os.close(fd)
    _held_lock_fds.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_after_fork)


def lock_path(target: str | Path) -> Path:
    target = Path(target)
    name = target.name
    if len(name) > NAME_ROOM:  # cut short, with what tells apart names that begin alike
        name = name[:NAME_ROOM - 9] + "~" + hashlib.sha256(target.name.encode()).hexdigest()[:8]
    return target.with_name(f".{name}{_LOCK_SUFFIX}")


def _command() -> str:
    """This process's command line as its user typed it, near enough."""
    program = Path(sys.argv[0]).name if sys.argv and sys.argv[0] else ""
    if program in ("", "-c", "__main__.py"):  # `python -m polymodal ...`, `python -c ...`
        words = list(getattr(sys, "orig_argv", sys.argv))
        return " ".join([Path(words[0]).name, *words[1:]]) if words else "python"
    return " ".join([program, *sys.argv[1:]])


def _owner_record() -> dict[str, Any]:
    command = _command()
    return {"pid": os.getpid(), "host": socket.gethostname(),
            "started": time.strftime("%Y-%m-%d %H:%M:%S"), "command": command[:300]}


def _describe(owner: dict[str, Any] | None) -> str:
    if not owner:
        return "a process that has not yet said which"
    text = f"pid {owner.get('pid', '?')} on {owner.get('host', '?')}, started {owner.get('started', '?')}"
    return text + (f": {owner['command']}" if owner.get("command") else "")


def _read_owner(fd: int) -> dict[str, Any] | None:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        data = os.read(fd, 4096)
        owner = json.loads(data.decode("utf-8")) if data.strip() else None
    except (OSError, ValueError):
        return None
    return owner if isinstance(owner, dict) else None


@contextlib.contextmanager
def output_lock(target: str | Path, *, what: str = "output",
                note: Callable[[str], None] | None = None) -> Iterator[Path]:
    """Hold the lock of ``target`` (a file or a folder) for the block: another process holding
    it is an :class:`OutputLockedError` naming that process; a lock file whose owner has ended
    is taken over, with a note to ``note`` (default: the ``polymodal`` logger)."""
    target = Path(target)
    path = lock_path(target)
    _refuse_inside_locked_folder(target, what)
    fd = _acquire(path, target, what, note or (lambda line: _log.warning("%s", line)))
    remove_on_signal(path)
    try:
        yield path
    finally:
        # Unlink while still holding it: whoever opens the name next gets a fresh file.
        keep_on_signal(path)
        with contextlib.suppress(OSError):
            path.unlink()
        _held_lock_fds.discard(fd)
        with contextlib.suppress(OSError):
            os.close(fd)


def _refuse_inside_locked_folder(target: Path, what: str) -> None:
    """Refuse a ``target`` inside a folder that another live run holds the lock of (a
    cross-validation's folder): its finished files are that run's, and it reads them again."""
    try:
        import fcntl
    except ImportError:
        return
    ours = set()
    for fd in list(_held_lock_fds):
        with contextlib.suppress(OSError):
            info = os.fstat(fd)
            ours.add((info.st_dev, info.st_ino))
    folders = dict.fromkeys([*absolute(target).parents, *Path(os.path.realpath(target)).parents])
    for folder in folders:
        if folder.parent == folder:  # the root has no name to lock
            continue
        path = lock_path(folder)
        try:
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        except OSError:
            continue  # no lock there (the usual case)
        try:
            info = os.fstat(fd)
            if (info.st_dev, info.st_ino) in ours:
                continue  # this process's own run, writing inside its folder
            try:  # shared, and let go at once: a live owner holds it exclusively
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                    continue
                owner = _read_owner(fd)
                raise OutputLockedError(
                    f"{target}: this {what} is inside {folder}, which another polymodal run is"
                    f" writing ({_describe(owner)}); wait for it to end, or write elsewhere"
                ) from None
        finally:
            os.close(fd)


def _acquire(path: Path, target: Path, what: str, note: Callable[[str], None]) -> int:
    try:
        import fcntl
    except ImportError:  # no flock on this platform: an existing lock file is a live owner
        return _acquire_exclusive(path, target, what)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise refused(path.parent, exc, "create the folder") from None
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o666)
        except OSError as exc:
            raise refused(path, exc, "create the lock") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            owner = _read_owner(fd)
            os.close(fd)
            if exc.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise refused(path, exc, "lock") from None
            raise _in_use(target, what, owner, path) from None
        if _same_file(fd, path):
            break
        os.close(fd)  # the owner removed the name while we waited for it: take the new one
    previous = _read_owner(fd)
    if previous and previous.get("pid") != os.getpid():
        note(f"note: {target}: took over the lock of an earlier run ({_describe(previous)}),"
             " which ended without releasing it")
    try:
        _write_owner(fd)
    except OSError as exc:  # a full disk: the lock file is ours to remove, the run cannot go on
        with contextlib.suppress(OSError):
            path.unlink()
        os.close(fd)
        raise write_refusal(target, exc) or refused(path, exc, "create the lock") from None
    _held_lock_fds.add(fd)
    return fd


def _same_file(fd: int, path: Path) -> bool:
    try:
        return os.path.samestat(os.fstat(fd), os.stat(path))
    except FileNotFoundError:
        return False


def _write_owner(fd: int) -> None:
    os.ftruncate(fd, 0)
    os.lseek(fd, 0, os.SEEK_SET)
    os.write(fd, (json.dumps(_owner_record()) + "\n").encode("utf-8"))


def _acquire_exclusive(path: Path, target: Path, what: str) -> int:
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o666)
    except FileExistsError:
        fd = os.open(path, os.O_RDONLY)
        owner = _read_owner(fd)
        os.close(fd)
        raise _in_use(target, what, owner, path, stale_hint=True) from None
    _write_owner(fd)
    _held_lock_fds.add(fd)
    return fd


def _in_use(target: Path, what: str, owner: dict[str, Any] | None, path: Path,
            stale_hint: bool = False) -> OutputLockedError:
    hint = f"; if no such run is left, delete {path}" if stale_hint else ""
    return OutputLockedError(
        f"{target}: this {what} is being written by another polymodal run ({_describe(owner)});"
        f" wait for it to end, or write to another {what}{hint}")


def remove_stale_locks(folder: str | Path) -> list[Path]:
    """Remove the lock files below ``folder`` whose owner has ended (a killed run's); a lock a
    live run holds is left alone. The removed paths."""
    try:
        import fcntl
    except ImportError:  # without flock a lock file cannot be told stale
        return []
    removed = []
    for path in sorted(Path(folder).rglob(f"*{_LOCK_SUFFIX}")):
        try:
            fd = os.open(path, os.O_RDWR | getattr(os, "O_CLOEXEC", 0))
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            path.unlink()  # while holding it, as a lock's owner does
            removed.append(path)
        except OSError:
            pass  # held by a live run, or already gone
        finally:
            os.close(fd)
    return removed

"""Every file polymodal writes, and the lock that keeps two runs off one output.

A write goes to a private temporary folder beside its target, named
``.<target>.polymodal-<host>-<pid>-<random>.tmp``, holding the new file, which is synced and
then renamed over the target, so a reader sees the old file or the new one, never half of one.
The file ends with the mode ``open()`` would give it (the umask's, or the replaced file's). The
temporary folder is removed when the write fails, and also when the process is ended by SIGTERM,
SIGINT or SIGHUP. One that a killed process could not remove names that process, so the next
write beside it removes it (and says so) once that process has ended.

An output lock is a file ``.<target>.polymodal-lock`` beside the target, holding the owner's
process id, host, start time and command, and locked with ``flock`` for as long as the owner
runs. The kernel drops the lock when its owner dies, however it dies, so a lock file left by a
killed run is taken over (with a note), while a live owner makes a second run fail at once with
a message naming it.

No torch here: the model file, the checkpoint and the plots are written through
:func:`atomic_path` by whatever writes them.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import json
import logging
import os
import re
import shutil
import signal
import socket
import stat
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from ._errors import OutputError, OutputLockedError

_log = logging.getLogger("polymodal")

_TEMP = re.compile(r"\.polymodal-(?P<host>[0-9a-f]{8})-(?P<pid>\d+)-[0-9a-z]+\.tmp$")
_LOCK_SUFFIX = ".polymodal-lock"
_NAME_ROOM = 180  # a temporary name adds at most ~40 characters; names stay under 255 bytes


def _host_tag() -> str:
    return hashlib.sha1(socket.gethostname().encode()).hexdigest()[:8]


def temp_path(target: Path) -> Path:
    """A fresh name beside ``target`` for a write's temporary folder, of polymodal's
    recognisable naming."""
    token = os.urandom(4).hex()
    return target.with_name(f".{target.name[:_NAME_ROOM]}.polymodal-{_host_tag()}-{os.getpid()}-{token}.tmp")


def is_temp(path: Path) -> bool:
    return _TEMP.search(path.name) is not None


# --- cleanup when a signal ends the process ---------------------------------------------

_registry_lock = threading.RLock()
_doomed: dict[Path, None] = {}  # paths to remove if a signal ends the process (insertion order)
_previous: dict[int, Any] = {}  # signal -> the handler ours replaced
_SIGNALS = tuple(getattr(signal, name) for name in ("SIGTERM", "SIGINT", "SIGHUP")
                 if hasattr(signal, name))


def _on_signal(signum: int, frame: Any) -> None:
    previous = _previous.get(signum, signal.SIG_DFL)
    if callable(previous):
        # Python's SIGINT handler (KeyboardInterrupt) or the application's own: an exception it
        # raises unwinds through the writes, which remove their own files; if it returns, the
        # process goes on and so must its writes.
        previous(signum, frame)
        return
    if previous == signal.SIG_IGN:
        return
    # The default action ends the process at once, past every ``finally``: remove our files
    # first, then die of the same signal, as the process would have without us.
    with _registry_lock:
        doomed = list(_doomed)
    for path in doomed:
        _discard(path)
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)


def _absolute(path: Path) -> Path:
    return Path(os.path.abspath(path))  # the same file however it was named, after any chdir


def _in_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def _install_handlers() -> None:
    for signum in _SIGNALS:
        if signum in _previous:
            continue
        current = signal.getsignal(signum)
        if current is None or current is _on_signal:  # set outside Python: leave it alone
            continue
        _previous[signum] = current
        signal.signal(signum, _on_signal)


def _restore_handlers() -> None:
    for signum in list(_previous):
        # Someone who replaced ours after us keeps theirs (and may still call ours).
        if signal.getsignal(signum) is _on_signal:
            signal.signal(signum, _previous.pop(signum))


def remove_on_signal(path: Path) -> None:
    """Remove ``path`` should a signal end the process before :func:`keep_on_signal`.

    Handlers can only be set in the main thread; a path registered from another thread is still
    removed when the main thread has them installed."""
    with _registry_lock:
        _doomed[_absolute(path)] = None
        if _in_main_thread():
            _install_handlers()


def keep_on_signal(path: Path) -> None:
    with _registry_lock:
        _doomed.pop(_absolute(path), None)
        if not _doomed and _in_main_thread():
            _restore_handlers()


def _forget_after_fork() -> None:
    # A forked child (a data-loading worker) must not remove its parent's files, nor hold its
    # parent's output locks.
    global _registry_lock
    _registry_lock = threading.RLock()
    _doomed.clear()
    for fd in _held_lock_fds:
        with contextlib.suppress(OSError):
            os.close(fd)
    _held_lock_fds.clear()


_held_lock_fds: set[int] = set()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_after_fork)


# --- atomic writes ---------------------------------------------------------------------

def _refused(target: Path, exc: OSError, doing: str = "write") -> OutputError:
    reason = exc.strerror or str(exc)
    if isinstance(exc, IsADirectoryError) or (doing == "write" and target.is_dir()):
        reason = "it is a folder; give a file name"
    return OutputError(f"cannot {doing} {target}: {reason}")


#: The errors of a write that the file system refuses: the user's to fix, not a bug.
_WRITE_ERRNOS = {errno.ENOSPC: "no space left on the device", errno.EROFS: "the file system is"
                 " read-only", errno.EDQUOT: "the disk quota is exceeded", errno.EFBIG: "the file"
                 " is larger than the file system allows"}
#: How libraries that do not raise an OSError (safetensors, torch's C++ writer) say the same.
_WRITE_ERROR_TEXTS = {"no space left on device": errno.ENOSPC, "os error 28": errno.ENOSPC,
                      "storagefull": errno.ENOSPC, "read-only file system": errno.EROFS,
                      "os error 30": errno.EROFS, "disk quota exceeded": errno.EDQUOT}


def write_refusal(target: str | Path, exc: BaseException) -> OutputError | None:
    """The :class:`OutputError` for ``exc`` when it is the file system refusing a write of
    ``target`` (a full disk, a read-only or over-quota file system); None for any other."""
    if isinstance(exc, OutputError):
        return None
    code = exc.errno if isinstance(exc, OSError) else None
    if code not in _WRITE_ERRNOS:
        text = str(exc).lower().replace(" ", "")
        code = next((c for said, c in _WRITE_ERROR_TEXTS.items() if said.replace(" ", "") in text),
                    None)
    if code is None:
        return None
    return OutputError(f"cannot write {target}: {_WRITE_ERRNOS[code]}; the previous file (if any)"
                       " is left as it was. Free some space or write elsewhere (-o)")


@dataclass
class _Pending:
    """A write in progress: the private folder beside the target and the new file in it."""

    folder: Path
    file: Path
    mode: int  # what the file must have at the end: open()'s, or the replaced file's


def _create(target: Path) -> _Pending:
    """A private temporary folder beside ``target`` holding an empty file named like it, with
    the mode ``open(target, "w")`` gives.

    A writer called with that file's path may itself write a temporary file beside it and
    rename it over (safetensors does, with mode 0600): inside our folder, that is cleaned up
    with the folder, and the mode is set back before the file replaces the target."""
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise _refused(target.parent, exc, "create the folder") from None
    if target.is_dir():
        raise OutputError(f"cannot write {target}: it is a folder; give a file name")
    folder = temp_path(target)
    remove_on_signal(folder)  # before it exists: a signal may come at any point after
    try:
        folder.mkdir(mode=0o700)
        file = folder / target.name
        # 0o666 less the umask: what open() creates. A replaced file keeps its own mode.
        fd = os.open(file, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o666)
        try:
            with contextlib.suppress(FileNotFoundError):
                os.fchmod(fd, stat.S_IMODE(os.stat(target).st_mode))
            mode = stat.S_IMODE(os.fstat(fd).st_mode)
        finally:
            os.close(fd)
    except OSError as exc:
        _discard(folder)
        keep_on_signal(folder)
        raise _refused(target, exc) from None
    return _Pending(folder, file, mode)


def _commit(pending: _Pending, target: Path) -> None:
    try:
        if stat.S_IMODE(os.stat(pending.file).st_mode) != pending.mode:
            os.chmod(pending.file, pending.mode)
        fd = os.open(pending.file, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(pending.file, target)
    except OSError as exc:
        raise _refused(target, exc) from None
    _sync_folder(target.parent)
    _discard(pending.folder)


def _discard(path: Path) -> None:
    """Remove a temporary file or folder (and whatever a writer left in it)."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(OSError):
            path.unlink()


def _sync_folder(folder: Path) -> None:
    """Make a rename in ``folder`` durable (some file systems cannot sync a folder)."""
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(target: str | Path) -> Iterator[Path]:
    """A temporary path to write ``target``'s new content to (by name, e.g. ``torch.save``);
    when the block ends without an error it replaces ``target``, else it is removed."""
    target = Path(target)
    sweep(target.parent, target.name)
    pending = _create(target)
    try:
        yield pending.file
        _commit(pending, target)
    except BaseException as exc:
        _discard(pending.folder)
        refused = write_refusal(target, exc)
        if refused is not None:
            raise refused from None
        raise
    finally:
        keep_on_signal(pending.folder)


@contextlib.contextmanager
def atomic_open(target: str | Path, mode: str = "w", *, encoding: str | None = "utf-8",
                newline: str | None = "") -> Iterator[IO[Any]]:
    """``open(target, mode)`` that replaces ``target`` only when the block ends without an
    error. ``mode`` is ``"w"`` or ``"wb"``."""
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_open writes a whole file: mode 'w' or 'wb', not {mode!r}")
    binary = mode == "wb"
    with atomic_path(target) as tmp:
        with open(tmp, mode, encoding=None if binary else encoding,
                  newline=None if binary else newline) as handle:
            yield handle


def atomic_write(path: Path, write: Callable[[IO[bytes]], object]) -> None:
    """``write`` the file into memory, then to ``path`` atomically and with the mode every other
    output gets: torch's C++ writer, given a file, aborts the process on a full disk (or hides
    the error), where Python's write raises it."""
    buffer = io.BytesIO()
    write(buffer)
    with atomic_open(path, "wb") as handle:
        handle.write(buffer.getbuffer())


def write_text(target: str | Path, text: str) -> Path:
    with atomic_open(target) as handle:
        handle.write(text)
    return Path(target)


@contextlib.contextmanager
def atomic_folder(target: str | Path) -> Iterator[Path]:
    """A fresh folder to fill in the block, which replaces the folder ``target`` when the block
    ends without an error; otherwise it is removed and ``target`` is left as it was. So a
    command that writes several files (a report, its tables, its charts) leaves all of them or
    the previous ones, never a mixture."""
    target = Path(target)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        pending = temp_path(target)
        pending.mkdir()
    except OSError as exc:
        raise write_refusal(target, exc) or _refused(target, exc, "create") from None
    remove_on_signal(pending)
    previous = None
    try:
        yield pending
        if target.exists():
            previous = temp_path(target)
            os.rename(target, previous)
        os.rename(pending, target)
    except BaseException:
        _discard(pending)
        if previous is not None and not target.exists():
            os.rename(previous, target)  # put the previous folder back
        raise
    finally:
        keep_on_signal(pending)
    if previous is not None:
        _discard(previous)


def refuse_overwriting_inputs(output: str | Path, inputs: dict[str, Any]) -> None:
    """Refuse an ``output`` that is one of a command's ``inputs`` (``{"the table to predict":
    path}``; values that are not paths are skipped): the write would replace what it reads."""
    output = Path(output)
    for what, value in inputs.items():
        if not isinstance(value, (str, Path)):
            continue
        if _same_path(output, Path(value)):
            raise OutputError(f"{output}: this is {what} ({value}); writing here would replace"
                              " it. Give the output another name")


def _same_path(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:  # one does not exist (yet): compare the names
        return os.path.realpath(a) == os.path.realpath(b)


# --- stale temporary files --------------------------------------------------------------

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
    if found is None or found["host"] != _host_tag():
        return False  # another host's process cannot be asked whether it still runs
    pid = int(found["pid"])
    if pid == os.getpid():
        with _registry_lock:
            return _absolute(path) not in _doomed  # one of this process's own writes in progress
    return not process_alive(pid)


def sweep(folder: str | Path, name: str | None = None) -> list[Path]:
    """Remove the temporary files that ended processes left in ``folder`` (only those beside
    the file ``name`` when given), and say so; returns them."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    pattern = f".{_glob_escape(name[:_NAME_ROOM])}.polymodal-*.tmp" if name else ".*.polymodal-*.tmp"
    removed, size = [], 0
    for path in sorted(folder.glob(pattern)):
        if not _stale(path):
            continue
        size += _size_of(path)
        _discard(path)
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


# --- output locks -----------------------------------------------------------------------

def lock_path(target: str | Path) -> Path:
    target = Path(target)
    name = target.name
    if len(name) > _NAME_ROOM:  # cut short, with what tells apart names that begin alike
        name = name[:_NAME_ROOM - 9] + "~" + hashlib.sha256(target.name.encode()).hexdigest()[:8]
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
    folders = dict.fromkeys([*_absolute(target).parents, *Path(os.path.realpath(target)).parents])
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
        raise _refused(path.parent, exc, "create the folder") from None
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o666)
        except OSError as exc:
            raise _refused(path, exc, "create the lock") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            owner = _read_owner(fd)
            os.close(fd)
            if exc.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise _refused(path, exc, "lock") from None
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
        raise write_refusal(target, exc) or _refused(path, exc, "create the lock") from None
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

"""What a signal must not leave behind: the paths removed should SIGTERM, SIGINT or SIGHUP end
the process before the code that made them could.

A path registered with :func:`remove_on_signal` (a write's temporary folder, an output lock) is
removed by our handler when the signal's default action would end the process at once, past every
``finally``; the process then dies of the same signal. Where Python or the application handles
the signal itself, its handler runs instead and the code unwinding removes its own files. The
handlers are ours only while some path is registered.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import threading
from pathlib import Path
from typing import Any

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
        discard(path)
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)


def absolute(path: Path) -> Path:
    """The same file however it was named, after any chdir (links left as they are)."""
    return Path(os.path.abspath(path))


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
        _doomed[absolute(path)] = None
        if _in_main_thread():
            _install_handlers()


def keep_on_signal(path: Path) -> None:
    with _registry_lock:
        _doomed.pop(absolute(path), None)
        if not _doomed and _in_main_thread():
            _restore_handlers()


def removed_on_signal(path: Path) -> bool:
    """Whether ``path`` is registered: one of this process's writes in progress."""
    with _registry_lock:
        return absolute(path) in _doomed


def discard(path: Path) -> None:
    """Remove a temporary file or folder (and whatever a writer left in it)."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(OSError):
            path.unlink()


def _forget_after_fork() -> None:
    # A forked child (a data-loading worker) must not remove its parent's files.
    global _registry_lock
    _registry_lock = threading.RLock()
    _doomed.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_after_fork)

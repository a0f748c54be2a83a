"""Every file polymodal writes: atomically, so a reader sees the old file or the new one.

A write goes to a private temporary folder beside its target (named as
:mod:`polymodal._temporaries` says), holding the new file, which is synced and then renamed over
the target, so a reader sees the old file or the new one, never half of one. The file ends with
the mode ``open()`` would give it (the umask's, or the replaced file's). The temporary folder is
removed when the write fails, and also when the process is ended by SIGTERM, SIGINT or SIGHUP
(:mod:`polymodal._cleanup`); one a killed process left is swept by the next write beside it.

Two runs are kept off one output by :func:`polymodal._output_lock.output_lock`.

No torch here: the model file, the checkpoint and the plots are written through
:func:`atomic_path` by whatever writes them.
"""

from __future__ import annotations

import contextlib
import errno
import io
import os
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from ._cleanup import discard, keep_on_signal, remove_on_signal
from ._errors import OutputError
from ._temporaries import sweep, temp_path


def refused(target: Path, exc: OSError, doing: str = "write") -> OutputError:
    """The :class:`OutputError` for ``exc``, raised while ``doing`` (to) ``target``."""
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
        raise refused(target.parent, exc, "create the folder") from None
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
        discard(folder)
        keep_on_signal(folder)
        raise refused(target, exc) from None
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
        raise refused(target, exc) from None
    _sync_folder(target.parent)
    discard(pending.folder)


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
        discard(pending.folder)
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
        raise write_refusal(target, exc) or refused(target, exc, "create") from None
    remove_on_signal(pending)
    previous = None
    try:
        yield pending
        if target.exists():
            previous = temp_path(target)
            os.rename(target, previous)
        os.rename(pending, target)
    except BaseException:
        discard(pending)
        if previous is not None and not target.exists():
            os.rename(previous, target)  # put the previous folder back
        raise
    finally:
        keep_on_signal(pending)
    if previous is not None:
        discard(previous)


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

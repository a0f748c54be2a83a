"""Writing files: atomic, with the mode open() gives, no temporary file left behind (on an error,
on a signal, after a kill), and output locks that keep a second run off a first run's output."""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import signal
import socket
import stat
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from polymodal._errors import OutputError, OutputLockedError, PolymodalError
from polymodal._files import atomic_open, atomic_path, write_text
from polymodal._output_lock import lock_path, output_lock
from polymodal._temporaries import host_tag, is_temp, sweep


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if is_temp(p) or p.name.endswith(".tmp"))


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def dead_pid() -> int:
    """The id of a process that has ended (and been collected)."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def temp_name(target: str, pid: int, host: str | None = None) -> str:
    return f".{target}.polymodal-{host or host_tag()}-{pid}-0a1b2c3d.tmp"


def python(code: str, *args: str, **kwargs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code), *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)


# -- atomic writes ---------------------------------------------------------------------------


def test_a_write_replaces_the_target_whole_and_leaves_nothing_beside_it(tmp_path):
    target = tmp_path / "sub" / "out.csv"
    write_text(target, "old\n")
    with atomic_open(target) as handle:
        handle.write("new\n")
        assert target.read_text() == "old\n"  # readers see the old file until the end
    assert target.read_text() == "new\n"
    assert leftovers(target.parent) == []


def test_a_failed_write_keeps_the_old_file_and_removes_its_temporary_file(tmp_path):
    target = tmp_path / "m.safetensors"
    write_text(target, "old")
    with pytest.raises(ZeroDivisionError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            assert is_temp(tmp.parent) and tmp.parent.parent == tmp_path
            1 / 0
    assert target.read_text() == "old"
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_new_files_get_the_mode_open_gives_them(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        write_text(tmp_path / "written.txt", "x")
        with atomic_path(tmp_path / "by_name.bin") as tmp:
            tmp.write_bytes(b"x")  # as torch.save or safetensors write: by the path
        with open(tmp_path / "plain.txt", "w"):
            pass
    finally:
        os.umask(old)
    assert mode_of(tmp_path / "plain.txt") == mode
    assert mode_of(tmp_path / "written.txt") == mode
    assert mode_of(tmp_path / "by_name.bin") == mode


def test_a_model_file_gets_the_mode_open_gives_though_its_writer_makes_0600(multimodal_spec,
                                                                           tmp_path):
    import polymodal

    model = polymodal.build(multimodal_spec)
    old = os.umask(0o022)
    try:
        polymodal.save(model, tmp_path / "m.safetensors")
    finally:
        os.umask(old)
    assert mode_of(tmp_path / "m.safetensors") == 0o644
    assert [p.name for p in tmp_path.iterdir()] == ["m.safetensors"]  # nor the writer's own


def test_a_replaced_file_keeps_its_mode(tmp_path):
    target = tmp_path / "shared.csv"
    write_text(target, "old")
    target.chmod(0o640)
    write_text(target, "new")
    assert mode_of(target) == 0o640


def test_a_folder_in_the_way_is_one_clear_error(tmp_path):
    (tmp_path / "out.csv").mkdir()
    with pytest.raises(OutputError, match="cannot write .*out.csv: it is a folder; give a file name"):
        write_text(tmp_path / "out.csv", "x")
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputError, match="cannot create the folder .*file"):
        write_text(tmp_path / "file" / "out.csv", "x")
    assert issubclass(OutputError, PolymodalError)


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere")
def test_a_folder_without_write_permission_is_one_clear_error(tmp_path):
    locked = tmp_path / "ro"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        with pytest.raises(OutputError, match="cannot write .*out.csv: Permission denied"):
            write_text(locked / "out.csv", "x")
    finally:
        locked.chmod(0o755)


KILLED_MID_WRITE = """
import os, signal, sys, time
from pathlib import Path
from polymodal._files import atomic_path

how = sys.argv[2]
# The handlers a process gets from an interactive shell, even when this test runs under nohup
# or in a background job (which start it with SIGHUP or SIGINT ignored).
signal.signal(signal.SIGTERM, signal.SIG_DFL)
signal.signal(signal.SIGHUP, signal.SIG_DFL)
signal.signal(signal.SIGINT, signal.default_int_handler)
if how == "handler-exits":  # an application's own handler, which exits
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(7))
with atomic_path(Path(sys.argv[1])) as tmp:
    tmp.write_bytes(b"x" * 100_000)
    print(tmp, flush=True)
    os.kill(os.getpid(), signal.SIGKILL if how == "kill" else
            signal.SIGTERM if how in ("term", "handler-exits") else getattr(signal, how))
    time.sleep(60)
"""


@pytest.mark.parametrize("how, code", [("term", -signal.SIGTERM), ("SIGINT", None),
                                       ("SIGHUP", -signal.SIGHUP), ("handler-exits", 7)])
def test_a_signal_mid_write_removes_the_temporary_file(tmp_path, how, code):
    target = tmp_path / "pred.csv"
    target.write_text("old")
    child = python(KILLED_MID_WRITE, str(target), how)
    out, err = child.communicate(timeout=60)
    assert Path(out.strip()).parent.name.startswith(".pred.csv.polymodal-"), err
    if code is not None:
        assert child.returncode == code, err
    else:  # SIGINT: KeyboardInterrupt, which Python ends in as the signal would
        assert child.returncode in (-signal.SIGINT, 1, 130) and "KeyboardInterrupt" in err
    assert leftovers(tmp_path) == []
    assert target.read_text() == "old"


def test_a_killed_writers_file_is_swept_by_the_next_write_and_reported(tmp_path, caplog):
    target = tmp_path / "m.safetensors"
    child = python(KILLED_MID_WRITE, str(target), "kill")
    out, _ = child.communicate(timeout=60)
    assert child.returncode == -signal.SIGKILL
    left = Path(out.strip()).parent
    assert leftovers(tmp_path) == [left.name]  # SIGKILL cannot be cleaned up after
    # a live process's write and another host's are not this write's to remove
    alive = tmp_path / temp_name("m.safetensors", os.getppid())
    remote = tmp_path / temp_name("m.safetensors", dead_pid(), host="00000000")
    elsewhere = tmp_path / temp_name("other.csv", dead_pid())
    for path in (alive, remote, elsewhere):
        path.write_text("x")
    with caplog.at_level(logging.WARNING, logger="polymodal"):
        write_text(target, "new")
    assert target.read_text() == "new"
    assert leftovers(tmp_path) == sorted(p.name for p in (alive, remote, elsewhere))
    assert "removed 1 temporary file(s) (100.0 KB) that an interrupted write left in" in caplog.text
    assert left.name in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="polymodal"):
        assert sweep(tmp_path) == [elsewhere]  # a whole folder: any target's
    assert "removed 1 temporary file(s)" in caplog.text


def test_signal_handlers_are_set_for_a_write_only_and_restored(tmp_path):
    before = signal.getsignal(signal.SIGTERM)
    with atomic_path(tmp_path / "a") as tmp:
        tmp.write_text("x")
        assert signal.getsignal(signal.SIGTERM) is not before
    assert signal.getsignal(signal.SIGTERM) is before
    failures: list[BaseException] = []

    def elsewhere() -> None:  # handlers cannot be set outside the main thread: write anyway
        try:
            write_text(tmp_path / "b", "y")
        except BaseException as exc:  # noqa: BLE001
            failures.append(exc)

    thread = threading.Thread(target=elsewhere)
    thread.start()
    thread.join()
    assert not failures and (tmp_path / "b").read_text() == "y"
    assert signal.getsignal(signal.SIGTERM) is before


# -- output locks ----------------------------------------------------------------------------

HOLDS_THE_LOCK = """
import sys
from polymodal._output_lock import output_lock
with output_lock(sys.argv[1]):
    print("held", flush=True)
    sys.stdin.readline()
"""


def test_a_second_run_on_a_locked_output_fails_at_once_naming_the_first(tmp_path, caplog):
    target = tmp_path / "m.safetensors"
    first = subprocess.Popen([sys.executable, "-c", HOLDS_THE_LOCK, str(target)],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert first.stdout.readline().strip() == "held"
        started = time.monotonic()
        with pytest.raises(OutputLockedError) as caught:
            with output_lock(target):
                pass
        assert time.monotonic() - started < 1.0
        message = str(caught.value)
        assert message.startswith(f"{target}: this output is being written by another polymodal"
                                  f" run (pid {first.pid} on {socket.gethostname()}, started ")
        assert "wait for it to end, or write to another output" in message
    finally:
        first.stdin.close()
        first.wait(timeout=30)
    assert first.returncode == 0
    assert not lock_path(target).exists()  # released and removed at the end
    with output_lock(target):
        pass
    assert "took over" not in caplog.text


def test_a_lock_left_by_a_killed_run_is_taken_over_with_a_note(tmp_path):
    target = tmp_path / "m.run"
    first = subprocess.Popen([sys.executable, "-c", HOLDS_THE_LOCK, str(target)],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert first.stdout.readline().strip() == "held"
    first.kill()
    first.wait()
    assert lock_path(target).exists()  # nothing runs after SIGKILL to remove it
    notes: list[str] = []
    with output_lock(target, what="run folder", note=notes.append) as path:
        assert json.loads(path.read_text())["pid"] == os.getpid()
    assert len(notes) == 1 and notes[0].startswith(
        f"note: {target}: took over the lock of an earlier run (pid {first.pid} on ")
    assert notes[0].endswith("which ended without releasing it")


def test_a_lock_naming_a_dead_process_is_taken_over(tmp_path):
    target = tmp_path / "p.csv"
    pid = dead_pid()
    lock_path(target).write_text(json.dumps({"pid": pid, "host": socket.gethostname(),
                                             "started": "2026-01-01 00:00:00", "command": "x"}))
    notes: list[str] = []
    with output_lock(target, note=notes.append):
        pass
    assert f"(pid {pid} on {socket.gethostname()}, started 2026-01-01 00:00:00: x)" in notes[0]


def test_one_process_cannot_hold_one_output_twice(tmp_path):
    with output_lock(tmp_path / "m.safetensors"):
        with pytest.raises(OutputLockedError, match=f"pid {os.getpid()}"):
            with output_lock(tmp_path / "m.safetensors"):
                pass


def _sleep(seconds: float) -> None:
    time.sleep(seconds)


def test_a_forked_child_does_not_keep_its_parents_lock(tmp_path):
    target = tmp_path / "m.safetensors"
    context = multiprocessing.get_context("fork")
    locked = output_lock(target)
    locked.__enter__()
    child = context.Process(target=_sleep, args=(30,))
    child.start()
    try:
        from polymodal import _cleanup, _output_lock

        # The parent dies without releasing anything: only the kernel drops its lock, which
        # the child (a data-loading worker, say) must not be holding on its behalf.
        for fd in list(_output_lock._held_lock_fds):
            os.close(fd)
            _output_lock._held_lock_fds.discard(fd)
        _cleanup.keep_on_signal(lock_path(target))
        outsider = subprocess.run([sys.executable, "-c", HOLDS_THE_LOCK, str(target)],
                                  input="\n", capture_output=True, text=True, timeout=60)
        assert outsider.returncode == 0, outsider.stderr
    finally:
        child.kill()
        child.join()


def test_without_flock_an_existing_lock_file_is_a_live_owner(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "fcntl", None)  # as on a platform without it
    target = tmp_path / "m.safetensors"
    with output_lock(target):
        with pytest.raises(OutputLockedError, match=f"pid {os.getpid()}.*if no such run is left,"
                           f" delete {lock_path(target)}"):
            with output_lock(target):
                pass
    assert not lock_path(target).exists()

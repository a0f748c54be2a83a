"""What train and predict write: one run per output at a time, no temporary file left behind,
the umask's file mode, and a clear refusal of a checkpoint that cannot be resumed from."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file
from training_data import spec_data

import polymodal
from polymodal._cli import main
from polymodal._output_lock import lock_path
from polymodal._temporaries import host_tag, is_temp


def leftovers(*folders: Path) -> list[str]:
    return sorted(p.name for f in folders if f.is_dir() for p in f.iterdir()
                  if is_temp(p) or p.name.endswith((".tmp", "-lock")))


def spec_file(folder: Path, **training) -> Path:
    path = folder / "spec.yaml"
    path.write_text(yaml.safe_dump(spec_data(**training)))
    return path


def command(*args: str) -> list[str]:
    return [sys.executable, "-m", "polymodal", *args]


def wait_for(path: Path, process: subprocess.Popen, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while not path.exists():
        assert process.poll() is None, process.stderr.read() if process.stderr else ""
        assert time.monotonic() < deadline, f"{path} did not appear"
        time.sleep(0.05)


def dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


# -- one run per output ----------------------------------------------------------------------


def test_a_second_train_on_a_running_trains_output_fails_at_once(dataset, tmp_path, capsys):
    spec = spec_file(tmp_path, epochs=500)
    model = tmp_path / "m.safetensors"
    first = subprocess.Popen(command("train", str(spec), "--data", str(dataset), "-o", str(model),
                                     "--quiet"), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                             text=True)
    try:
        wait_for(tmp_path / "m.run" / "checkpoint.pt", first)  # well into its run
        started = time.monotonic()
        code = main(["train", str(spec), "--data", str(dataset), "-o", str(model)])
        err = capsys.readouterr().err
        assert code == 1 and time.monotonic() - started < 5
        assert err.startswith(f"error: {model}: this output is being written by another polymodal"
                              f" run (pid {first.pid} on {socket.gethostname()}, started "), err
        assert f"{Path(sys.executable).name} -m polymodal train {spec} --data" in err and "Traceback" not in err
        # another model file, but the same run folder: refused too, naming the folder
        code = main(["train", str(spec), "--data", str(dataset), "-o", str(tmp_path / "b.safetensors"),
                     "--run-dir", str(tmp_path / "m.run")])
        err = capsys.readouterr().err
        assert code == 1 and f"{tmp_path / 'm.run'}: this run folder is being written by" in err
        assert not (tmp_path / "b.safetensors").exists() and not (tmp_path / "b.run").exists()
        # SIGTERM: the run ends as SIGTERM ends a process, leaving no temporary or lock file
        first.send_signal(signal.SIGTERM)
        assert first.wait(timeout=60) == -signal.SIGTERM
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    assert leftovers(tmp_path, tmp_path / "m.run") == []
    assert polymodal.load(model) is not None  # what the killed run saved last is whole


def test_a_killed_runs_lock_and_temporary_files_are_taken_over_and_swept(dataset, tmp_path, caplog):
    model, run = tmp_path / "m.safetensors", tmp_path / "m.run"
    run.mkdir()
    gone = dead_pid()
    lock_path(model).write_text(json.dumps({"pid": gone, "host": socket.gethostname(),
                                            "started": "2026-01-01 00:00:00",
                                            "command": "polymodal train spec.yaml"}))
    stale = [run / f".checkpoint.pt.polymodal-{host_tag()}-{gone}-00aa11bb.tmp",
             tmp_path / f".m.safetensors.polymodal-{host_tag()}-{gone}-22cc33dd.tmp"]
    for path in stale:
        path.write_bytes(b"\0" * 4096)
    said: list[str] = []
    old = os.umask(0o027)
    try:
        polymodal.train(spec_data(epochs=1), dataset, model, progress=False, log=said.append)
    finally:
        os.umask(old)
    assert [line for line in said if "took over" in line] == [
        f"note: {model}: took over the lock of an earlier run (pid {gone} on"
        f" {socket.gethostname()}, started 2026-01-01 00:00:00: polymodal train spec.yaml),"
        " which ended without releasing it"]
    assert "removed 1 temporary file(s) (4.1 KB) that an interrupted write left in" in caplog.text
    assert leftovers(tmp_path, run) == []
    written = [model, *(p for p in run.iterdir())]
    assert {p.name for p in written} >= {"m.safetensors", "checkpoint.pt", "metrics.json",
                                         "metrics.csv", "validation_rows.csv", "curves.png"}
    # every file the run wrote has the mode open() gives under the umask
    assert {p.name: oct(stat.S_IMODE(p.stat().st_mode)) for p in written} == {
        p.name: oct(0o640) for p in written}


def test_predict_holds_its_output_and_leaves_nothing_when_terminated(trained, tmp_path, capsys):
    model, table = trained
    out = tmp_path / "pred.csv"
    out.write_text("old\n")
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys; from polymodal._output_lock import output_lock\n"
         "with output_lock(sys.argv[1]):\n print('held', flush=True); sys.stdin.readline()",
         str(out)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        code = main(["predict", str(model), "--data", str(table), "-o", str(out)])
        assert code == 1
        assert f"{out}: this output is being written by another polymodal run (pid {holder.pid}" \
            in capsys.readouterr().err
    finally:
        holder.stdin.close()
        holder.wait()
    # SIGTERM after the first batch is written to the temporary file
    terminated = subprocess.run([sys.executable, "-c",
                                 "import os, signal, sys, polymodal\n"
                                 "polymodal.predict(sys.argv[1], sys.argv[2], sys.argv[3], batch_size=4,"
                                 " on_batch=lambda n: os.kill(os.getpid(), signal.SIGTERM))",
                                 str(model), str(table), str(out)], capture_output=True, text=True)
    assert terminated.returncode == -signal.SIGTERM, terminated.stderr
    assert out.read_text() == "old\n" and leftovers(tmp_path) == []
    old = os.umask(0o022)
    try:
        assert main(["predict", str(model), "--data", str(table), "-o", str(out)]) == 0
    finally:
        os.umask(old)
    assert stat.S_IMODE(out.stat().st_mode) == 0o644 and leftovers(tmp_path) == []


# -- checkpoints that cannot be resumed from --------------------------------------------------


class Payload:
    """What a pickle-based attack would carry: an object whose unpickling runs code."""

    def __reduce__(self):
        return (os.system, ("echo pwned",))


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    from training_data import write_dataset

    folder = tmp_path_factory.mktemp("run")
    table = write_dataset(folder, rows=24)
    spec_file(folder, epochs=1)
    assert main(["train", str(folder / "spec.yaml"), "--data", str(table), "-o",
                 str(folder / "m.safetensors"), "--quiet"]) == 0
    return folder


def _damage(path: Path, how: str) -> None:
    if how == "truncated":
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif how == "empty":
        path.write_bytes(b"")
    elif how == "pickle in the archive":
        torch.save({"epoch": 1, "model": Payload()}, path)
    elif how == "plain pickle":
        path.write_bytes(pickle.dumps(Payload()))
    elif how == "other content":
        torch.save({"epoch": 1, "weights": torch.zeros(2)}, path)
    elif how == "a list":
        torch.save([1, 2, 3], path)
    elif how == "bad history":
        payload = torch.load(path, weights_only=True)
        payload["history"] = "[{\"epoch\": 1"
        torch.save(payload, path)


@pytest.mark.parametrize("how, message", [
    ("truncated", "cannot be read: it is truncated or corrupt ("),
    ("empty", "cannot be read: it is truncated or corrupt ("),
    ("pickle in the archive", "holds objects other than tensors and plain values, which polymodal"
     " never unpickles ("),
    ("plain pickle", "holds objects other than tensors and plain values"),
    ("other content", "is not a polymodal checkpoint (no valid model, optimizer, scheduler,"
     " history, best_epoch, best_value, stale, spec, state, fingerprint)"),
    ("a list", "is not a polymodal checkpoint (it holds a list)"),
    ("bad history", "has an unreadable record ("),
])
def test_a_checkpoint_that_cannot_be_resumed_is_one_clear_error(finished_run, tmp_path, capsys,
                                                                how, message):
    for item in finished_run.iterdir():
        (shutil.copytree if item.is_dir() else shutil.copy)(item, tmp_path / item.name)
    checkpoint = tmp_path / "m.run" / "checkpoint.pt"
    _damage(checkpoint, how)
    before = {p.name: p.read_bytes() for p in (tmp_path / "m.run").iterdir()}
    model = (tmp_path / "m.safetensors").read_bytes()
    code = main(["train", str(tmp_path / "spec.yaml"), "--data", str(tmp_path / "data.csv"),
                 "-o", str(tmp_path / "m.safetensors"), "--resume", "--quiet"])
    err = capsys.readouterr().err
    assert code == 1, err
    assert err.startswith(f"error: --resume: {checkpoint} "), err
    assert message in err and "internal error" not in err and "pwned" not in err
    assert err.rstrip().endswith("start the run again without --resume, or give another --run-dir")
    # refused before anything was written
    assert {p.name: p.read_bytes() for p in (tmp_path / "m.run").iterdir()} == before
    assert (tmp_path / "m.safetensors").read_bytes() == model


def test_resume_still_continues_a_whole_checkpoint(finished_run, tmp_path):
    for item in finished_run.iterdir():
        (shutil.copytree if item.is_dir() else shutil.copy)(item, tmp_path / item.name)
    said: list[str] = []
    # the same table (a run's rows are those of one table file), the copied run folder
    result = polymodal.train(tmp_path / "spec.yaml", finished_run / "data.csv",
                             tmp_path / "m.safetensors", resume=True, progress=False,
                             log=said.append)
    assert "resuming after epoch 1 of 1" in said and len(result.history) == 1
    weights = load_file(str(tmp_path / "m.safetensors"))
    original = load_file(str(finished_run / "m.safetensors"))
    assert all(torch.equal(weights[k], original[k]) for k in original)


def test_predictions_never_overwrite_a_model_file(trained, tmp_path, capsys):
    model, table = trained
    target = tmp_path / "other.safetensors"
    shutil.copyfile(model, target)
    before = target.read_bytes()
    assert main(["predict", str(model), "--data", str(table), "-o", str(target)]) == 1
    assert (f"{target}: predictions are written as a .csv or .tsv table, and this is a model"
            " file's name; name the file .csv or .tsv") in capsys.readouterr().err
    assert target.read_bytes() == before
    # ... nor as text under another format's name; a .tsv is tab-separated
    assert main(["predict", str(model), "--data", str(table), "-o", str(tmp_path / "p.parquet")]) == 1
    assert "is not a name of those (.parquet)" in capsys.readouterr().err
    assert main(["predict", str(model), "--data", str(table), "-o", str(tmp_path / "p.tsv")]) == 0
    header = (tmp_path / "p.tsv").read_text().splitlines()[0]
    assert header.startswith("row\t") and "," not in header


def test_a_second_cross_validation_into_a_running_ones_folder_fails_at_once(tmp_path, capsys):
    from training_data import table_spec, write_grouped_table

    from polymodal._output_lock import output_lock

    table = write_grouped_table(tmp_path)
    spec = tmp_path / "tab.yaml"
    spec.write_text(yaml.safe_dump(table_spec()))
    out = tmp_path / "cv"
    with output_lock(out, what="cross-validation folder"):  # as a running `polymodal cv` holds it
        assert main(["cv", str(spec), "--data", str(table), "--folds", "3", "-o", str(out)]) == 1
    error = capsys.readouterr().err
    assert f"{out}: this cross-validation folder is being written by another polymodal run" in error
    assert not (out / "folds.csv").exists()
    # a search's folder and a cross-validation's are not mixed
    out.mkdir()
    (out / "folds.csv").write_text("row,fold\n")
    searched = table_spec()
    searched["search"] = {"training.lr": {"type": "float", "low": 0.01, "high": 0.1}}
    spec.write_text(yaml.safe_dump(searched))
    assert main(["tune", str(spec), "--data", str(table), "--trials", "1", "-o", str(out)]) == 1
    assert "this folder holds a cross-validation (folds.csv)" in capsys.readouterr().err
    (tmp_path / "search" / "trials").mkdir(parents=True)
    assert main(["cv", str(spec), "--data", str(table), "-o", str(tmp_path / "search")]) == 1
    assert "this folder holds a hyperparameter search (study.db, trials/)" in capsys.readouterr().err


def test_an_interrupted_train_says_how_to_go_on(finished_run, tmp_path, capsys, monkeypatch):
    from polymodal._training import engine

    def interrupt(*_: object) -> str:  # Ctrl-C once the epoch's checkpoint is written
        raise KeyboardInterrupt

    monkeypatch.setattr(engine, "plot_curves", interrupt)
    code = main(["train", str(finished_run / "spec.yaml"), "--data", str(finished_run / "data.csv"),
                 "-o", str(tmp_path / "m.safetensors"), "--quiet"])
    err = capsys.readouterr().err
    assert code == 130
    assert (f"the checkpoint in {tmp_path / 'm.run'} holds the last finished epoch: the same"
            " command with --resume continues from it") in err
    assert err.rstrip().endswith("interrupted")


def test_an_interrupted_cv_says_the_same_command_continues(finished_run, tmp_path, capsys,
                                                           monkeypatch):
    from polymodal._training import engine

    def interrupt(*_: object) -> str:  # Ctrl-C at the end of the first fold's training
        raise KeyboardInterrupt

    monkeypatch.setattr(engine, "plot_curves", interrupt)
    out = tmp_path / "cv"
    code = main(["cv", str(finished_run / "spec.yaml"), "--data", str(finished_run / "data.csv"),
                 "--folds", "2", "-o", str(out), "--quiet"])
    err = capsys.readouterr().err
    assert code == 130
    assert ("the folds that finished are kept, and a fold cut short keeps its last finished"
            " epoch: the same command continues from them") in err
    assert err.rstrip().endswith("interrupted")
    assert list(out.glob("**/checkpoint.pt")), "the fold cut short keeps its checkpoint"


def test_a_new_train_on_an_existing_model_file_says_it_replaces_it(finished_run, tmp_path, capsys):
    model = tmp_path / "m.safetensors"
    args = ["train", str(finished_run / "spec.yaml"), "--data", str(finished_run / "data.csv"),
            "-o", str(model)]
    assert main(args) == 0
    assert "exists: this run replaces it" not in capsys.readouterr().err  # nothing there yet
    assert main(args) == 0
    assert (f"note: {model} exists: this run replaces it once its first epoch ends, and its run"
            " folder's logs and checkpoint (-o another file keeps them)") in capsys.readouterr().err

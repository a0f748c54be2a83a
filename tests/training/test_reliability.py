"""What a hostile or unlucky user meets: a spec name that is a path, an output that is an input,
a folder another run is writing, a full or read-only disk. Each is one clear message (exit 1),
and nothing outside the output is written or lost."""

from __future__ import annotations

import contextlib
import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from training_data import read_csv, table_spec, write_grouped_table

import polymodal
from polymodal._cli import main
from polymodal._errors import OutputError, SpecError

SCRIPT = Path(sys.executable).with_name("polymodal")


def call(capsys, *args: str) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def one_clear_error(code: int, err: str, *expected: str) -> None:
    assert code == 1, err
    assert err.startswith("error: "), err
    assert "Traceback" not in err and "internal error" not in err, err
    for text in expected:
        assert text in err, err


def write_spec(folder: Path, spec: dict, name: str = "spec.yaml") -> Path:
    path = folder / name
    path.write_text(yaml.safe_dump(spec, sort_keys=False), encoding="utf-8")
    return path


# -- 1. a spec's name is a label, never a path ------------------------------------------------


@pytest.mark.parametrize("name, said", [
    ("../../escaped", "is not a label"), ("/tmp/abs", "is not a label"), ("a\\b", "is not a label"),
    ("..", "is not a label"), ("nul\x00here", "is not a label"), ("x" * 5000, "5,000 characters"),
    ("  ", "empty"),
])
def test_a_spec_name_that_is_a_path_is_refused(name, said):
    with pytest.raises(SpecError, match=said) as caught:
        polymodal.load_spec({**table_spec(), "name": name})
    assert str(caught.value).startswith("name: ")


def test_cv_with_a_path_as_name_writes_nothing_outside_its_folder(capsys, tmp_path):
    work = tmp_path / "a" / "b"
    work.mkdir(parents=True)
    table = write_grouped_table(tmp_path)
    victim = tmp_path / "escaped"
    victim.mkdir()
    spec = write_spec(work, {**table_spec(), "name": "../../escaped"})
    code, _, err = call(capsys, "cv", spec, "--data", table, "--folds", "2", "-o", work / "out",
                        "--quiet")
    one_clear_error(code, err, "name: the model's name '../../escaped' is not a label")
    assert list(victim.iterdir()) == [] and not (work / "out").exists()


def test_ordinary_names_still_work():
    for name in ("claims", "Claims v2 (final)", "modèle-été", "a.b"):
        assert polymodal.load_spec({**table_spec(), "name": name}).name == name


# -- 2. an output that is an input ------------------------------------------------------------


@pytest.fixture(scope="module")
def table_model(tmp_path_factory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("table_model")
    table = write_grouped_table(folder)
    model = folder / "model.safetensors"
    polymodal.train(table_spec(), table, model, progress=False)
    return model, table


def test_predict_over_its_own_table_is_refused(capsys, tmp_path, table_model):
    model, source = table_model
    table = tmp_path / "t.csv"
    table.write_bytes(source.read_bytes())
    before = table.read_bytes()
    code, _, err = call(capsys, "predict", model, "--data", table, "-o", table)
    one_clear_error(code, err, f"{table}: this is the table to predict", "Give the output another")
    assert table.read_bytes() == before
    # the same file by another name
    code, _, err = call(capsys, "predict", model, "--data", table, "-o",
                        tmp_path / "." / "sub" / ".." / "t.csv")
    assert code == 1 and table.read_bytes() == before


def test_train_over_its_own_table_is_refused(capsys, tmp_path):
    table = write_grouped_table(tmp_path, name="t.safetensors")
    before = table.read_bytes()
    spec = write_spec(tmp_path, table_spec())
    code, _, err = call(capsys, "train", spec, "--data", table, "-o", table, "--quiet")
    one_clear_error(code, err, "this is the training table")
    assert table.read_bytes() == before


# -- 3. a file inside a folder that another run is writing ------------------------------------

HOLDS_THE_FOLDER = """
import sys
from polymodal._output_lock import output_lock
with output_lock(sys.argv[1], what="cross-validation folder"):
    print("held", flush=True)
    sys.stdin.readline()
"""


def test_writing_into_a_folder_another_run_holds_is_refused(capsys, tmp_path, table_model):
    _, table = table_model
    folder = tmp_path / "cv"
    fold_model = folder / "tab" / "fold_1" / "model.safetensors"
    fold_model.parent.mkdir(parents=True)
    fold_model.write_bytes(b"the finished fold's model")
    holder = subprocess.Popen([sys.executable, "-c", HOLDS_THE_FOLDER, str(folder)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        spec = write_spec(tmp_path, table_spec())
        code, _, err = call(capsys, "train", spec, "--data", table, "-o", fold_model, "--quiet")
        one_clear_error(code, err, f"is inside {folder}, which another polymodal run is writing",
                        f"pid {holder.pid}")
        assert fold_model.read_bytes() == b"the finished fold's model"
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)
    # once that run has ended, the folder is the user's again
    code, _, err = call(capsys, "train", spec, "--data", table, "-o", fold_model, "--quiet")
    assert code == 0, err


# -- 4, 5. a full disk, a read-only one -------------------------------------------------------


@contextlib.contextmanager
def small_disk(folder: Path, size: str, *options: str) -> Iterator[Path]:
    """A tmpfs of ``size`` mounted on ``folder`` (root only): a real full or read-only disk."""
    folder.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", ",".join([f"size={size}", *options]),
                           "tmpfs", str(folder)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip("these tests need a small file system of their own, and mounting a tmpfs"
                    f" failed here ({done.stderr.strip() or 'mount exited'}; it needs root)")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], capture_output=True)


def fill(disk: Path) -> None:
    """Fill ``disk`` to the last byte."""
    with open(disk / "filler", "wb", buffering=0) as handle:
        with contextlib.suppress(OSError):
            while True:
                handle.write(b"\0" * 65536)
    with open(disk / "filler-tail", "wb", buffering=0) as handle:
        with contextlib.suppress(OSError):
            while True:
                handle.write(b"\0")


BUILDABLE = {"inputs": {"record": {"adapter": {"type": "tabular", "numerical": ["x"]}}},
             "heads": {"label": {"type": "classification", "classes": 2}}}


def contents(disk: Path) -> list[str]:
    return sorted(p.name for p in disk.iterdir() if not p.name.startswith("filler"))


def test_a_full_disk_in_every_writing_command_is_one_clear_message(capsys, tmp_path, table_model):
    model, table = table_model
    with small_disk(tmp_path / "disk", "4m") as disk:
        spec = write_spec(tmp_path, table_spec())
        buildable = write_spec(tmp_path, BUILDABLE, "buildable.yaml")
        old = disk / "model.safetensors"
        old.write_bytes(model.read_bytes())
        (disk / "p.csv").write_text("old predictions\n")
        fill(disk)
        commands = {
            "train": ("train", spec, "--data", table, "-o", old, "--quiet"),
            "train-run-dir": ("train", spec, "--data", table, "-o", disk / "new.safetensors",
                              "--quiet"),
            "build": ("build", buildable, "-o", old),
            "predict": ("predict", model, "--data", table, "-o", disk / "p.csv"),
            "export-pt2": ("export", model, "-o", disk / "m.pt2"),
            "cv": ("cv", spec, "--data", table, "--folds", "2", "-o", disk / "cv", "--quiet"),
        }
        for what, args in commands.items():
            code, _, err = call(capsys, *args)
            one_clear_error(code, err, "no space left on the device")
            assert old.read_bytes() == model.read_bytes(), what
            assert (disk / "p.csv").read_text() == "old predictions\n", what
            assert contents(disk) == ["model.safetensors", "p.csv"], (what, contents(disk))


def test_a_full_disk_in_a_checkpoint_write_is_an_output_error(tmp_path):
    import torch

    from polymodal._training.checkpoint import Checkpoint
    from polymodal._training.history import Progress

    with small_disk(tmp_path / "disk", "1m") as disk:
        fill(disk)
        checkpoint = Checkpoint({"w": torch.zeros(100_000)}, {}, {}, Progress([], 0, 0.0, 0),
                                "{}", {}, "f")
        with pytest.raises(OutputError, match="no space left on the device"):
            checkpoint.write(disk / "checkpoint.pt")
        assert contents(disk) == []


def test_export_to_a_full_disk_does_not_abort_the_process(tmp_path, table_model):
    model, _ = table_model
    with small_disk(tmp_path / "disk", "1m") as disk:
        fill(disk)
        done = subprocess.run([str(SCRIPT), "export", str(model), "-o", str(disk / "m.pt2")],
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 1, done.stderr
        assert done.stderr.startswith("error: cannot write") and "no space left" in done.stderr
        assert contents(disk) == []


def test_a_read_only_disk_is_one_clear_message(capsys, tmp_path, table_model):
    pytest.importorskip("optuna")
    _, table = table_model
    spec = {**table_spec(), "search": {"training.lr": {"type": "float", "low": 0.01,
                                                       "high": 0.1}}}
    spec_path = write_spec(tmp_path, spec)
    with small_disk(tmp_path / "disk", "1m", "ro") as disk:
        for args in (("tune", spec_path, "--data", table, "--trials", "1", "-o", disk / "t",
                      "--quiet"),
                     ("train", spec_path, "--data", table, "-o", disk / "m.safetensors",
                      "--quiet")):
            code, _, err = call(capsys, *args)
            one_clear_error(code, err, str(disk))
            assert "read-only" in err.lower(), err


# -- 11. every output gets the umask's mode, or the replaced file's ----------------------------


@pytest.mark.parametrize("suffix", [".onnx", ".pt2"])
def test_an_export_gets_the_mode_open_gives_and_keeps_a_replaced_files(capsys, tmp_path,
                                                                        table_model, suffix):
    if suffix == ".onnx":
        pytest.importorskip("onnxscript")
    model, _ = table_model
    target = tmp_path / f"m{suffix}"
    old = os.umask(0o022)
    try:
        code, _, err = call(capsys, "export", model, "-o", target, "--no-check")
        assert code == 0, err
        assert stat.S_IMODE(target.stat().st_mode) == 0o644
        target.chmod(0o640)
        code, _, err = call(capsys, "export", model, "-o", target, "--no-check")
        assert code == 0, err
        assert stat.S_IMODE(target.stat().st_mode) == 0o640
    finally:
        os.umask(old)
    assert sorted(p.name for p in tmp_path.iterdir()) == [target.name]


def test_predictions_read_back(tmp_path, table_model):
    model, table = table_model
    result = polymodal.predict(model, table, tmp_path / "p.csv")
    assert result["rows"] == len(read_csv(table))


# -- 6. metadata nested 10,000 deep -----------------------------------------------------------

DEEP = "[" * 10_000 + "]" * 10_000


def rewrite_metadata(source: Path, target: Path, **changes: str) -> Path:
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(source), framework="pt") as handle:
        metadata = dict(handle.metadata())
        tensors = {k: handle.get_tensor(k) for k in handle.keys()}
    metadata.update({k.replace("_", "."): v for k, v in changes.items()})
    save_file(tensors, str(target), metadata=metadata)
    return target


@pytest.fixture(scope="module")
def table_onnx(tmp_path_factory, table_model) -> Path:
    pytest.importorskip("onnxscript")
    pytest.importorskip("onnxruntime")
    model, _ = table_model
    target = tmp_path_factory.mktemp("onnx") / "model.onnx"
    polymodal.export(model, target, check=False)
    return target


def rewrite_onnx(source: Path, target: Path, **changes: str) -> Path:
    import onnx

    proto = onnx.load(str(source))
    for entry in proto.metadata_props:
        key = entry.key.replace(".", "_")
        if key in changes:
            entry.value = changes[key]
    onnx.save(proto, str(target))
    return target


def test_deeply_nested_model_metadata_is_one_clear_message(capsys, tmp_path, table_model):
    model, table = table_model
    for key in ("polymodal_state", "polymodal_versions"):
        deep = rewrite_metadata(model, tmp_path / f"{key}.safetensors", **{key: DEEP})
        for args in (("inspect", deep), ("predict", deep, "--data", table, "-o", tmp_path / "p.csv"),
                     ("evaluate", deep, "--data", table), ("export", deep, "-o", tmp_path / "m.pt2")):
            code, out, err = call(capsys, *args)
            if key == "polymodal_versions":  # only shown, never needed: the file still works
                assert "internal error" not in err and "Traceback" not in err, (args, err)
                continue
            one_clear_error(code, err, "polymodal.state metadata nests too deeply")


def test_deeply_nested_export_metadata_is_one_clear_message(capsys, tmp_path, table_model,
                                                             table_onnx):
    _, table = table_model
    for key in ("polymodal_state", "polymodal_export"):
        deep = rewrite_onnx(table_onnx, tmp_path / f"{key}.onnx", **{key: DEEP})
        code, _, err = call(capsys, "predict", deep, "--data", table, "-o", tmp_path / "p.csv")
        one_clear_error(code, err, f"{key.replace('_', '.')} metadata nests too deeply")


def test_a_deeply_nested_checkpoint_is_refused_on_resume(capsys, tmp_path, table_model):
    import torch

    _, table = table_model
    spec = write_spec(tmp_path, table_spec(epochs=1))
    model = tmp_path / "m.safetensors"
    code, _, err = call(capsys, "train", spec, "--data", table, "-o", model, "--quiet")
    assert code == 0, err
    checkpoint = tmp_path / "m.run" / "checkpoint.pt"
    for field in ("state", "history", "spec"):
        payload = torch.load(checkpoint, weights_only=True)
        payload[field] = DEEP
        torch.save(payload, checkpoint)
        code, _, err = call(capsys, "train", spec, "--data", table, "-o", model, "--quiet",
                            "--resume")
        one_clear_error(code, err, "--resume")


# -- 7. ONNX metadata that disagrees with the graph -------------------------------------------


def _edited(text: str, change) -> str:
    import json

    data = json.loads(text)
    change(data)
    return json.dumps(data)


def _onnx_metadata(path: Path) -> dict[str, str]:
    import onnx

    return {e.key: e.value for e in onnx.load(str(path)).metadata_props}


def _set(data, path: tuple, value) -> None:
    for key in path[:-1]:
        data = data[key]
    data[path[-1]] = value


ONNX_EDITS = {
    "five class names for two logits": (
        "polymodal_state", ("heads", "label", "classes"), ["a", "b", "c", "d", "e"],
        "heads.label.classes: the fitted classes hold 5 entries for 2"),
    "a vocabulary longer than its cardinality": (
        "polymodal_state", ("inputs", "record", "vocabularies", "kind"), list("abcdefg"),
        "inputs.record.adapter.categorical.kind: the fitted kind hold 7 entries, more than its 2"),
    "another input name": (
        "polymodal_export", ("inputs", 1, "name"), "record.y", "does not describe its graph"),
    "another output name": (
        "polymodal_export", ("outputs", 0, "name"), "verdict", "does not describe its graph"),
    "another dtype": (
        "polymodal_export", ("inputs", 0, "dtype"), "float32", "does not describe its graph"),
    "another column": (
        "polymodal_export", ("inputs", 1, "key"), "w", "names column 'w' of input 'record'"),
    "a spec with other columns": (
        "polymodal_spec", ("inputs", "record", "adapter", "numerical"), ["x", "age"],
        "inputs.record.adapter.numerical: the fitted mean hold 1 entries for 2"),
    "a spec with missing columns": (
        "polymodal_spec", ("inputs", "record", "adapter", "numerical"), [],
        "inputs.record.adapter.numerical: the fitted mean hold 1 entries for 0"),
    "an input the spec lacks": (
        "polymodal_export", ("inputs", 1, "input"), "extra", "the export's inputs are extra,"),
}


@pytest.mark.parametrize("case", list(ONNX_EDITS))
def test_onnx_metadata_that_disagrees_with_the_graph_is_refused(capsys, tmp_path, table_model,
                                                                 table_onnx, case):
    _, table = table_model
    key, where, value, said = ONNX_EDITS[case]
    metadata = _onnx_metadata(table_onnx)
    edited = _edited(metadata[key.replace("_", ".")], lambda d: _set(d, where, value))
    path = rewrite_onnx(table_onnx, tmp_path / "edited.onnx", **{key: edited})
    code, _, err = call(capsys, "predict", path, "--data", table, "-o", tmp_path / "p.csv")
    one_clear_error(code, err, said)


# -- 10. a model file whose tensors or state disagree with its spec ---------------------------


def test_a_vocabulary_longer_than_its_cardinality_is_refused(capsys, tmp_path, table_model):
    import json

    model, table = table_model
    from safetensors import safe_open

    with safe_open(str(model), framework="pt") as handle:
        state = json.loads(handle.metadata()["polymodal.state"])
    state["inputs"]["record"]["vocabularies"]["kind"] = [f"v{i}" for i in range(50)]
    edited = rewrite_metadata(model, tmp_path / "m.safetensors", polymodal_state=json.dumps(state))
    for args in (("predict", edited, "--data", table, "-o", tmp_path / "p.csv"),
                 ("evaluate", edited, "--data", table), ("inspect", edited)):
        code, _, err = call(capsys, *args)
        one_clear_error(code, err, "does not fit its spec: inputs.record.adapter.categorical.kind:"
                        " the fitted kind hold 50 entries, more than its 2")


def test_a_vocabulary_holding_a_category_twice_is_refused(capsys, tmp_path, table_model):
    import json

    from safetensors import safe_open

    model, table = table_model
    with safe_open(str(model), framework="pt") as handle:
        state = json.loads(handle.metadata()["polymodal.state"])
    vocabulary = state["inputs"]["record"]["vocabularies"]["kind"]
    state["inputs"]["record"]["vocabularies"]["kind"] = [vocabulary[0]] * len(vocabulary)
    edited = rewrite_metadata(model, tmp_path / "m.safetensors", polymodal_state=json.dumps(state))
    for args in (("predict", edited, "--data", table, "-o", tmp_path / "p.csv"), ("inspect", edited)):
        code, _, err = call(capsys, *args)
        one_clear_error(code, err, "does not fit its spec: inputs.record.adapter.categorical.kind:"
                        f" the fitted kind hold the category {vocabulary[0]!r} twice")


def test_weights_edited_to_nan_are_refused_naming_the_tensor(capsys, tmp_path, table_model):
    import torch
    from safetensors import safe_open
    from safetensors.torch import save_file

    model, table = table_model
    with safe_open(str(model), framework="pt") as handle:
        metadata = dict(handle.metadata())
        tensors = {k: handle.get_tensor(k) for k in handle.keys()}
    name = next(k for k, v in tensors.items() if v.is_floating_point() and v.dim() == 2)
    poisoned = tensors[name].clone()
    poisoned[0, 0] = float("nan")
    save_file(dict(tensors, **{name: poisoned}), str(tmp_path / "nan.safetensors"),
              metadata=metadata)
    for args in (("predict", tmp_path / "nan.safetensors", "--data", table, "-o", tmp_path / "p.csv"),
                 ("inspect", tmp_path / "nan.safetensors")):
        code, _, err = call(capsys, *args)
        one_clear_error(code, err, f"its tensor {name} holds values that are not finite (NaN or"
                        " infinite); the file was damaged or edited")
    assert not (tmp_path / "p.csv").exists()
    buffer = next(k for k in tensors if k.endswith("running_var") or k.endswith("num_mean"))
    nan_buffer = dict(tensors, **{buffer: torch.full_like(tensors[buffer], float("nan"))})
    save_file(nan_buffer, str(tmp_path / "buffer.safetensors"), metadata=metadata)
    with pytest.raises(polymodal.ModelFileError, match=f"its tensor {buffer} holds NaN values"):
        polymodal.load(tmp_path / "buffer.safetensors")


def test_a_tensor_of_another_type_is_named(capsys, tmp_path, table_model):
    import torch
    from safetensors import safe_open
    from safetensors.torch import save_file

    model, table = table_model
    with safe_open(str(model), framework="pt") as handle:
        metadata = dict(handle.metadata())
        tensors = {k: handle.get_tensor(k) for k in handle.keys()}
    name = next(k for k, v in tensors.items() if v.is_floating_point() and v.dim() == 2)
    as_ints = dict(tensors, **{name: tensors[name].to(torch.int64)})
    save_file(as_ints, str(tmp_path / "ints.safetensors"), metadata=metadata)
    code, _, err = call(capsys, "inspect", tmp_path / "ints.safetensors")
    one_clear_error(code, err, f"1 of another type: {name} int64 (spec gives float32)")
    # another float precision is the same values: loaded in the spec's
    halves = dict(tensors, **{name: tensors[name].to(torch.float16)})
    save_file(halves, str(tmp_path / "half.safetensors"), metadata=metadata)
    loaded = polymodal.load(tmp_path / "half.safetensors")
    assert all(p.dtype == torch.float32 for p in loaded.parameters())
    code, _, err = call(capsys, "predict", tmp_path / "half.safetensors", "--data", table, "-o",
                        tmp_path / "p.csv")
    assert code == 0, err


def test_a_model_path_that_links_to_a_text_file_is_one_clear_message(capsys, tmp_path,
                                                                     table_model):
    _, table = table_model
    text = tmp_path / "notes.txt"
    text.write_text("not a model\n")
    for suffix in (".pth", ".pt", ".safetensors", ".onnx", ".pt2"):
        link = tmp_path / f"model{suffix}"
        link.symlink_to(text)
        for args in (("inspect", link), ("predict", link, "--data", table, "-o", tmp_path / "p.csv"),
                     ("evaluate", link, "--data", table), ("export", link, "-o", tmp_path / "e.onnx")):
            code, _, err = call(capsys, *args)
            one_clear_error(code, err, str(link))


@pytest.mark.parametrize("text", ["hello text\n", "x", "[1, 2, 3]\n"])
def test_pretrained_weights_linking_to_a_text_file_is_one_clear_message(capsys, tmp_path, text):
    (tmp_path / "notes.txt").write_text(text)
    (tmp_path / "w.pth").symlink_to(tmp_path / "notes.txt")
    spec = {"inputs": {"photo": {"adapter": {"type": "image", "channels": 3},
                                 "backbone": {"type": "timm", "model": "resnet10t",
                                              "pretrained": "w.pth"}}},
            "heads": {"y": {"type": "classification", "classes": 2}}}
    path = write_spec(tmp_path, spec)
    code, _, err = call(capsys, "build", path, "-o", tmp_path / "m.safetensors")
    one_clear_error(code, err, f"pretrained weights {tmp_path / 'w.pth'}: not a PyTorch weights"
                    " file")


# -- 9. a search with too many choices is refused at once -------------------------------------


@pytest.mark.parametrize("count, said", [(50_000, "50,000 choices; at most 1,000"),
                                         (300_000, "more than 100,000 values (mappings, lists")])
def test_a_search_with_too_many_choices_is_refused_quickly(capsys, tmp_path, count, said):
    import time

    choices = ", ".join(str(i) for i in range(count))
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(table_spec()) + "search:\n  training.batch_size:\n"
                    f"    type: categorical\n    choices: [{choices}]\n")
    started = time.perf_counter()
    code, _, err = call(capsys, "validate", path)
    assert time.perf_counter() - started < 10
    one_clear_error(code, err, said)
    assert "aliases" not in err


def test_repeated_choices_are_named_once_each():
    spec = {**table_spec(), "search": {"training.batch_size": {
        "type": "categorical", "choices": [8, 16, 8, 16, 8, 4]}}}
    with pytest.raises(SpecError, match="choices repeat: 16, 8$"):
        polymodal.load_spec(spec)


# -- 8. build and train refuse what validate's size estimate refuses, before allocating --------

HUGE = 10**12  # values no machine holds: the check cannot depend on this machine's memory


@pytest.mark.parametrize("change, where", [
    (lambda s: s["inputs"]["record"]["backbone"].update(hidden=[HUGE]),
     "inputs.record.backbone: the model would hold"),
    (lambda s: s["inputs"]["record"]["adapter"].update(categorical={"kind": 2},
                                                       embedding_dims={"kind": HUGE}),
     "inputs.record.adapter holds 14901.2 GiB"),
])
def test_a_model_too_large_for_memory_is_refused_before_it_is_allocated(capsys, tmp_path,
                                                                        change, where):
    import copy
    import time

    spec = copy.deepcopy(BUILDABLE_MLP)
    change(spec)
    path = write_spec(tmp_path, spec)
    table = write_grouped_table(tmp_path)
    for args in (("validate", path), ("build", path, "-o", tmp_path / "m.safetensors"),
                 ("train", path, "--data", table, "-o", tmp_path / "m.safetensors", "--quiet")):
        started = time.perf_counter()
        code, _, err = call(capsys, *args)
        assert time.perf_counter() - started < 20, args
        one_clear_error(code, err, where, "of memory (")
    assert not (tmp_path / "m.safetensors").exists()


@pytest.mark.parametrize(("value", "said"), [
    ("1e100", "should be a valid integer"),  # a float stays a float (a weight_decay may be 1e300)
    (str(10**100), "too large a number"), ("9223372036854775808", "too large a number")])
def test_a_number_too_large_for_any_size_is_a_spec_error(capsys, tmp_path, value, said):
    text = yaml.safe_dump(BUILDABLE_MLP).replace("- 8", f"- {value}")
    assert value in text
    path = tmp_path / "spec.yaml"
    path.write_text(text)
    for args in (("validate", path), ("build", path, "-o", tmp_path / "m.safetensors")):
        code, _, err = call(capsys, *args)
        one_clear_error(code, err, "inputs.record.backbone.hidden[0]:", said)


BUILDABLE_MLP = {"name": "big",
                 "inputs": {"record": {"adapter": {"type": "tabular", "categorical": {"kind": 2},
                                                   "numerical": ["x"]},
                                       "backbone": {"type": "mlp", "hidden": [8]}}},
                 "heads": {"label": {"type": "classification", "classes": 2}}}


# -- 13. predicting from an ONNX export prints no ONNX Runtime warnings ------------------------


def test_predict_from_an_onnx_export_prints_only_polymodals_lines(tmp_path, trained):
    pytest.importorskip("onnxscript")
    pytest.importorskip("onnxruntime")
    model, table = trained
    exported = tmp_path / "m.onnx"
    polymodal.export(model, exported, check=False)
    assert any(i.present for i in polymodal._export.Layout.from_json(
        _onnx_metadata(exported)["polymodal.export"], "x").inputs)  # optional present.* inputs
    done = subprocess.run([str(SCRIPT), "predict", str(exported), "--data", str(table), "-o",
                           str(tmp_path / "p.csv")], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "Initializer" not in done.stderr and "\x1b[" not in done.stderr, done.stderr


# -- round 3's hostile trial: specs as outputs, locks of build and export, long names ----------


def test_a_spec_is_never_its_own_output(capsys, tmp_path, table_model):
    _, table = table_model
    spec = write_spec(tmp_path, table_spec())
    before = spec.read_bytes()
    for args in (("train", spec, "--data", table, "-o", spec), ("build", spec, "-o", spec)):
        code, _, err = call(capsys, *args)
        one_clear_error(code, err, f"{spec}: this is the spec")
    assert spec.read_bytes() == before


def test_build_and_export_wait_for_no_one_else_s_output(capsys, tmp_path, table_model):
    model, _ = table_model
    target = tmp_path / "busy.safetensors"
    target.write_bytes(b"a run's model")
    spec = write_spec(tmp_path, {**table_spec(), "heads": {"label": {"type": "classification",
                                                                    "classes": 2}},
                                 "inputs": {"record": {"adapter": {
                                     "type": "tabular", "categorical": {"kind": 2},
                                     "numerical": ["x"]}, "backbone": {"type": "mlp", "hidden": [4]}}}})
    with _held_by_another_process(target):
        code, _, err = call(capsys, "build", spec, "-o", target)
        one_clear_error(code, err, "being written by another polymodal run")
        if _has_onnx():
            code, _, err = call(capsys, "export", model, "-o", target.with_suffix(".onnx"))
            assert code == 0, err  # another name: free
            with _held_by_another_process(target.with_suffix(".onnx")):
                code, _, err = call(capsys, "export", model, "-o", target.with_suffix(".onnx"))
                one_clear_error(code, err, "being written by another polymodal run")
    assert target.read_bytes() == b"a run's model"


def _has_onnx() -> bool:
    try:
        import onnxscript  # noqa: F401
    except ImportError:
        return False
    return True


@contextlib.contextmanager
def _held_by_another_process(target: Path) -> Iterator[None]:
    """``target``'s output lock, held by a child process until the block ends."""
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from polymodal._output_lock import output_lock\n"
         f"with output_lock({str(target)!r}):\n    print('held', flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        yield
    finally:
        holder.kill()
        holder.wait()


def test_names_too_long_for_the_file_system_are_one_message(capsys, tmp_path, table_model):
    model, table = table_model
    long = tmp_path / ("a" * 300 + ".csv")
    code, _, err = call(capsys, "predict", model, "--data", table, "-o", long)
    one_clear_error(code, err, "its name is too long for the file system")
    code, _, err = call(capsys, "evaluate", model, "--data", long)
    assert code == 1 and "internal error" not in err, err
    # names of 180-250 characters: their locks (cut short) stay apart
    spec = write_spec(tmp_path, table_spec())
    output = tmp_path / ("f" * 200 + ".safetensors")
    code, _, err = call(capsys, "train", spec, "--data", table, "-o", output)
    assert code == 0, err
    assert output.is_file()


def test_cv_checks_its_options_before_writing_anything(capsys, tmp_path, table_model):
    _, table = table_model
    spec = write_spec(tmp_path, table_spec())
    out = tmp_path / "cv"
    code, _, err = call(capsys, "cv", spec, "--data", table, "--folds", "2", "--epochs", "-1",
                        "-o", out)
    one_clear_error(code, err, "training.epochs: Input should be greater than 0")
    assert not out.exists()


@pytest.mark.parametrize("name", ["-rf", "a*b", "what?", "a:b", "\u202eevil.exe", "x|y"])
def test_a_name_that_shells_or_other_systems_take_apart_is_refused(name):
    from polymodal._spec import load_spec

    with pytest.raises(SpecError, match="is not a label"):
        load_spec({**table_spec(), "name": name})


def test_negative_rows_and_empty_batches_are_refused(capsys, table_model):
    model, table = table_model
    code, _, err = call(capsys, "explain", model, "--data", table, "--rows", "-3")
    one_clear_error(code, err, "--rows '-3': rows are numbered from 1")
    code, _, err = call(capsys, "predict", model, "--data", table, "--batch-size", "0", "-o", "x.csv")
    assert code == 2 and "--batch-size" in err  # click's usage error


def test_a_table_of_one_row_is_not_told_to_use_one_fold():
    from polymodal._errors import DataError
    from polymodal._training.folds import assign_folds

    with pytest.raises(DataError, match="1 rows cannot fill 2 folds; cross-validation needs at"
                                        " least 2, and a table with more"):
        assign_folds(1, 2)


def test_a_searched_value_too_large_for_this_machine_is_refused_before_any_trial(tmp_path):
    pytest.importorskip("optuna")
    table = write_grouped_table(tmp_path)
    spec = table_spec()
    spec["inputs"]["record"]["adapter"]["categorical"] = {"kind": 2}  # sizes known: measurable
    spec["heads"]["label"]["classes"] = 2
    spec["search"] = {"inputs.record.backbone.hidden": {
        "type": "categorical", "choices": [[8], [100000000, 100000000]]}}
    with pytest.raises(SpecError, match=r"search.inputs.record.backbone.hidden.choices\[1\]: .* is too"
                                        r" large: .*more than this machine's"):
        polymodal.tune(spec, table, trials=2, output=tmp_path / "t")
    assert not (tmp_path / "t").exists()

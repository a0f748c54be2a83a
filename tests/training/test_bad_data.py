"""Every bad value gets one message naming the row and column; --on-bad-row skip|fail."""

from __future__ import annotations

import re

import numpy as np
import pytest
import yaml
from PIL import Image
from training_data import read_csv, spec_data, write_csv

import polymodal
from polymodal._cli import main


def _train(table, tmp_path, **kwargs):
    return polymodal.train(spec_data(epochs=1), table, tmp_path / "m.safetensors",
                           progress=False, **kwargs)


def _edit(dataset, row: int, **values):
    rows = read_csv(dataset)
    rows[row - 1].update(values)
    return write_csv(dataset, rows)


@pytest.mark.parametrize("column, value, message", [
    ("photo", "img/nowhere.png", "row 3, column 'photo': image 'img/nowhere.png' not found in {folder}"),
    # (an empty photo is an absent input in this fused model: tests/training/test_absent_inputs.py)
    ("age", "forty", "row 3, column 'age': 'forty' is not a number"),
    ("label", "", "row 3, column 'label': the target is missing (empty or NaN)"),
    ("label", "NaN", "row 3, column 'label': the target is missing (empty or NaN)"),
])
def test_bad_values_name_row_and_column(dataset, tmp_path, column, value, message):
    _edit(dataset, 3, **{column: value})
    message = message.format(folder=dataset.parent)  # where a relative path is looked up
    with pytest.raises(polymodal.DataError, match=message.replace("(", r"\(").replace(")", r"\)")):
        _train(dataset, tmp_path)
    assert not (tmp_path / "m.safetensors").exists()


def test_unreadable_image_and_wrong_channel_count(dataset, tmp_path):
    (tmp_path / "img" / "broken.png").write_bytes(b"not a png at all")
    Image.fromarray(np.zeros((16, 16), np.uint8)).save(tmp_path / "img" / "gray.png")
    _edit(dataset, 2, photo="img/broken.png")
    _edit(dataset, 5, photo="img/gray.png")
    with pytest.raises(polymodal.DataError, match="row 2, column 'photo': image 'img/broken.png'"
                       " is not an image Pillow can read"):
        _train(dataset, tmp_path)
    result = _train(dataset, tmp_path, on_bad_row="skip")
    assert result.report.skipped == [
        f"{dataset} row 2, column 'photo': image 'img/broken.png' is not an image Pillow can read",
        f"{dataset} row 5, column 'photo': image 'img/gray.png' has 1 channel(s) but"
        " inputs.photo.adapter.channels is 3",
    ]


def _hostile_images(folder) -> dict[str, str]:
    """Image files a hostile table names, by what is said of each."""
    from test_images import write_png

    (folder / "img").mkdir(exist_ok=True)
    write_png(folder / "img" / "bomb.png", 100_000, 100_000, pixels=False)  # a header only
    np.save(folder / "img" / "empty.npy", np.zeros((3, 0, 16), np.float32))
    nan = np.zeros((3, 16, 16), np.float32)
    nan[0, 5, 5] = np.nan
    np.save(folder / "img" / "nan.npy", nan)
    return {"img/bomb.png": "is 100000x100000 pixels, more than the 67,108,864 (8192x8192) an"
                            " image may have",
            "img/empty.npy": "holds an empty array of shape [3, 0, 16]",
            "img/nan.npy": "holds 1 value(s) that are not finite numbers (NaN or infinite)"}


def test_huge_empty_and_nan_images_are_bad_rows_in_training(dataset, tmp_path, recwarn):
    hostile = _hostile_images(tmp_path)
    for row, path in zip((2, 3, 4), hostile):
        _edit(dataset, row, photo=path)
    with pytest.raises(polymodal.DataError, match=r"row 2, column 'photo': image 'img/bomb.png'"
                       r" is 100000x100000 pixels.*--on-bad-row skip"):
        _train(dataset, tmp_path)
    result = _train(dataset, tmp_path, on_bad_row="skip")
    skipped = sorted(result.report.skipped)
    assert len(skipped) == 3, skipped
    for row, (path, said) in zip((2, 3, 4), hostile.items()):
        expected = f"{dataset} row {row}, column 'photo': image {path!r} {said}"
        assert any(line.startswith(expected) for line in skipped), skipped
    assert not [w for w in recwarn if "Decompression" in type(w.message).__name__]


def test_huge_empty_and_nan_images_are_bad_rows_at_predict(trained, tmp_path, capsys):
    model, table = trained
    hostile = _hostile_images(tmp_path)
    rows = read_csv(table)[:6]
    for row in rows:
        row["photo"] = str(table.parent / row["photo"])
    for row, path in zip(rows[1:], hostile):
        row["photo"] = path
    bad = write_csv(tmp_path / "bad.csv", rows)
    for command in ("predict", "evaluate"):
        out = ["-o", str(tmp_path / f"{command}.csv")] if command == "predict" else []
        assert main([command, str(model), "--data", str(bad), *out]) == 1
        _, err = capsys.readouterr()
        assert err.startswith("error: ") and "internal error" not in err, err
        assert "row 2, column 'photo': image 'img/bomb.png' is 100000x100000 pixels" in err, err
        assert main([command, str(model), "--data", str(bad), *out, "--on-bad-row", "skip"]) == 0
        printed, err = capsys.readouterr()
        assert "skipped 3 bad row(s):" in err and "Warning" not in err, err
        for path, said in hostile.items():
            assert f"image {path!r} {said}" in err, err
        written = (tmp_path / f"{command}.csv").read_text() if out else printed
        assert not re.search(r"\bnan\b", written, re.IGNORECASE), written  # was `loss nan`


def test_images_of_another_size_need_resizing(dataset, tmp_path):
    Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(tmp_path / "img" / "big.png")
    _edit(dataset, 4, photo="img/big.png")
    with pytest.raises(polymodal.DataError, match="row 4, column 'photo': image 'img/big.png' is"
                       " 20x20 \\(height x width\\) but the others are 16x16; set inputs.photo.adapter.size"):
        _train(dataset, tmp_path)
    spec = spec_data(epochs=1)
    spec["inputs"]["photo"]["adapter"]["size"] = 16
    polymodal.train(spec, dataset, tmp_path / "m.safetensors", progress=False)


def test_missing_column_names_the_spec_path(dataset, tmp_path):
    rows = [{k: v for k, v in r.items() if k != "age"} for r in read_csv(dataset)]
    write_csv(dataset, rows)
    with pytest.raises(polymodal.DataError, match=r"no column 'age' \(read by inputs.report.adapter\)"):
        _train(dataset, tmp_path)


def test_unseen_category_at_predict_uses_the_unknown_row_and_is_counted(trained, tmp_path, capsys):
    model, table = trained
    rows = read_csv(table)[:5]
    rows[0]["color"] = "purple"
    rows[1]["color"] = "teal"
    rows[2]["color"] = ""
    for row in rows:
        row["photo"] = str(table.parent / row["photo"])
    new = write_csv(tmp_path / "new.csv", rows)
    result = polymodal.predict(model, new)
    assert len(result["columns"]["label"]) == 5
    note = "value(s) in column 'color' not seen in training: used the reserved unknown category"
    assert result["notes"] == {note: 2}
    assert result["note_examples"] == {note: ["purple", "teal"]}
    assert main(["predict", str(model), "--data", str(new), "-o", str(tmp_path / "p.csv")]) == 0
    assert f"2 {note} (e.g. 'purple', 'teal')" in capsys.readouterr().err


def test_unknown_class_at_evaluate_is_a_bad_row(trained, tmp_path):
    model, table = trained
    rows = read_csv(table)[:6]
    for row in rows:
        row["photo"] = str(table.parent / row["photo"])
    rows[4]["label"] = "maybe"
    bad = write_csv(tmp_path / "bad.csv", rows)
    with pytest.raises(polymodal.DataError, match="row 5, column 'label': class 'maybe' is not one"
                       " the model was trained on \\(no, yes\\)"):
        polymodal.evaluate(model, bad)
    result = polymodal.evaluate(model, bad, on_bad_row="skip")
    assert result["skipped_rows"] == 1 and result["heads"]["label"]["rows"] == 5


def test_predict_writes_nothing_when_a_later_batch_fails(trained, tmp_path, capsys):
    model, table = trained
    rows = read_csv(table)
    for row in rows:
        row["photo"] = str(table.parent / row["photo"])
    rows[30]["age"] = "n/a?"
    bad = write_csv(tmp_path / "bad.csv", rows)
    out = tmp_path / "out" / "p.csv"
    code = main(["predict", str(model), "--data", str(bad), "-o", str(out), "--batch-size", "8"])
    _, err = capsys.readouterr()
    assert code == 1
    assert err.startswith("error: ") and "row 31, column 'age': 'n/a?' is not a number" in err
    assert "Traceback" not in err
    assert not out.exists() and list(out.parent.iterdir()) == []
    assert main(["predict", str(model), "--data", str(bad), "-o", str(out), "--batch-size", "8",
                 "--on-bad-row", "skip"]) == 0
    _, err = capsys.readouterr()
    assert "skipped 1 bad row(s):" in err and "row 31, column 'age'" in err
    assert len(read_csv(out)) == len(rows) - 1


def test_cli_train_skip_reports_and_fail_exits_cleanly(dataset, tmp_path, capsys):
    _edit(dataset, 7, age="??")
    spec_path = tmp_path / "spec.yaml"
    spec_path.write_text(yaml.safe_dump(spec_data(epochs=1)))
    model = tmp_path / "m.safetensors"
    assert main(["train", str(spec_path), "--data", str(dataset), "-o", str(model), "--quiet"]) == 1
    _, err = capsys.readouterr()
    assert "row 7, column 'age': '??' is not a number" in err and "--on-bad-row skip" in err
    assert not model.exists()
    assert main(["train", str(spec_path), "--data", str(dataset), "-o", str(model), "--quiet",
                 "--on-bad-row", "skip"]) == 0
    out, err = capsys.readouterr()
    assert "skipped 1 bad row(s):" in err and model.exists()
    assert "epoch 1: train loss" not in err  # quiet: no epoch lines, but the summary
    assert "best epoch 1 of 1" in out


def test_model_not_trained_on_a_table_cannot_predict(tmp_path, dataset):
    spec = spec_data()
    spec["inputs"]["report"]["adapter"]["categorical"] = {"color": 3}
    spec["heads"]["label"]["classes"] = 2
    model = polymodal.build(spec)
    polymodal.save(model, tmp_path / "raw.safetensors")
    with pytest.raises(polymodal.ModelFileError, match="not trained on a table"):
        polymodal.predict(tmp_path / "raw.safetensors", dataset)


def test_what_is_learned_from_data_cannot_be_built_without_data():
    with pytest.raises(polymodal.SpecError) as info:
        polymodal.build(spec_data())
    message = str(info.value)  # every such option at once, not one fix at a time
    assert "inputs.report.adapter: the cardinality of 'color' is learned from data" in message
    assert "heads.label: classes: auto is learned from data" in message


def test_a_class_that_differs_only_in_case_is_noted_before_training(dataset, tmp_path, capsys):
    _edit(dataset, 3, label="Yes")
    spec_path = tmp_path / "spec.yaml"
    spec_path.write_text(yaml.safe_dump(spec_data(epochs=1)))
    assert main(["train", str(spec_path), "--data", str(dataset), "-o",
                 str(tmp_path / "m.safetensors")]) == 0
    err = capsys.readouterr().err
    note = ("note: 1 row(s) of column 'label' hold class 'Yes', kept apart from 'yes', which"
            " differs only in case")
    assert note in err and err.index(note) < err.index("epoch 1")


def test_skipped_rows_are_listed_in_row_order(dataset, tmp_path):
    _edit(dataset, 5, photo="img/nowhere.png")
    _edit(dataset, 2, age="forty")
    result = _train(dataset, tmp_path, on_bad_row="skip")
    assert [m.split(",")[0] for m in result.report.skipped] == [f"{dataset} row 2", f"{dataset} row 5"]


def test_a_row_found_bad_in_every_epoch_is_reported_once(dataset, tmp_path):
    """A truncated image passes the header check and fails when decoded, in each epoch: the
    run's report lists it once, not once an epoch."""
    photo = dataset.parent / read_csv(dataset)[4]["photo"]
    photo.write_bytes(photo.read_bytes()[:60])  # the header whole, the pixels cut
    result = polymodal.train(spec_data(epochs=3), dataset, tmp_path / "m.safetensors",
                             progress=False, on_bad_row="skip")
    assert len(result.report.skipped) == 1, result.report.skipped
    assert "row 5, column 'photo'" in result.report.skipped[0]

"""Tables with broken encodings are reported at the line where the bad byte is."""

from __future__ import annotations

import math

import numpy as np
import pytest

import polymodal
from polymodal import DataError


def test_a_latin1_csv_is_reported_at_the_line_of_its_first_bad_byte(tmp_path):
    path = tmp_path / "t.csv"
    rows = ["a,b", "1,x", "2,y", "3,z", "4,caf\xe9", "5,w"]
    path.write_bytes("\n".join(rows).encode("latin-1") + b"\n")
    with pytest.raises(DataError) as info:
        polymodal.read_table(path)
    message = str(info.value)
    assert message.startswith(f"{path} line 5: not UTF-8 text (byte 0xe9 at position 6)")
    assert "save the table as UTF-8" in message


def test_a_utf8_csv_with_a_bom_and_quoted_newlines_reads(tmp_path):
    path = tmp_path / "t.csv"
    path.write_bytes("\ufeffa,b\r\n1,\"two\r\nlines\"\r\n2,caf\u00e9\r\n".encode())
    table = polymodal.read_table(path)
    assert table.names == ["a", "b"]
    assert list(table.columns["b"]) == ["two\r\nlines", "caf\u00e9"]
    assert list(table.rows) == [1, 2]


def test_pretrained_weights_from_a_device_file_are_not_called_missing(tmp_path):
    spec = {"name": "z", "inputs": {"x": {"adapter": {"type": "image", "channels": 3},
                                          "backbone": {"type": "timm", "model": "resnet18",
                                                       "pretrained": "/dev/zero"}}},
            "heads": {"y": {"type": "classification", "classes": 2}}}
    with pytest.raises(polymodal.PolymodalError, match="/dev/zero is not a regular file"):
        polymodal.build(polymodal.load_spec(spec))



def _train_error(tmp_path, values: list[str]) -> str:
    path = tmp_path / "t.csv"
    path.write_text("a,y\n" + "".join(f"{v},{i % 2}\n" for i, v in enumerate(values)))
    spec = {"name": "t", "inputs": {"t": {"adapter": {"type": "tabular", "numerical": ["a"]}}},
            "heads": {"y": {"type": "classification", "classes": 2}},
            "training": {"epochs": 1}}
    with pytest.raises(DataError) as info:
        polymodal.train(spec, path, tmp_path / "m.safetensors", progress=False)
    return str(info.value)


def test_bad_rows_found_before_training_are_counted_in_the_table(tmp_path):
    message = _train_error(tmp_path, ["1", "two", "3", "four", "5", "6"])
    assert "(2 bad rows in the table)" in message and "--on-bad-row skip" in message


def test_a_table_whose_every_row_is_bad_points_at_the_spec(tmp_path):
    message = _train_error(tmp_path, ["one", "two", "three", "four"])
    assert "every row in the table is bad: check that the spec's options fit the table" in message


REGRESSION = {"name": "r", "inputs": {"t": {"adapter": {"type": "tabular", "numerical": ["a"]}}},
              "heads": {"age": {"type": "regression"}}, "training": {"epochs": 1}}


def _regression_table(tmp_path, a: dict[int, str] | None = None, age: dict[int, str] | None = None):
    path = tmp_path / "t.csv"
    rows = [f"{(a or {}).get(i, i)},{(age or {}).get(i, 20 + i)}\n" for i in range(12)]
    path.write_text("a,age\n" + "".join(rows))
    return path


@pytest.mark.parametrize("column", ["age", "a"])
def test_a_number_too_large_for_the_statistics_is_a_bad_row(tmp_path, recwarn, column):
    table = _regression_table(tmp_path, **{column: {3: "1e308"}})
    with pytest.raises(DataError, match=rf"row 4, column '{column}': '1e308' is larger in"
                       " magnitude than 1e\\+30, the most a number in a numeric column may be"):
        polymodal.train(REGRESSION, table, tmp_path / "m.safetensors", progress=False)
    result = polymodal.train(REGRESSION, table, tmp_path / "m.safetensors", progress=False,
                             on_bad_row="skip")
    assert len(result.report.skipped) == 1
    state = result.model.fitted_state
    assert 1 < state["heads"]["age"]["std"] < 10 and 1 < state["inputs"]["t"]["std"][0] < 10
    predicted = polymodal.predict(tmp_path / "m.safetensors", _regression_table(tmp_path))
    assert all(math.isfinite(v) for v in predicted["columns"]["age"]), predicted
    assert not [w for w in recwarn if issubclass(w.category, RuntimeWarning)], list(recwarn)


def test_infinite_numbers_in_a_dataframe_are_bad_rows(tmp_path):
    columns = {"a": np.arange(12, dtype=np.float64), "age": np.arange(12, dtype=np.float64) + 20}
    columns["age"][2] = np.inf
    columns["a"][5] = -np.inf
    result = polymodal.train(REGRESSION, columns, tmp_path / "m.safetensors", progress=False,
                             on_bad_row="skip")
    assert sorted(result.report.skipped) == sorted([
        "<table> row 3, column 'age': inf is infinite",
        "<table> row 6, column 'a': -inf is infinite"])


def test_a_model_file_with_a_non_finite_target_scale_is_refused(tmp_path):
    import json

    from safetensors import safe_open
    from safetensors.torch import save_file

    model = tmp_path / "m.safetensors"
    polymodal.train(REGRESSION, _regression_table(tmp_path), model, progress=False)
    with safe_open(str(model), framework="pt") as handle:
        metadata = dict(handle.metadata())
        tensors = {k: handle.get_tensor(k) for k in handle.keys()}
    edits = {("heads", "age", "std"): (math.inf, "heads.age.std: the fitted std is inf, not a"
                                               " finite number above 0"),
             ("inputs", "t", "mean"): ([math.nan], "inputs.t.adapter.numerical: the fitted mean"
                                                   " of 'a' is nan, not a finite number")}
    for (section, name, key), (value, said) in edits.items():
        state = json.loads(metadata["polymodal.state"])
        state[section][name][key] = value
        edited = tmp_path / "edited.safetensors"
        save_file(tensors, str(edited), metadata={**metadata, "polymodal.state": json.dumps(state)})
        with pytest.raises(polymodal.ModelFileError, match=f"does not fit its spec: {said}"):
            polymodal.load(edited)

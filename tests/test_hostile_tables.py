"""Tables with broken encodings are reported at the line where the bad byte is."""

from __future__ import annotations

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

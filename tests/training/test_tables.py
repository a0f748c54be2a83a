"""Tables from CSV, Parquet and pandas, whole or in chunks, with their source row numbers."""

from __future__ import annotations

import pytest
from training_data import read_csv

import polymodal
from polymodal._data.table import iter_table, read_table


def test_csv_chunks_keep_row_numbers(dataset):
    chunks = list(iter_table(dataset, chunk_rows=10))
    assert [len(c) for c in chunks] == [10, 10, 10, 10, 8]
    assert chunks[1].rows.tolist()[0] == 11
    assert chunks[1].where(0) == f"{dataset} row 11"


def test_dataframe_and_parquet_train_and_predict_like_csv(trained, tmp_path):
    pd = pytest.importorskip("pandas")
    pytest.importorskip("pyarrow")
    model, table = trained
    frame = pd.read_csv(table)
    frame["photo"] = [str(table.parent / p) for p in frame["photo"]]
    from_frame = polymodal.predict(model, frame)
    frame.to_parquet(tmp_path / "t.parquet")
    from_parquet = polymodal.predict(model, tmp_path / "t.parquet", batch_size=7)
    from_csv = polymodal.predict(model, table)
    assert from_frame["columns"]["label_prob_yes"] == from_csv["columns"]["label_prob_yes"]
    # Batches of 7 rows run other kernels than one batch of all rows: the last printed digit
    # may differ.
    assert from_parquet["columns"]["label_prob_yes"] == pytest.approx(
        from_csv["columns"]["label_prob_yes"], abs=2e-6)
    assert from_parquet["columns"]["row"] == list(range(1, len(frame) + 1))



def test_images_held_in_memory_train_like_image_files(dataset, tmp_path):
    import numpy as np
    import torch
    from PIL import Image
    from safetensors.torch import load_file

    from training_data import spec_data

    rows = read_csv(dataset)
    columns = {name: [r[name] for r in rows] for name in rows[0]}
    # uint8 channels-last arrays, as Pillow gives them: scaled and transposed like the files
    columns["photo"] = [np.array(Image.open(dataset.parent / r["photo"])) for r in rows]
    polymodal.train(spec_data(epochs=1), columns, tmp_path / "memory.safetensors", progress=False)
    polymodal.train(spec_data(epochs=1), dataset, tmp_path / "files.safetensors", progress=False)
    from_memory, from_files = (load_file(tmp_path / f"{n}.safetensors") for n in ("memory", "files"))
    assert all(torch.equal(from_memory[k], from_files[k]) for k in from_files)

    columns["photo"] = [torch.from_numpy(a).permute(2, 0, 1) for a in columns["photo"]]  # tensors
    assert polymodal.predict(tmp_path / "files.safetensors", columns)["columns"]["label_prob_yes"] == \
        polymodal.predict(tmp_path / "files.safetensors", dataset)["columns"]["label_prob_yes"]
    columns["photo"][2] = torch.zeros(3, 8, 8)
    with pytest.raises(polymodal.DataError, match="<table> row 3, column 'photo': image array of"
                       " shape \\[3, 8, 8\\] is 8x8 \\(height x width\\) but the model was trained on 16x16; resize the"
                       " images to 16x16 \\(a model trained with inputs.photo.adapter.size resizes"
                       " them itself\\)"):
        polymodal.predict(tmp_path / "files.safetensors", columns)

def test_integer_categories_from_a_dataframe_match_text_from_csv(tmp_path):
    pd = pytest.importorskip("pandas")
    from polymodal_plugins._columns import encode_categories, fit_vocabulary, lookup

    vocabulary = fit_vocabulary(pd.Series([3, 1, 3, None]).to_numpy())
    assert vocabulary == [1, 3]
    ids, unseen = encode_categories(read_table({"c": ["3", "1", "7", ""]}).columns["c"],
                                    lookup(vocabulary), unknown=2, missing=-1)
    assert ids.tolist() == [1, 0, 2, -1] and unseen == [7]


def test_bad_tables_get_clear_messages(tmp_path):
    with pytest.raises(polymodal.DataError, match="no such table file"):
        read_table(tmp_path / "none.csv")
    (tmp_path / "t.xlsx").write_text("x")
    with pytest.raises(polymodal.DataError, match="unknown table type '.xlsx'"):
        read_table(tmp_path / "t.xlsx")
    (tmp_path / "ragged.csv").write_text("a,b\n1,2\n3\n")
    with pytest.raises(polymodal.DataError, match=r"ragged.csv row 2 \(line 3\): has 1 fields, the header has 2"):
        read_table(tmp_path / "ragged.csv")
    (tmp_path / "dup.csv").write_text("a,a\n1,2\n")
    with pytest.raises(polymodal.DataError, match="column 'a' appears twice"):
        read_table(tmp_path / "dup.csv")


def test_read_csv_helper_roundtrip(dataset):
    assert len(read_csv(dataset)) == len(read_table(dataset))


@pytest.mark.parametrize("head, values, state", [
    ({"type": "classification", "classes": 3}, ["0", "2", "2"], {"classes": [0, 1, 2]}),
    ({"type": "classification", "classes": 3}, ["ok", "bad"], {"classes": ["bad", "ok", "class_2"]}),
    ({"type": "multilabel", "labels": 3}, ["a;b", ""], {"labels": ["a", "b", "label_2"]}),
])
def test_a_given_count_names_its_outputs_from_the_targets(head, values, state):
    assert _target_codec(head).fit(read_table({"y": values})) == state


@pytest.mark.parametrize("head, values, words", [
    ({"type": "classification", "classes": 2}, ["a", "b", "c"],
     "<table>: target column 'y' holds 3 classes (a, b, c) but heads.y.classes is 2;"
     " set classes: auto to learn them"),
    ({"type": "multilabel", "labels": 1}, ["a;b"],
     "<table>: target column 'y' holds 2 labels (a, b) but heads.y.labels is 1;"
     " set labels: auto to learn them"),
    ({"type": "classification"}, ["a", "a"], "holds 1 class(es) (a); a classification needs at least 2"),
    ({"type": "multilabel"}, ["", ""], "target column 'y' of heads.y holds no labels"),
])
def test_targets_that_do_not_fit_the_head_are_refused(head, values, words):
    with pytest.raises(polymodal.DataError) as info:
        _target_codec(head).fit(read_table({"y": values}))
    assert words in str(info.value)


def _target_codec(head: dict):
    from polymodal._data.binding import Binding

    spec = polymodal.load_spec({"name": "t", "inputs": {"x": {"adapter": {
        "type": "tabular", "numerical": ["x"]}}}, "heads": {"y": head}})
    return Binding(spec).head_codec("y")


def test_text_in_a_dict_of_columns_is_kept_as_python_text_like_csv(trained):
    from polymodal.plugin import Table

    table = Table.from_columns({"age": ["41", "??"], "n": [1, 2]}, source="rows")
    assert type(table.columns["age"][1]) is str and table.columns["n"].dtype.kind == "i"
    model, csv_table = trained
    image = str(csv_table.parent / read_csv(csv_table)[0]["photo"])
    with pytest.raises(polymodal.DataError) as info:
        polymodal.predict(model, {"photo": [image] * 2, "color": ["red", "blue"],
                                  "age": ["41", "??"]})
    assert "<table> row 2, column 'age': '??' is not a number" in str(info.value)


def test_class_weights_by_name_train_with_classes_learned_from_data(tmp_path):
    from training_data import table_spec, write_grouped_table

    table = write_grouped_table(tmp_path)
    spec = table_spec()
    spec["heads"]["label"]["class_weights"] = {"yes": 3.0}
    result = polymodal.train(spec, table, tmp_path / "m.safetensors", progress=False)
    head = result.model.spec.heads["label"]
    assert (head.classes, head.class_weights) == (2, [1.0, 3.0])  # classes learned as no, yes
    assert result.model.heads["label"].class_weights.tolist() == [1.0, 3.0]

    spec["heads"]["label"]["class_weights"] = {"Yes": 3.0}
    with pytest.raises(polymodal.SpecError) as caught:
        polymodal.train(spec, table, tmp_path / "n.safetensors", progress=False)
    assert str(caught.value).startswith(
        "heads.label.class_weights: no class 'Yes' in the training rows' column 'label'."
        " Did you mean 'yes'?"), str(caught.value)
    assert not (tmp_path / "n.safetensors").exists()


def test_spaces_around_values_and_relative_paths_in_columns_read_as_documented(trained, tmp_path,
                                                                               monkeypatch):
    model, table = trained
    rows = read_csv(table)[:6]
    columns = {k: [r[k] for r in rows] for k in rows[0]}
    plain = polymodal.predict(model, table)["columns"]["label_prob_yes"][:6]
    spaced = {**columns, "color": [f" {c} " for c in columns["color"]],
              "photo": [f" {table.parent / p} " for p in columns["photo"]]}
    found = polymodal.predict(model, spaced)
    assert found["notes"] == {} and found["columns"]["label_prob_yes"] == plain
    monkeypatch.chdir(table.parent)  # a dict of columns has no folder: paths from here
    assert polymodal.predict(model, columns)["columns"]["label_prob_yes"] == plain
    monkeypatch.chdir(tmp_path)
    with pytest.raises(polymodal.DataError, match=f"not found in {tmp_path}"):
        polymodal.predict(model, columns)
    without = {k: v for k, v in columns.items() if k != "photo"}
    with pytest.raises(polymodal.DataError, match="no column 'photo'"):
        polymodal.predict(model, without)

"""An input absent in some rows: said by the data (an empty cell), taken by the fusion as absent
(inputs.NAME.missing), reported by presence pattern; a given but unreadable value stays a bad
row."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from training_data import read_csv, spec_data, write_csv

import polymodal
from polymodal._cli import main
from polymodal._data.binding import Binding
from polymodal._data.table import read_table


def _empty(dataset, rows: list[int], **columns: str):
    """``dataset`` with the cells ``columns`` (names -> "") emptied in the 1-based ``rows``."""
    table = read_csv(dataset)
    for row in rows:
        table[row - 1].update({c: "" for c in columns})
    return write_csv(dataset, table)


def _spec(**photo_input):
    spec = spec_data(epochs=1)
    spec["inputs"]["photo"].update(photo_input)
    return spec


def test_an_empty_image_cell_is_an_absent_input_everywhere(dataset, tmp_path, capsys):
    _empty(dataset, [2, 5, 9, 14, 20, 21, 30, 33, 40, 44], photo="")
    model = tmp_path / "m.safetensors"
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps(spec_data(epochs=1)))
    assert main(["train", str(spec), "--data", str(dataset), "-o", str(model)]) == 0
    captured = capsys.readouterr()
    err = captured.err
    assert "inputs held by the training rows: photo + report: " in err and "report only: " in err
    assert "fusion.modality_dropout is 0" in err  # what that means, and what to try
    assert "head label on the validation rows, by the inputs each row holds:" in captured.out
    history = json.loads((tmp_path / "m.run" / "metrics.json").read_text())
    by_inputs = history[-1]["val_by_presence"]["label"]
    assert sum(v["rows"] for v in by_inputs.values()) == 10  # the default 20% of 48 rows
    assert set(by_inputs) <= {"photo + report", "report only"}

    assert main(["evaluate", str(model), "--data", str(dataset), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["rows"] == 48 and result["skipped_rows"] == 0
    by = result["by_presence"]["label"]
    assert {k: v["rows"] for k, v in by.items()} == {"photo + report": 38, "report only": 10}
    assert set(by["report only"]["metrics"]) == {"accuracy", "balanced_accuracy", "macro_f1", "auroc"}
    assert main(["evaluate", str(model), "--data", str(dataset)]) == 0
    assert "by the inputs each row holds:" in capsys.readouterr().out

    out = tmp_path / "p.csv"
    assert main(["predict", str(model), "--data", str(dataset), "-o", str(out)]) == 0
    used = [r["inputs_used"] for r in read_csv(out)]
    assert [i for i, u in enumerate(used, start=1) if u == "report only"] == [2, 5, 9, 14, 20, 21,
                                                                             30, 33, 40, 44]


def test_an_absent_rows_prediction_is_the_models_with_the_input_marked_absent(dataset, tmp_path):
    _empty(dataset, [3], photo="")
    model_file = tmp_path / "m.safetensors"
    polymodal.train(spec_data(epochs=1), dataset, model_file, progress=False)
    model = polymodal.load(model_file).eval()
    rows = read_csv(dataset)
    # From a DataFrame-like dict of columns, the empty cell as None and as NaN.
    for empty in (None, float("nan")):
        columns = {k: [r[k] for r in rows[:4]] for k in rows[0]}
        columns["photo"][2] = empty
        columns["photo"] = [str(dataset.parent / p) if isinstance(p, str) else p
                            for p in columns["photo"]]
        predicted = polymodal.predict(model, columns)["columns"]
        assert predicted["inputs_used"] == ["photo + report"] * 2 + ["report only", "photo + report"]
    # A pandas DataFrame: None and NaN in the photo column.
    import pandas

    frame = pandas.DataFrame({k: [r[k] for r in rows[:4]] for k in rows[0]})
    frame["photo"] = [str(dataset.parent / rows[0]["photo"]), None, float("nan"),
                      str(dataset.parent / rows[3]["photo"])]
    used = polymodal.predict(model, frame)["columns"]["inputs_used"]
    assert used == ["photo + report", "report only", "report only", "photo + report"]
    # The same row with an image given but marked absent: the image has no influence.
    table = read_table(write_csv(tmp_path / "one.csv", [{**rows[2], "photo": rows[0]["photo"]}]))
    table.base_dir = dataset.parent
    encoded = Binding(model.spec).encode(table, model.fitted_state, targets=False)
    with torch.no_grad():
        logits = model(encoded.inputs, present={"photo": torch.tensor([False])})["label"]
    probability = torch.softmax(logits, -1)[0, 1].item()
    assert predicted["label_prob_yes"][2] == pytest.approx(probability, abs=1e-6)


def test_training_runs_the_backbone_on_the_rows_that_hold_the_input_only(dataset, tmp_path):
    """Placeholders of absent rows never reach batch-norm statistics."""
    _empty(dataset, [1, 2, 3], photo="")
    polymodal.train(spec_data(epochs=1), dataset, tmp_path / "m.safetensors", progress=False)
    model = polymodal.load(tmp_path / "m.safetensors")
    seen = []
    model.adapters["photo"].register_forward_hook(lambda m, args, out: seen.append(out.shape[0]))
    table = read_table(dataset).take(np.arange(8))
    encoded = Binding(model.spec).encode(table, model.fitted_state, targets=False)
    model.train()
    model(encoded.inputs, encoded.present)
    model.eval()
    model(encoded.inputs, encoded.present)
    assert seen == [5, 8]  # training: the 5 rows with a photo; evaluation: every row


def test_missing_bad_row_makes_an_empty_cell_a_bad_row(dataset, tmp_path):
    _empty(dataset, [3], photo="")
    with pytest.raises(polymodal.DataError, match="row 3, column 'photo': empty: input 'photo' is"
                       " absent in this row, and inputs.photo.missing is bad_row"):
        polymodal.train(_spec(missing="bad_row"), dataset, tmp_path / "m.safetensors",
                        progress=False)
    result = polymodal.train(_spec(missing="bad_row"), dataset, tmp_path / "m.safetensors",
                             progress=False, on_bad_row="skip")
    assert len(result.report.skipped) == 1


def test_an_input_a_head_reads_alone_cannot_be_absent(dataset, tmp_path):
    _empty(dataset, [3], photo="")
    spec = spec_data(epochs=1)
    spec["heads"]["photo_only"] = {"type": "classification", "target": "label", "inputs": ["photo"]}
    with pytest.raises(polymodal.DataError, match=r"row 3, column 'photo': no image path \(empty\)"
                       r" \(input 'photo' cannot be absent: head 'photo_only' reads it alone\)"):
        polymodal.train(spec, dataset, tmp_path / "m.safetensors", progress=False)
    spec["inputs"]["photo"]["missing"] = "absent"
    with pytest.raises(polymodal.SpecError, match="inputs.photo.missing: absent: head 'photo_only'"
                       " reads input 'photo' alone"):
        polymodal.load_spec(spec)


def test_a_tabular_input_with_every_column_empty_is_absent(dataset, tmp_path):
    _empty(dataset, [4, 8], color="", age="")
    _empty(dataset, [12], age="")  # one column empty: imputed, the input is there
    polymodal.train(spec_data(epochs=1), dataset, tmp_path / "m.safetensors", progress=False)
    result = polymodal.evaluate(tmp_path / "m.safetensors", dataset)
    assert result["by_presence"]["label"]["photo only"]["rows"] == 2


def test_a_row_without_any_input_is_a_bad_row(dataset, tmp_path):
    _empty(dataset, [6], photo="", color="", age="")
    with pytest.raises(polymodal.DataError, match="row 6, column 'photo/color/age': every input of"
                       r" head 'label' \(photo, report\) is absent: nothing to predict from"):
        polymodal.train(spec_data(epochs=1), dataset, tmp_path / "m.safetensors", progress=False)


def test_an_input_absent_from_every_training_row_is_refused(dataset, tmp_path):
    _empty(dataset, list(range(1, 49)), photo="")
    with pytest.raises(polymodal.DataError, match="input 'photo' is absent in every training row"):
        polymodal.train(spec_data(epochs=1), dataset, tmp_path / "m.safetensors", progress=False)


def test_a_given_but_unreadable_image_stays_a_bad_row(dataset, tmp_path):
    _empty(dataset, [2], photo="")
    rows = read_csv(dataset)
    rows[4]["photo"] = "img/gone.png"
    write_csv(dataset, rows)
    with pytest.raises(polymodal.DataError, match="row 5, column 'photo': image 'img/gone.png' not found"):
        polymodal.train(spec_data(epochs=1), dataset, tmp_path / "m.safetensors", progress=False)

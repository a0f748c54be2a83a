"""fusion.auxiliary: a copy of each fused head per input, trained on that input's pooled
features beside the fused head; prediction uses the fused head only."""

from __future__ import annotations

import json

import pytest
import torch
from training_data import read_csv, spec_data, write_csv, write_dataset

import polymodal
from polymodal._cli import main
from polymodal._data.binding import Binding
from polymodal._spec import load_spec
from polymodal._training.engine import auxiliary_lines
from polymodal._training.inference import auxiliary_losses


def _spec(weight: float = 0.5) -> dict:
    spec = spec_data(epochs=2)
    spec["fusion"]["auxiliary"] = {"weight": weight}
    return spec


def test_training_trains_a_head_per_input_and_prediction_uses_the_fused_one(tmp_path, capsys):
    table = write_dataset(tmp_path, rows=48)
    rows = read_csv(table)
    for row in rows[::4]:
        row["photo"] = ""  # the photo's copy learns from the rows that hold a photo only
    write_csv(table, rows)
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps(_spec()))
    model = tmp_path / "m.safetensors"
    assert main(["train", str(spec), "--data", str(table), "-o", str(model)]) == 0
    err = capsys.readouterr().err
    assert "head label from each input alone (fusion.auxiliary), accuracy on the validation rows:" \
           " photo " in err and ", report " in err and "; fused " in err
    history = json.loads((tmp_path / "m.run" / "metrics.json").read_text())
    assert set(history[-1]["val_auxiliary"]) == {"label@photo", "label@report"}
    loaded = polymodal.load(model)
    assert set(loaded.auxiliary) == {"label@photo", "label@report"}  # kept in the model file
    inputs, present = _batch(loaded, table)
    loaded.eval()
    assert set(loaded(inputs, present)) == {"label"}  # prediction: the fused head only
    # in training, the copies' loss reaches their input's own layers
    loaded.train()
    out = loaded(inputs, present)
    assert set(out) == {"label", "label@photo", "label@report"}
    target = torch.zeros(len(out["label"]), dtype=torch.long)
    copies = auxiliary_losses(loaded, out, {"label": (target, None)}, present)
    copies["label@report"][0].backward()
    assert loaded.auxiliary["label@report"].linear.weight.grad.abs().sum() > 0
    assert any(p.grad is not None and p.grad.abs().sum() > 0
               for p in loaded.input_backbones["report"].parameters())
    assert all(p.grad is None for p in loaded.heads["label"].parameters())
    result = polymodal.evaluate(model, table)
    assert set(result["heads"]) == {"label"}


def _batch(model, table):
    from polymodal._data.table import read_table

    read = read_table(table)
    binding = Binding(model.spec)
    encoded = binding.encode(read, model.fitted_state, targets=False)
    present = {n: torch.as_tensor(m) for n, m in encoded.present.items()}
    return encoded.inputs, present or None


def test_a_copys_loss_counts_the_rows_holding_its_input_and_a_target_only():
    spec = _spec()
    spec["inputs"]["report"]["adapter"]["categorical"] = {"color": 3}
    spec["heads"]["label"]["classes"] = 2
    model = polymodal.build(spec)
    output = torch.tensor([[2.0, 0.0], [0.0, 2.0], [2.0, 0.0], [0.0, 2.0]])
    target = torch.tensor([0, 0, 1, 1])
    rows = torch.tensor([0, 1, 2])  # row 4 has no target
    held = torch.tensor([True, False, True, True])  # row 2 has no photo
    found = auxiliary_losses(model, {"label@photo": output, "label": output},
                             {"label": (target, rows)}, {"photo": held})
    assert set(found) == {"label@photo"}
    loss, chosen, wanted = found["label@photo"]
    assert torch.equal(chosen, output[[0, 2]]) and torch.equal(wanted, target[[0, 2]])
    expected = torch.nn.functional.cross_entropy(output[[0, 2]], target[[0, 2]])
    assert float(loss) == pytest.approx(float(expected), rel=1e-5)


def test_an_input_far_below_the_fused_head_is_noted():
    binding = Binding(load_spec(_spec()))
    best = {"val": {"label": {"accuracy": 0.9}},
            "val_auxiliary": {"label@photo": {"accuracy": 0.85}, "label@report": {"accuracy": 0.55}}}
    lines = auxiliary_lines(best, binding)
    assert lines[0] == ("head label from each input alone (fusion.auxiliary), accuracy on the"
                        " validation rows: photo 0.8500, report 0.5500; fused 0.9000")
    assert len(lines) == 2 and lines[1].startswith("note: head label from report alone:")
    assert auxiliary_lines({"val": {"label": {"accuracy": 0.9}}}, binding) == []


def test_the_option_is_searchable_and_exports_the_fused_heads_only(tmp_path):
    pytest.importorskip("optuna")
    table = write_dataset(tmp_path, rows=32)
    spec = spec_data(epochs=1)
    spec["search"] = {"fusion.auxiliary": {"type": "categorical",
                                           "choices": [None, {"weight": 0.3}]}}
    result = polymodal.tune(spec, table, trials=2, output=tmp_path / "t", sampler_seed=0,
                            pruning=False)
    assert result.trials.get("COMPLETE") == 2
    model = tmp_path / "aux.safetensors"
    polymodal.train(_spec(), table, model, progress=False)
    pytest.importorskip("onnxruntime")
    exported = tmp_path / "aux.onnx"
    polymodal.export(model, exported)
    predicted = polymodal.predict(exported, table)["columns"]
    assert predicted["label"] == polymodal.predict(model, table)["columns"]["label"]

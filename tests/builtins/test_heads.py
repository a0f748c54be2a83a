"""Heads: classification, regression, multilabel; losses against their formulas, predictions."""

from __future__ import annotations

import pytest
import torch

import polymodal
from builtin_helpers import spec_error


def head_spec(**heads) -> dict:
    return {"inputs": {"t": {"adapter": {"type": "tabular", "numerical": ["a", "b"]}}},
            "heads": heads}


def head(**config):
    return polymodal.build(head_spec(y=config)).heads["y"]


def test_classification_loss_with_class_weights_and_label_smoothing():
    h = head(type="classification", classes=3, class_weights=[1.0, 2.0, 0.5],
             label_smoothing=0.1)
    logits = torch.tensor([[2.0, 0.5, -1.0], [0.1, 0.2, 3.0], [1.0, 1.0, 1.0]])
    target = torch.tensor([0, 2, 1])
    w, eps, k = torch.tensor([1.0, 2.0, 0.5]), 0.1, 3
    logp = logits.log_softmax(dim=1)
    nll = -(w[target] * logp[torch.arange(3), target]).sum()
    smooth = -(w * logp).sum(dim=1).sum() / k
    expected = ((1 - eps) * nll + eps * smooth) / w[target].sum()
    assert torch.allclose(h.loss(logits, target), expected)


def test_classification_predicts_class_and_probabilities():
    h = head(type="classification", classes=3)
    predictions = h.predict(torch.tensor([[0.0, 3.0, 1.0]]))
    assert predictions["class"].tolist() == [1]
    assert torch.allclose(predictions["probabilities"].sum(dim=1), torch.ones(1))


@pytest.mark.parametrize("loss", ["mse", "huber", "l1"])
def test_regression_losses(loss):
    h = head(type="regression", outputs=2, loss=loss, huber_delta=0.5)
    output = torch.tensor([[0.0, 1.0], [2.0, -1.0]])
    target = torch.tensor([[0.2, 3.0], [2.0, 0.0]])
    d = (output - target).abs()
    expected = {"mse": (d**2).mean(), "l1": d.mean(),
                "huber": torch.where(d < 0.5, 0.5 * d**2, 0.5 * (d - 0.25)).mean()}[loss]
    assert torch.allclose(h.loss(output, target), expected)
    assert torch.equal(h.predict(output)["value"], output)


def test_multilabel_loss_with_pos_weight_and_threshold_predictions():
    h = head(type="multilabel", labels=3, pos_weight=[1.0, 4.0, 0.5], threshold=0.7)
    logits = torch.tensor([[0.0, 2.0, -1.0], [1.0, -3.0, 0.5]])
    target = torch.tensor([[1.0, 1.0, 0.0], [0.0, 1.0, 1.0]])
    p = torch.tensor([1.0, 4.0, 0.5])
    s = logits.sigmoid()
    expected = -(p * target * s.log() + (1 - target) * (1 - s).log()).mean()
    assert torch.allclose(h.loss(logits, target), expected, atol=1e-6)
    predictions = h.predict(logits)
    assert torch.allclose(predictions["probabilities"], s)
    assert predictions["labels"].tolist() == [[False, True, False], [True, False, False]]


@pytest.mark.parametrize("config, where, words", [
    ({"type": "classification", "classes": 1}, "heads.y.classes", "greater than or equal to 2"),
    ({"type": "classification", "classes": 3, "class_weights": [1, 2]}, "heads.y.class_weights",
     "2 weights for 3 classes"),
    ({"type": "classification", "class_weights": [1, 2]}, "heads.y.class_weights",
     "give weights by class name"),
    ({"type": "classification", "class_weights": {"a": -1}}, "heads.y.class_weights", ">= 0"),
    ({"type": "classification", "classes": 2, "label_smoothing": 1.0}, "heads.y.label_smoothing",
     "less than 1"),
    ({"type": "regression", "loss": "l2"}, "heads.y.loss", "'mse', 'huber' or 'l1'"),
    ({"type": "multilabel", "labels": 2, "pos_weight": [1.0]}, "heads.y",
     "pos_weight has 1 values for 2 labels"),
    ({"type": "multilabel", "labels": 2, "threshold": 1.5}, "heads.y.threshold", "less than 1"),
    ({"type": "multilabel", "labels": 0}, "heads.y.labels", "greater than or equal to 1"),
    ({"type": "multilabel", "pos_weight": [1.0]}, "heads.y", "pos_weight needs a number of labels"),
    ({"type": "multilabel", "labels": 2, "separator": ""}, "heads.y.separator", "at least 1 character"),
    ({"type": "multilabel", "labels": 2, "inputs": ["x"]}, "heads.y.inputs[0]", "unknown input"),
])
def test_bad_options_name_their_place(config, where, words):
    message = spec_error(head_spec(y=config))
    assert message.startswith(where + ":") and words in message, message


def test_a_training_loop_needs_no_per_head_code(roundtrip):
    spec = head_spec(kind={"type": "classification", "classes": 3, "label_smoothing": 0.1},
                     price={"type": "regression", "loss": "huber"},
                     tags={"type": "multilabel", "labels": 4, "pos_weight": [1, 2, 3, 4]})
    spec["inputs"]["t"]["backbone"] = {"type": "mlp", "hidden": [16]}
    model = polymodal.build(spec)
    torch.manual_seed(0)
    batch = {"t": {"a": torch.randn(16), "b": torch.randn(16)}}
    targets = {"kind": (batch["t"]["a"] > 0).long(), "price": batch["t"]["b"] * 2,
               "tags": (torch.randn(16, 4) > 0).float()}
    optimizer = torch.optim.Adam(model.parameters(), lr=0.05)
    losses = []
    for _ in range(30):
        outputs = model(batch)
        loss = sum(model.heads[name].loss(out, targets[name]) for name, out in outputs.items())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
    model.eval()
    loaded = roundtrip(model)
    for name, out in model(batch).items():
        expected = model.heads[name].predict(out)
        got = loaded.heads[name].predict(loaded(batch)[name])
        assert expected.keys() == got.keys()
        for key in expected:
            assert torch.allclose(expected[key].float(), got[key].float(), atol=1e-6)


@pytest.mark.parametrize("config, words", [
    ({"type": "classification"}, "heads.y: classes: auto is learned from data"),
    ({"type": "multilabel"}, "heads.y: labels: auto is learned from data"),
])
def test_counts_learned_from_data_need_a_table_to_build(config, words):
    with pytest.raises(polymodal.SpecError, match=words):
        polymodal.build(head_spec(y=config))

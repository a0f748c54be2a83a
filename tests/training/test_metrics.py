import math

import numpy as np
import pytest

from polymodal_plugins._metrics import (
    binary_auroc,
    classification_metrics,
    confusion_matrix,
    multilabel_metrics,
    regression_metrics,
)


def test_classification_metrics_match_hand_computed_values():
    # targets 0,0,0,1,1,2 ; predictions 0,1,0,1,1,0
    target = np.array([0, 0, 0, 1, 1, 2])
    predicted = np.array([0, 1, 0, 1, 1, 0])
    probabilities = np.eye(3)[predicted] * 0.7 + 0.1
    m = classification_metrics(probabilities, target)
    assert m["accuracy"] == pytest.approx(4 / 6)
    # recalls: class0 2/3, class1 2/2, class2 0/1
    assert m["balanced_accuracy"] == pytest.approx((2 / 3 + 1 + 0) / 3)
    # f1: class0 2*2/(3+3)=2/3, class1 2*2/(2+3)=0.8, class2 0
    assert m["macro_f1"] == pytest.approx((2 / 3 + 0.8 + 0) / 3)
    assert confusion_matrix(target, predicted, 3).tolist() == [[2, 1, 0], [0, 2, 0], [1, 0, 0]]


def test_binary_auroc_counts_ties_as_half():
    # positives score 0.8, 0.4; negatives 0.4, 0.1 -> pairs: (0.8>0.4) (0.8>0.1) (0.4=0.4) (0.4>0.1)
    assert binary_auroc(np.array([1, 1, 0, 0]), np.array([0.8, 0.4, 0.4, 0.1])) == pytest.approx(3.5 / 4)
    assert math.isnan(binary_auroc(np.array([1, 1]), np.array([0.2, 0.3])))


def test_binary_classification_auroc_uses_the_positive_class_probability():
    probabilities = np.array([[0.9, 0.1], [0.6, 0.4], [0.3, 0.7], [0.2, 0.8]])
    assert classification_metrics(probabilities, np.array([0, 1, 0, 1]))["auroc"] == pytest.approx(0.75)



def test_multilabel_metrics_match_hand_computed_values():
    target = np.array([[1, 0, 1], [0, 1, 0], [1, 1, 0], [0, 0, 0]])
    probabilities = np.array([[0.9, 0.2, 0.6], [0.1, 0.8, 0.7], [0.7, 0.3, 0.1], [0.2, 0.1, 0.4]])
    # predicted at 0.5: [1,0,1] [0,1,1] [1,0,0] [0,0,0] -> rows 1 and 4 all right
    m = multilabel_metrics(probabilities, target, threshold=0.5)
    assert m["subset_accuracy"] == pytest.approx(2 / 4)
    assert m["hamming_accuracy"] == pytest.approx(10 / 12)
    # per label hits/true/predicted: (2,2,2) (1,2,1) (1,1,2); micro: 2*4/(5+5)
    assert m["micro_f1"] == pytest.approx(0.8)
    assert m["macro_f1"] == pytest.approx((1 + 2 / 3 + 2 / 3) / 3)
    # aurocs: label 0: 1.0; label 1: pos .8,.3 vs neg .2,.1 -> 1.0; label 2: pos .6 vs .7,.1,.4 -> 2/3
    assert m["auroc"] == pytest.approx((1 + 1 + 2 / 3) / 3)
    # at 0.65 label 2 flips on row 1 (a miss) and row 2 (a false alarm): 9 of 12 right
    assert multilabel_metrics(probabilities, target, threshold=0.65)["hamming_accuracy"] == pytest.approx(9 / 12)

def test_regression_metrics_match_hand_computed_values():
    target = np.array([1.0, 2.0, 3.0, 4.0])
    predicted = np.array([1.5, 2.0, 2.0, 4.0])
    m = regression_metrics(predicted, target)
    # errors 0.5, 0, -1, 0: mse 1.25/4, mae 1.5/4; total sum of squares 5
    assert m["rmse"] == pytest.approx(math.sqrt(1.25 / 4))
    assert m["mae"] == pytest.approx(1.5 / 4)
    assert m["r2"] == pytest.approx(1 - 1.25 / 5)


from polymodal._data.binding import Binding  # noqa: E402

HEADS_SPEC = {
    "inputs": {"record": {"adapter": {"type": "tabular", "numerical": ["x"]}}},
    "heads": {"kind": {"type": "classification", "classes": 3},
              "tags": {"type": "multilabel", "labels": 2},
              "price": {"type": "regression"}}}


def test_direction_of_metrics_is_what_each_head_declares():
    import polymodal

    binding = Binding(polymodal.load_spec(HEADS_SPEC))
    assert not binding.higher_is_better("loss")
    assert not binding.higher_is_better("kind.loss")
    assert not binding.higher_is_better("price.rmse")
    assert not binding.higher_is_better("price.mae")
    assert binding.higher_is_better("price.r2")
    assert binding.higher_is_better("kind.balanced_accuracy")
    assert binding.higher_is_better("tags.hamming_accuracy")
    with pytest.raises(polymodal.SpecError, match="head 'price' has no metric 'log_loss'"):
        binding.higher_is_better("price.log_loss")


def test_each_heads_codec_computes_exactly_the_metrics_it_declares():
    import torch

    import polymodal

    spec = polymodal.load_spec(HEADS_SPEC)
    outputs = {"kind": (torch.randn(6, 3), torch.tensor([0, 1, 2, 0, 1, 2]), {}),
               "tags": (torch.randn(6, 2), torch.tensor([[0, 1], [1, 0]] * 3).float(), {}),
               "price": (torch.randn(6, 1), torch.randn(6, 1), {"mean": 1.0, "std": 2.0})}
    for head, (output, target, state) in outputs.items():
        codec = spec.heads[head].codec(head, f"heads.{head}")
        declared = tuple(m.name for m in codec.declared_metrics)
        assert declared
        assert tuple(codec.metrics(output, target, state)) == declared
        empty = codec.metrics(output[:0], target[:0], state)  # no rows: every metric NaN
        assert tuple(empty) == declared and all(math.isnan(v) for v in empty.values())

"""Tests of polymodal-signal, as its author runs them: `pytest tests` in this directory."""

import pytest
import torch

import polymodal
from polymodal.plugin import check_component, check_export
from polymodal_signal.adapter import SignalAdapter
from polymodal_signal.tcn import TCNBackbone


def test_signal_adapter_conforms():
    report = check_component(
        SignalAdapter, {"channels": 3, "mean": [0, 1, 2], "std": [1, 2, 3]},
        bad_options=[{"channels": 0}, {"std": [1, 0, 1]}, {"mean": [0.0]},
                     {"instance_norm": True}],
    )
    assert report.gives == polymodal.plugin.Sequence(3)


def test_tcn_conforms(polymodal_check):
    report = polymodal_check(
        TCNBackbone, {"channels": 16, "levels": 2}, takes=polymodal.plugin.Sequence(3),
        bad_options=[{"levels": 0}, {"pooling": "last"}, {"kernel_size": 1}],
    )
    assert report.output_shape == (2, 16)


def test_both_components_export():
    # torch.export always; ONNX too where onnx, onnxscript and onnxruntime are installed.
    check_export(SignalAdapter, {"channels": 3, "instance_norm": True})
    check_export(TCNBackbone, {"channels": 16, "levels": 2}, takes=polymodal.plugin.Sequence(3))


def test_per_channel_statistics_normalise_each_lead():
    config = SignalAdapter.Config(channels=2, mean=[1.0, -2.0], std=[2.0, 4.0])
    adapter = SignalAdapter(config)
    out = adapter(torch.tensor([[[1.0, 3.0], [-2.0, 2.0]]]))
    assert torch.equal(out, torch.tensor([[[0.0, 1.0], [0.0, 1.0]]]))


def test_instance_norm_removes_offset_and_gain_and_zeroes_dropouts():
    adapter = SignalAdapter(SignalAdapter.Config(channels=1, instance_norm=True))
    series = torch.tensor([[[10.0, 12.0, float("nan"), 14.0]]])
    out = adapter(series)
    assert out[0, 0, 2] == 0
    assert torch.allclose(out, adapter(series * 5 + 3), atol=1e-5)


def test_wrong_shape_is_a_data_error():
    adapter = SignalAdapter(SignalAdapter.Config(channels=12, length=500))
    with pytest.raises(polymodal.DataError, match=r"\[batch, 12, 500\].*\[4, 12, 400\]"):
        adapter(torch.zeros(4, 12, 400))


def test_causal_tcn_does_not_see_the_future():
    tcn = TCNBackbone(TCNBackbone.Config(channels=8, levels=2, causal=True, pooling="last"),
                      polymodal.plugin.Sequence(1)).eval()
    x = torch.randn(1, 1, 40)
    changed = x.clone()
    changed[:, :, 30:] += 1.0
    inner = tcn.blocks
    assert torch.equal(inner(x)[:, :, :30], inner(changed)[:, :, :30])


def test_tcn_takes_only_sequences():
    with pytest.raises(polymodal.ConnectionMismatch, match="takes a sequence"):
        TCNBackbone.Config().gives(polymodal.plugin.Vector(12))

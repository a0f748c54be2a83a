"""Convolution weights laid out once for inference (polymodal._training.packing)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from polymodal._training.packing import pack_convolutions, packed_convolutions

pytestmark = pytest.mark.skipif(not torch.backends.mkldnn.is_available(),
                                reason="this torch build has no oneDNN")


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.stem = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.norm = nn.BatchNorm2d(8)
        self.depthwise = nn.Conv2d(8, 8, 3, padding=2, dilation=2, groups=8, bias=False)
        self.wide = nn.Conv2d(8, 16, (1, 3), padding=(0, 1))
        self.pool = nn.AdaptiveAvgPool2d(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.norm(self.stem(x)))
        return self.pool(self.wide(self.depthwise(x))).flatten(1)


def _reference(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x)


@pytest.mark.parametrize("channels_last", [False, True])
def test_packed_outputs_equal_the_usual_ones_at_every_batch_size(channels_last):
    model = Net().eval()
    inputs = [torch.rand(n, 3, 12, 10) for n in (16, 1, 5, 64)]  # packed at 16, run at others
    if channels_last:
        inputs = [x.contiguous(memory_format=torch.channels_last) for x in inputs]
    expected = [_reference(model, x) for x in inputs]
    with packed_convolutions(model), torch.no_grad():
        for x, want in zip(inputs, expected):
            torch.testing.assert_close(model(x), want, rtol=1e-5, atol=1e-5)


def test_a_convolution_keeps_its_input_layout():
    conv = nn.Conv2d(4, 6, 3, padding=1).eval()
    plain = torch.rand(3, 4, 9, 9)
    with packed_convolutions(conv), torch.no_grad():
        assert conv(plain).is_contiguous()
        assert conv(plain.contiguous(memory_format=torch.channels_last)).is_contiguous(
            memory_format=torch.channels_last)


def test_the_weights_are_laid_out_once_and_again_after_they_change():
    model = Net().eval()
    x = torch.rand(4, 3, 12, 10)
    with packed_convolutions(model), torch.no_grad():
        model(x)
        first = model.stem._packed[1]
        model(torch.rand(9, 3, 12, 10))
        assert model.stem._packed[1] is first  # not made again for another batch
        model.stem.weight.mul_(2)  # as an optimiser's step changes it, in place
        torch.testing.assert_close(model(x), _unpacked(model, x), rtol=1e-5, atol=1e-5)
        assert model.stem._packed[1] is not first
        model.load_state_dict(Net().state_dict())
        torch.testing.assert_close(model(x), _unpacked(model, x), rtol=1e-5, atol=1e-5)


def _unpacked(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        out = x
        out = torch.relu(model.norm(nn.functional.conv2d(
            out, model.stem.weight, model.stem.bias, 2, 1)))
        out = nn.functional.conv2d(out, model.depthwise.weight, None, 1, 2, 2, 8)
        out = nn.functional.conv2d(out, model.wide.weight, model.wide.bias, 1, (0, 1))
        return model.pool(out).flatten(1)


def test_modules_and_state_are_as_before_after_the_block():
    model = Net().eval()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with packed_convolutions(model), torch.no_grad():
        assert type(model.stem).__name__ == "_PackedConv2d"
        with packed_convolutions(model):  # nested: the outer block's packing stays
            model(torch.rand(2, 3, 12, 10))
        assert type(model.stem).__name__ == "_PackedConv2d"
        assert set(model.state_dict()) == set(state)
    assert all(type(m) is nn.Conv2d for m in (model.stem, model.depthwise, model.wide))
    assert not hasattr(model.stem, "_packed")
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key])


@pytest.mark.filterwarnings("ignore:`torch.jit.trace:FutureWarning")  # still how ONNX export traces
def test_gradients_autocast_and_tracing_take_the_usual_path():
    model = Net().eval()
    x = torch.rand(2, 3, 12, 10, requires_grad=True)
    with packed_convolutions(model):
        model(x).sum().backward()  # differentiable: attributions need it
        assert x.grad is not None and model.stem.weight.grad is not None
        assert model.stem._packed is None
        with torch.no_grad():
            traced = torch.jit.trace(model, x.detach(), check_trace=False)
            assert "mkldnn::_convolution_pointwise" not in str(traced.graph)
            assert model.stem._packed is None
            with torch.autocast("cpu", dtype=torch.bfloat16):
                assert model(x.detach()).dtype == torch.bfloat16
            assert model.stem._packed is None


def test_a_convolution_with_its_own_forward_is_left_alone():
    class Standardized(nn.Conv2d):  # as timm's weight-standardised and "same" convolutions
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            weight = (self.weight - self.weight.mean()) / (self.weight.std() + 1e-5)
            return nn.functional.conv2d(x, weight, self.bias, self.stride, self.padding)

    model = nn.Sequential(Standardized(3, 4, 3), nn.Conv2d(4, 4, 1, padding_mode="zeros"))
    assert pack_convolutions(model) == [model[1]]
    assert type(model[0]) is Standardized


def test_a_model_that_is_no_torch_module_is_not_packed():
    assert pack_convolutions(object()) == []

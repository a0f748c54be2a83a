"""Convolution weights laid out once for inference on CPU, not once per batch.

PyTorch's CPU convolution (oneDNN) copies each weight into oneDNN's blocked layout on every
call. Training must (the weights change every step), but a model that predicts batch after batch
with the same weights pays it again for each: for the demo's small images it is a third of a
16-row forward pass, the part of a batch's cost that does not shrink with the batch (which is
what bounds a server answering one row a request). Inside :func:`packed_convolutions` each plain
``nn.Conv2d`` keeps its weight in that layout, made at its first call and made again only where
the weight has changed since (an optimiser's step or a loaded state bump its version).

Only what nn.Conv2d itself would compute the same way takes that path: on CPU, in float32,
without gradients (explain's attributions differentiate, and take the usual one), outside
autocast, tracing and compiling (an ONNX export traces). Subclasses that change ``forward`` (timm's ``Conv2dSame``,
weight-standardised convolutions) keep theirs. The parameters and the state dict are untouched:
the class of each module is swapped for the duration, and back. The outputs equal the usual
path's to float rounding (about 1e-6), as two batch sizes' do.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

__all__ = ["packed_convolutions", "pack_convolutions"]


def _available() -> bool:
    ops = getattr(torch.ops, "mkldnn", None)
    return (torch.backends.mkldnn.is_available() and ops is not None
            and hasattr(ops, "_convolution_pointwise") and hasattr(ops, "_reorder_convolution_weight"))


class _PackedConv2d(nn.Conv2d):
    """A plain ``nn.Conv2d`` (its class swapped in place, see :func:`pack_convolutions`) whose
    forward uses its weight laid out once, where the call allows it."""

    _packed: tuple[tuple[int, int], torch.Tensor] | None

    def forward(self, input: torch.Tensor) -> torch.Tensor:  # noqa: A002 - nn.Conv2d's name
        if not self._packable(input):
            return super().forward(input)
        padding, stride, dilation = list(self.padding), list(self.stride), list(self.dilation)
        out = torch.ops.mkldnn._convolution_pointwise(
            input, self._weight_for(input), self.bias, padding, stride, dilation, self.groups,
            "none", [], "")
        # oneDNN answers channels-last; the usual path keeps a contiguous input's layout, and
        # the modules after it (a view of it, an export) may rely on that.
        return out.contiguous() if input.is_contiguous() else out

    def _packable(self, input: torch.Tensor) -> bool:
        return (input.dim() == 4 and input.device.type == "cpu" and input.dtype == torch.float32
                and self.weight.dtype == torch.float32 and not torch.is_grad_enabled()
                and self.padding_mode == "zeros" and not isinstance(self.padding, str)
                and not torch.is_autocast_enabled("cpu") and not torch.jit.is_tracing()
                and not torch.jit.is_scripting() and not torch.compiler.is_compiling())

    def _weight_for(self, input: torch.Tensor) -> torch.Tensor:
        key = (self.weight._version, self.weight.data_ptr())
        if self._packed is None or self._packed[0] != key:
            packed = torch.ops.mkldnn._reorder_convolution_weight(
                self.weight.detach(), list(self.padding), list(self.stride), list(self.dilation),
                self.groups, list(input.shape))
            self._packed = (key, packed)
        return self._packed[1]


def pack_convolutions(model: Any) -> list[nn.Module]:
    """Give each plain ``nn.Conv2d`` of ``model`` the packed forward; the modules changed (for
    :func:`_unpack`). Nothing where ``model`` is not a torch module (an ONNX export) or where
    this torch build has no oneDNN."""
    if not isinstance(model, nn.Module) or not _available():
        return []
    changed: list[nn.Module] = [m for m in model.modules() if type(m) is nn.Conv2d]
    for module in changed:
        module.__class__ = _PackedConv2d
        module._packed = None  # type: ignore[assignment]
    return changed


def _unpack(modules: list[nn.Module]) -> None:
    for module in modules:
        module.__class__ = nn.Conv2d
        vars(module).pop("_packed", None)


@contextlib.contextmanager
def packed_convolutions(model: Any) -> Iterator[None]:
    """``model``'s convolutions packed for the block (inference: weights fixed, no gradients),
    and as they were after it; nested blocks leave the outer block's packing to it."""
    changed = pack_convolutions(model)
    try:
        yield
    finally:
        _unpack(changed)

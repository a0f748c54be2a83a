"""The ``freeze`` option of backbones: which parameters train and which BatchNorm statistics move.

A backbone config declares ``freeze: Freeze = "none"``; its module calls
:meth:`polymodal.plugin.Backbone.freeze` once built. The choices:

- ``none``: everything trains.
- ``all``: no parameter gets a gradient and every BatchNorm layer keeps its statistics.
- ``batchnorm``: every weight trains, but BatchNorm layers keep their running statistics (they
  stay in eval mode): the usual remedy for fine-tuning with small batches.
- ``{train_last: N}``: only the last N stages of the backbone (and what follows them) train;
  the earlier stages are frozen, their BatchNorm statistics included. ``batchnorm: true`` also
  keeps the statistics of the trained stages fixed.

Freezing parameters but not their BatchNorm statistics would let a frozen stage's outputs drift
with every training batch, which is why frozen stages always freeze both.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, Union

from pydantic import BaseModel, ConfigDict, Field, PositiveInt
from torch import nn

from ._errors import PolymodalError


class TrainLast(BaseModel):
    """``{train_last: N}``: only the last N stages train."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    train_last: PositiveInt = Field(description="Stages, counted from the end, that train.")
    batchnorm: bool = Field(False, description="Also keep BatchNorm statistics of the trained"
                            " stages fixed.")


Freeze = Union[Literal["none", "all", "batchnorm"], TrainLast]

FREEZE_DESCRIPTION = (
    "`none`; `all` (no gradients, BatchNorm statistics fixed); `batchnorm` (BatchNorm"
    " statistics fixed, weights train); or `{train_last: N}` (only the last N stages train;"
    " add `batchnorm: true` to fix their statistics too).")


def _norms(module: nn.Module) -> list[nn.Module]:
    return [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def check_freeze(option: Freeze, stage_count: int, what: str) -> None:
    """Raise a clear error if ``option`` asks for more stages than ``what`` has."""
    if isinstance(option, TrainLast) and option.train_last > stage_count:
        if stage_count == 0:
            raise PolymodalError(f"freeze.train_last: {what} exposes no stages; use freeze: all")
        raise PolymodalError(
            f"freeze.train_last: {option.train_last}, but {what} has {stage_count} stages")


def apply_freeze(module: nn.Module, stages: Sequence[nn.Module], option: Freeze) -> list[nn.Module]:
    """Turn gradients off as ``option`` says; return the BatchNorm layers to keep in eval mode."""
    if option == "none":
        return []
    if option == "batchnorm":
        return _norms(module)
    if option == "all":
        module.requires_grad_(False)
        return _norms(module)
    check_freeze(option, len(stages), type(module).__name__)
    trained = stages[len(stages) - option.train_last:]
    trained_ids = {id(p) for stage in trained for p in stage.parameters()}
    names = [name for name, _ in module.named_parameters()]
    params = dict(module.named_parameters())
    # Parameters are registered in forward order: what comes before the first trained stage is
    # frozen; what follows the last stage (a final norm) trains with it.
    first = next(i for i, n in enumerate(names) if id(params[n]) in trained_ids)
    frozen_names = set(names[:first])
    for name in frozen_names:
        params[name].requires_grad_(False)
    if option.batchnorm:
        return _norms(module)
    in_trained = {id(m) for stage in trained for m in stage.modules()}
    return [m for m in _norms(module) if id(m) not in in_trained
            and not any(p.requires_grad for p in m.parameters(recurse=False))]


def keep_eval(modules: Sequence[nn.Module]) -> None:
    for m in modules:
        m.eval()

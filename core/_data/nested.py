"""Batch values as codecs encode them and models take them: a tensor, or dicts and tuples of
them, nested (an input's several tensors, a head's target and mask)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # imported when called: reading tables needs no torch
    import torch


def map_tensors(value: Any, change: Callable[[torch.Tensor], Any]) -> Any:
    """``value`` with ``change`` applied to each of its tensors (a mapping comes back as a dict,
    a tuple as a tuple); anything else is kept as it is."""
    import torch

    if isinstance(value, torch.Tensor):
        return change(value)
    if isinstance(value, Mapping):
        return {k: map_tensors(v, change) for k, v in value.items()}
    if isinstance(value, tuple):
        return tuple(map_tensors(v, change) for v in value)
    return value

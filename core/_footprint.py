"""How large a model is, and whether it can be built here.

A spec's model is measured built on torch's meta device (:func:`polymodal._assembly.measure`),
which records shapes and allocates nothing, so a spec whose parameters would not fit in memory
(a categorical column of a trillion categories) is measured, and refused, in milliseconds.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from ._errors import PolymodalError, SpecError, first_line


@dataclass(frozen=True)
class Footprint:
    """Parameters and the bytes of every parameter and buffer of a model."""

    parameters: int
    trainable: int
    bytes: int
    #: The spec paths of the parts holding a tenth of the bytes or more, largest first, with
    #: their bytes: what to make smaller.
    largest: tuple[tuple[str, int], ...] = ()

    def describe(self) -> str:
        return (f"{self.parameters:,} parameters ({_size(self.bytes)} of weights and buffers;"
                " training with AdamW holds about 4 times that)")


def _size(count: int) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if count >= scale:
            return f"{count / scale:.1f} {unit}"
    return f"{count} bytes"


def physical_memory() -> int | None:
    """This machine's memory in bytes, where the system says."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def footprint_of(model: Any) -> Footprint:
    """The footprint of a built model (built on the meta device, it costs no memory)."""
    tensors = [*model.parameters(), *model.buffers()]
    parts = {where: _bytes(module) for where, module in _parts(model)}
    return Footprint(
        parameters=sum(p.numel() for p in model.parameters()),
        trainable=sum(p.numel() for p in model.parameters() if p.requires_grad),
        bytes=sum(t.numel() * t.element_size() for t in tensors),
        largest=tuple(sorted(((w, b) for w, b in parts.items() if b * 10 >= sum(parts.values())),
                             key=lambda item: -item[1])),
    )


#: The model's groups of components, and the spec path each component has.
_WHERE = {"adapters": "inputs.{}.adapter", "input_backbones": "inputs.{}.backbone",
          "backbones": "backbones.{}", "fusions": "fusion", "heads": "heads.{}"}


def _parts(model: Any) -> list[tuple[str, Any]]:
    return [(where.format(name), module) for group, where in _WHERE.items()
            for name, module in getattr(model, group, {}).items() if module is not None]


def _bytes(module: Any) -> int:
    return sum(t.numel() * t.element_size() for t in [*module.parameters(), *module.buffers()])


def check_fits(footprint: Footprint, memory: int | None = None) -> None:
    """Refuse a model whose weights alone exceed this machine's memory."""
    memory = physical_memory() if memory is None else memory
    if memory is not None and footprint.bytes > memory:
        where = footprint.largest[0][0] if footprint.largest else ""
        part = (" (" + ", ".join(f"{w} holds {_size(b)}" for w, b in footprint.largest) + ")"
                if footprint.largest else "")
        raise SpecError([(where, f"the model would hold {footprint.describe()}, more than this"
                          f" machine's {_size(memory)} of memory{part}; make the largest parts"
                          " smaller (categorical cardinalities, embedding sizes, hidden sizes,"
                          " the backbone)")])


def unmeasured(exc: Exception) -> str:
    """Why a spec's model could not be measured before it is built."""
    if isinstance(exc, PolymodalError):
        # Sizes a table decides (`classes: auto`, learned cardinalities) are not known before
        # training; what build itself refuses, build reports.
        return f"size not measured before training ({_first_line(exc)})"
    return f"size not measured ({type(exc).__name__}: {_first_line(exc)})"


def _first_line(exc: BaseException) -> str:
    if isinstance(exc, SpecError) and exc.problems:  # the first problem, not the list's header
        where, message = exc.problems[0]
        others = [w or "the spec" for w, _ in exc.problems[1:]]
        more = (f"; also at {', '.join(others[:3])}" + (f" and {len(others) - 3} more"
                if len(others) > 3 else "")) if others else ""
        return f"{where}: {message}"[:200] + more
    return first_line(exc, 200)

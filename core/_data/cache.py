"""Decoded rows kept in memory across epochs: each input's encoded value of every row, as its
codec gave it (before any random augmentation), so that a file is read and decoded once per run.

Core knows no modality here: what is kept is whatever a codec's ``encode`` returns (a tensor,
or a dict or tuple of tensors, one row per table row), stored row by row in one preallocated
tensor per leaf. A row's value is kept only where keeping it changes nothing a run reports:

- rows a codec found bad are kept as their message, so every epoch finds them again (a run
  reports each once);
- a batch whose encoding gave notes (an unseen category) is not kept, so every epoch notes it
  again, as without the cache;
- an input whose values change shape or type from batch to batch is no longer kept (its memory
  is freed) and is encoded batch by batch as before.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from .codec import RowIssues
from .table import Table

if TYPE_CHECKING:
    import torch

Read = Callable[[Table, RowIssues], Any]


def _leaves(value: Any) -> list[torch.Tensor] | None:
    """The tensors of a nested dict/tuple/list value in a fixed order; None where it holds
    anything else (such a value is not kept)."""
    import torch

    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, dict):
        parts = [_leaves(value[k]) for k in sorted(value)]
    elif isinstance(value, (tuple, list)):
        parts = [_leaves(v) for v in value]
    else:
        return None
    if any(p is None for p in parts):
        return None
    return [t for p in parts for t in p]  # type: ignore[union-attr]


def _rebuilt(like: Any, leaves: Sequence[torch.Tensor]) -> Any:
    """``like``'s structure with its tensors replaced, in :func:`_leaves` order."""
    import torch

    it = iter(leaves)

    def build(value: Any) -> Any:
        if isinstance(value, torch.Tensor):
            return next(it)
        if isinstance(value, dict):
            done = {k: build(value[k]) for k in sorted(value)}
            return {k: done[k] for k in value}
        return type(value)(build(v) for v in value)

    return build(like)


def value_bytes(value: Any) -> int | None:
    """Bytes of the tensors of an encoded value; None where it holds anything else."""
    leaves = _leaves(value)
    return None if leaves is None else sum(t.element_size() * t.numel() for t in leaves)


class _Store:
    """One input's kept rows: values in one tensor per leaf, and the rows found bad."""

    def __init__(self, count: int):
        self.count = count
        self.known = np.zeros(count, dtype=bool)  # a value or a bad-row message kept
        self.bad: dict[int, str] = {}
        self.like: Any = None  # the structure of the input's value
        self.leaves: list[torch.Tensor] | None = None
        self.off = False

    def put(self, slots: np.ndarray, value: Any, bad: dict[int, str]) -> bool:
        """Keep ``value``'s rows at ``slots`` (rows in ``bad`` as their message); False where
        the value does not fit what is kept (the store is then switched off)."""
        import torch

        leaves = _leaves(value)
        if leaves is None or any(t.shape[:1] != (len(slots),) for t in leaves):
            return self._switch_off()
        if self.leaves is None:
            self.like = value
            self.leaves = [t.new_zeros((self.count, *t.shape[1:])) for t in leaves]
        if len(leaves) != len(self.leaves) or any(
                t.dtype != s.dtype or t.shape[1:] != s.shape[1:] for t, s in zip(leaves, self.leaves)):
            return self._switch_off()
        good = np.array([p for p in range(len(slots)) if p not in bad], dtype=np.int64)
        if len(good):
            index = torch.as_tensor(slots[good])
            rows = torch.as_tensor(good)
            for store, tensor in zip(self.leaves, leaves):
                store[index] = tensor.detach().to("cpu")[rows]
        for position, message in bad.items():
            self.bad[int(slots[position])] = message
        self.known[slots] = True
        return True

    def _switch_off(self) -> bool:
        self.off, self.leaves, self.like = True, None, None
        self.known[:] = False
        return False

    def gather(self, slots: np.ndarray) -> Any:
        import torch

        assert self.leaves is not None
        index = torch.as_tensor(slots)
        return _rebuilt(self.like, [s.index_select(0, index) for s in self.leaves])


class RowCache:
    """The kept rows of one table (the training rows, or the validation rows), per input.

    Rows are known by their row numbers in the table (``Table.rows``), so the sub-tables a
    batch or a presence mask takes of it find their rows here."""

    def __init__(self, rows: np.ndarray, inputs: Sequence[str]):
        self.slots = {int(r): i for i, r in enumerate(rows)}
        self.stores = {name: _Store(len(rows)) for name in inputs}
        if len(self.slots) != len(rows):  # repeated row numbers: rows cannot be told apart
            for store in self.stores.values():
                store.off = True
        #: rows encoded by their codec, and rows given from memory (both per input)
        self.encoded = 0
        self.hits = 0

    def read(self, name: str, table: Table, issues: RowIssues, read: Read) -> Any:
        """What ``read`` (the input's codec's encode) gives for ``table``'s rows: from memory
        for the rows kept, encoded (and kept) for the others."""
        store = self.stores.get(name)
        slots = self._slots(table)
        if store is None or store.off or slots is None or not len(table):
            self.encoded += len(table)
            return read(table, issues)
        unknown = np.flatnonzero(~store.known[slots])
        if len(unknown):
            whole = len(unknown) == len(table)
            part = table if whole else table.take(unknown)
            found = RowIssues(part)
            value = read(part, found)
            self.encoded += len(part)
            if found.notes or not store.put(slots[unknown], value, found.bad):
                if whole:  # what was found stands, as without the cache
                    _merge(issues, found, np.arange(len(table)))
                    return value
                self.encoded += len(table)
                return read(table, issues)
        self.hits += len(table) - len(unknown)
        for position, slot in enumerate(slots):
            if int(slot) in store.bad:
                issues.bad.setdefault(position, store.bad[int(slot)])
        return store.gather(slots)

    def _slots(self, table: Table) -> np.ndarray | None:
        try:
            return np.fromiter((self.slots[int(r)] for r in table.rows), np.int64, len(table))
        except KeyError:
            return None

    def kept_bytes(self) -> int:
        return sum(t.element_size() * t.numel() for s in self.stores.values()
                   for t in (s.leaves or []))


def _merge(issues: RowIssues, found: RowIssues, positions: np.ndarray) -> None:
    from .codec import add_examples

    for position, message in found.bad.items():
        issues.bad.setdefault(int(positions[position]), message)
    issues.notes.update(found.notes)
    for what, values in found.examples.items():
        add_examples(issues.examples, what, values)

"""The rows of a table that every spec of a cross-validation or search can read, found before
any fold or trial trains: each row checked, then read once as a fold reads it (its files
decoded), so that a bad row stops the run at once (``--on-bad-row fail``) or is left out of
every fold, trial and spec alike (``skip``), and compared specs are scored on the same rows."""

from __future__ import annotations

import numpy as np

from .._data.binding import Binding
from .._data.table import Table
from .._errors import DataError
from .._spec import ModelSpec
from .inference import fail_on


def readable_rows(table: Table, specs: list[tuple[str, ModelSpec, str | None]],
                  on_bad_row: str) -> tuple[Table, str | None]:
    """The rows every spec can read, checked before any fold trains. A bad row stops the run
    here under ``fail`` (naming the spec that cannot read it); under ``skip`` it is left out of
    every spec, so that compared specs are scored on the same rows (a spec that reads an input
    alone cannot read the rows that lack it). Also: a note saying what was left out."""
    bad: dict[int, str] = {}
    by_spec: dict[str, int] = {}
    for name, spec, source in specs:
        binding = Binding(spec)
        found = binding.check(table, None, targets=True).bad
        if not found or on_bad_row == "skip":
            found.update(_unreadable_when_encoded(table, binding, found))
        if found and on_bad_row == "fail":
            where = f"spec {source or name}: " if len(specs) > 1 else ""
            try:
                fail_on(found, on_bad_row, len(table), among="in the table")
            except DataError as exc:
                raise DataError(f"{where}{exc}") from None
        by_spec[name] = len(found)
        for position, message in found.items():
            bad.setdefault(position, message)
    if not bad:
        return table, None
    counts = ", ".join(f"{name} {count}" for name, count in by_spec.items() if count)
    first = next(iter(sorted(bad.items())))[1]
    which = f"rows some spec cannot read ({counts}; e.g. {first})" if len(specs) > 1 else \
        f"rows the spec cannot read (e.g. {first})"
    note = f"{len(bad)} of {len(table)} rows are left out (--on-bad-row skip): {which}"
    if len(specs) > 1:
        note += "; every spec is scored on the same rows, so the comparison is paired"
    keep = np.array([p for p in range(len(table)) if p not in bad], dtype=np.int64)
    return table.take(keep), note


#: Rows encoded at a time when every row is read once before the folds.
_ENCODED_AT_ONCE = 256


def _unreadable_when_encoded(table: Table, binding: Binding, bad: dict[int, str]) -> dict[int, str]:
    """The rows (not in ``bad``) that pass the check but cannot be encoded: a truncated image
    passes a check of its header and fails when its pixels are read. Each row is read once
    here, as a fold's batches read it (the codecs fitted on the whole table), so that such a
    row stops the run, or is left out of every fold and spec, before any fold trains."""
    rows = np.array([p for p in range(len(table)) if p not in bad], dtype=np.int64)
    readable = table.take(rows)
    state = binding.fit(readable)
    found = {}
    for start in range(0, len(rows), _ENCODED_AT_ONCE):
        chunk = np.arange(start, min(start + _ENCODED_AT_ONCE, len(rows)))
        encoded = binding.encode(readable.take(chunk), state, targets=True)
        found.update({int(rows[chunk[p]]): message for p, message in encoded.bad.items()})
    return found

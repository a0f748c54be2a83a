"""The rows a training run trains and validates on: read, checked under the bad-row rule, and
split (a validation table, or a share of the rows held out, each group on one side)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .._data.binding import Binding
from .._data.loader import derive_seed
from .._data.table import Table, read_table
from .._errors import DataError
from .._options import TrainingOptions
from .checkpoint import fingerprint
from .fold_classes import class_of_row
from .folds import group_keys, split_hint
from .inference import RowReport, fail_on
from .report import write_validation_rows


def split_rows(table: Table, fraction: float, group_by: str | None, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Positions of the training and validation rows; with ``group_by`` a group's rows stay
    together."""
    count = len(table)
    rng = np.random.default_rng(derive_seed(seed, 0x5EED))
    if fraction <= 0 or count < 2:
        return np.arange(count), np.zeros(0, np.int64)
    if group_by is None:
        order = rng.permutation(count)
        n_val = min(count - 1, max(1, round(fraction * count)))
        return np.sort(order[n_val:]), np.sort(order[:n_val])
    # One rule for group keys everywhere (train, cv, tune): the value as text, stripped; an
    # empty one is an error naming the row.
    keys = group_keys(table, group_by, "group the validation split by")
    groups = np.array(sorted(set(keys)), dtype=object)
    if len(groups) < 2:
        raise DataError(f"{table.source}: column {group_by!r} has a single group; a grouped"
                        " validation split needs at least two")
    val_groups: set[str] = set()
    taken = 0
    for g in groups[rng.permutation(len(groups))]:
        if taken >= fraction * count or len(val_groups) == len(groups) - 1:
            break
        val_groups.add(g)
        taken += int((keys == g).sum())
    in_val = np.array([k in val_groups for k in keys])
    return np.flatnonzero(~in_val), np.flatnonzero(in_val)


def _checked(table: Table, binding: Binding, on_bad_row: str, report: RowReport) -> Table:
    binding.require_columns(table, targets=True)
    issues = binding.check(table, None, targets=True)
    fail_on(issues.bad, on_bad_row, len(table), among="in the table")
    report.add(issues)
    if not issues.bad:
        return table
    return table.take([p for p in range(len(table)) if p not in issues.bad])


@dataclass
class RunRows:
    """The rows a run trains and validates on, checked."""

    train: Table
    val: Table
    report: RowReport  # rows left out and oddities found so far
    fingerprint: str  # identifies the training rows, so that a resume uses the same
    held_out: bool  # validation rows split off the training table (not a --val table)
    split_note: str | None = None  # rows drawn one by one from a table that looks grouped


def prepare_rows(binding: Binding, opts: TrainingOptions, data: Any, val: Any,
                  on_bad_row: str) -> RunRows:
    report = RowReport()
    table = _checked(read_table(data), binding, on_bad_row, report)
    if val is not None:
        train_table, val_table = table, _checked(read_table(val), binding, on_bad_row, report)
    else:
        train_pos, val_pos = split_rows(table, opts.val_fraction, opts.group_by, opts.seed)
        train_table, val_table = table.take(train_pos), table.take(val_pos)
    if len(train_table) == 0:
        raise DataError(f"{table.source}: no training rows left")
    held_out = val is None and len(val_table) > 0
    note = split_hint(table, binding) if held_out and opts.group_by is None else None
    if held_out and opts.group_by is not None:
        note = _uneven_split(len(val_table), len(table), opts.val_fraction, opts.group_by)
    unlearned = _validated_only(binding, train_table, val_table) if held_out else None
    note = "; ".join(n for n in (note, unlearned) if n) or None
    return RunRows(train_table, val_table, report, fingerprint(train_table), held_out, note)


def _validated_only(binding: Binding, train: Table, val: Table) -> str | None:
    """A note where every row of a class fell in the validation split (its group did): the
    model never learns the class, and scores no validation row of it."""
    said = []
    for bound in binding.heads:
        column = bound.codec.columns()[0]
        if not bound.codec.holds_classes() or column not in train.columns:
            continue
        only = sorted(set(class_of_row(val, column)) - set(class_of_row(train, column)) - {""})
        if only:
            said.append(f"{', '.join(map(repr, only[:3]))}{' and more' if len(only) > 3 else ''}"
                        f" of column {column!r}")
    if not said:
        return None
    return (f"every row of class(es) {'; '.join(said)} fell in the validation split: the model"
            " never learns them, and no metric counts their validation rows; groups that spread"
            " the class, or a --val table, keep some to train on")


def _uneven_split(val_rows: int, rows: int, fraction: float, group_by: str) -> str | None:
    """A note where whole groups made the validation split far larger than asked."""
    share = val_rows / rows
    if share <= max(2 * fraction, fraction + 0.1):
        return None
    return (f"the validation split holds {val_rows} of {rows} rows ({share:.0%}) for a"
            f" val_fraction of {fraction:g}: the groups of column {group_by!r} are large, and"
            " each stays whole; more, smaller groups, or a --val table, leave more rows to train on")


def write_held_out(run_dir: Path, rows: RunRows, group_by: str | None) -> None:
    groups = rows.val.columns[group_by] if group_by else None
    write_validation_rows(run_dir, rows.val.rows, groups, group_by)

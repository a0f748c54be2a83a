"""Folds for cross-validation, and columns that look like groups.

Rows often come in groups (patches of one field, scans of one patient, photos of one claim).
A split that puts rows of one group on both sides lets a model be scored on what it has, in
effect, already seen. :func:`assign_folds` keeps every group in one fold (optionally balancing
the classes of a target over the folds); :func:`group_like_columns` finds the columns a user
probably meant to group by, for a hint where none was named.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import numpy as np

from .._data.loader import derive_seed
from .._data.table import Table, is_missing
from .._errors import DataError, did_you_mean
from .._options import checked_group_column

if TYPE_CHECKING:
    from .._data.binding import Binding

#: How the note about a row-by-row validation split begins (a cross-validation, which notes
#: the folds once, leaves out each fold's).
SPLIT_HINT_START = "note: the validation rows were drawn row by row"
#: A column is taken for a group column when it has at least this many distinct values ...
MIN_GROUPS = 5
#: ... and its values come on this many rows each, on average.
MIN_ROWS_PER_GROUP = 2.0
#: The likely group columns ranked by the other columns they fix, and the rows that are read
#: for it: bounds on a note's cost before every run.
MAX_RANKED = 8
MAX_ROWS_COMPARED = 20_000


@dataclass(frozen=True)
class GroupLike:
    """A column whose values repeat the way group identifiers do."""

    column: str
    groups: int
    rows: int  # rows with a value
    #: Other columns constant within each of its groups (a patient's sex and birth year): what
    #: tells an identifier from a value that merely repeats (a visit number).
    determines: int = 0

    def describe(self) -> str:
        return f"{self.column!r} ({self.groups} values on {self.rows} rows," \
               f" {self.rows / self.groups:.1f} a value)"


@dataclass
class FoldPlan:
    """Which fold each row of the table is left out in."""

    fold_of_row: np.ndarray
    folds: int
    group_column: str | None = None  # the column whose groups stay together (or fold column)
    from_column: bool = False  # the folds were named by a column
    stratified_by: str | None = None
    #: The column whose groups stay on one side of each fold's validation split (the rows
    #: early stopping picks the best epoch on); None: split row by row.
    split_by: str | None = None

    def describe(self) -> str:
        sizes = np.bincount(self.fold_of_row, minlength=self.folds)
        if self.from_column:
            how = f"taken from column {self.group_column!r}"
        elif self.group_column:
            how = f"grouped by {self.group_column!r}"
        else:
            how = "row by row"
        strata = f", stratified by {self.stratified_by!r}" if self.stratified_by else ""
        inner = f"; validation split by {self.split_by!r}" \
            if self.from_column and self.split_by else ""
        return f"{self.folds} folds of {', '.join(map(str, sizes))} rows ({how}{strata}{inner})"

    def test_positions(self, fold: int) -> np.ndarray:
        return np.flatnonzero(self.fold_of_row == fold)

    def train_positions(self, fold: int) -> np.ndarray:
        return np.flatnonzero(self.fold_of_row != fold)


def group_like_columns(table: Table, used: Iterable[str]) -> list[GroupLike]:
    """Columns the spec does not read whose values repeat across rows like group identifiers
    (at least MIN_GROUPS values, each on MIN_ROWS_PER_GROUP rows on average; not fractional
    numbers, which are measurements). Most likely first: the column that fixes the most other
    columns within its groups, then the one with the most groups."""
    used = set(used)
    found = []
    for name, values in table.columns.items():
        if name in used:
            continue
        groups, present, fractional = _repeats(values)
        if groups >= MIN_GROUPS and present >= MIN_ROWS_PER_GROUP * groups and not fractional:
            found.append(GroupLike(name, groups, present))
    # Ranked by what each fixes, measured for the likeliest few on the first rows only: a
    # train on a wide, long table does this before every run.
    found.sort(key=lambda g: (-g.groups, g.column))
    rows = min(len(table), MAX_ROWS_COMPARED)
    codes = {name: _codes(values[:rows]) for name, values in table.columns.items()}
    ranked = [replace(g, determines=_determines(codes[g.column], codes, g.column))
              for g in found[:MAX_RANKED]]
    return sorted(ranked, key=lambda g: (-g.determines, -g.groups, g.column)) + found[MAX_RANKED:]


def _repeats(values: np.ndarray) -> tuple[int, int, bool]:
    """Distinct values, rows with a value, and whether some value is a fractional number."""
    values = np.asarray(values)
    if values.dtype.kind in "biu":  # numbers read as such: counted without a loop
        return len(np.unique(values)), len(values), False
    if values.dtype.kind == "f":
        present = values[~np.isnan(values)]
        return len(np.unique(present)), len(present), bool((present % 1 != 0).any())
    keys = [_key(v) for v in values if not is_missing(v)]
    return len(set(keys)), len(keys), _fractional(keys)


def _fractional(keys: list[str]) -> bool:
    """Whether the values are numbers and some are not whole (a measurement, not an id)."""
    try:
        return any(not float(k).is_integer() for k in keys)
    except ValueError:
        return False


def _codes(values: np.ndarray) -> np.ndarray:
    """Each value's number among the distinct values (missing values are one value)."""
    values = np.asarray(values)
    if values.dtype.kind in "biuf":  # NaNs are one value, as missing text is
        return np.unique(values, return_inverse=True)[1].astype(np.int64).ravel()
    index: dict[str, int] = {}
    return np.array([index.setdefault(_key(v), len(index)) for v in values], dtype=np.int64)


def _determines(groups: np.ndarray, codes: dict[str, np.ndarray], column: str) -> int:
    """How many other columns are the same on every row of each group (and not the same
    everywhere: a constant column says nothing)."""
    order = np.argsort(groups, kind="stable")
    starts = np.flatnonzero(np.r_[True, np.diff(groups[order]) != 0])  # each group's first row
    count = 0
    for name, values in codes.items():
        ordered = values[order]
        if name == column or len(ordered) == 0 or ordered.min() == ordered.max():
            continue
        # Constant within each group exactly when each group's smallest value is its largest.
        count += bool((np.minimum.reduceat(ordered, starts)
                       == np.maximum.reduceat(ordered, starts)).all())
    return count


def group_hint(found: list[GroupLike], drawn: str, fix: str) -> str:
    """The hint where ``drawn`` (what was split row by row) ignores the likely groups
    ``found``; ``fix`` says how to name them (``--group-by {column}``)."""
    first = found[0]
    others = ", ".join(repr(g.column) for g in found[1:3])
    return (f"{drawn} row by row, but column {first.describe()} looks like groups. If its rows"
            " belong together (one patient, field or claim), a group on both sides of a split"
            f" makes the scores optimistic: {fix.format(column=first.column)}"
            + (f". Other such columns: {others}" if others else ""))


def split_hint(table: Table, binding: Binding) -> str | None:
    """What to say where validation rows were drawn row by row from a table with a column that
    looks like groups; None where it has none."""
    found = group_like_columns(table, binding.columns())
    if not found:
        return None
    return group_hint(found, "the validation rows were drawn", "pass --group-by {column}"
                      " (training.group_by)")


def group_column(given: str | None, default: str | None) -> str | None:
    """The column whose groups stay together: ``given`` (``--group-by``) where given, else
    ``default`` (the spec's ``training.group_by``)."""
    if given is None:
        return default
    try:
        return checked_group_column(given)
    except ValueError as exc:
        raise DataError(f"--group-by {exc}") from None


def _key(value: object) -> str:
    return str(value).strip()


def group_keys(table: Table, column: str, what: str) -> np.ndarray:
    """Each row's group (as text) from ``column``; a missing value is an error naming the row."""
    if column not in table.columns:
        raise DataError(f"{table.source}: no column {column!r} to {what}."
                        f"{did_you_mean(column, table.names)} The table's columns are:"
                        f" {', '.join(table.names)}")
    values = table.columns[column]
    for position, value in enumerate(values):
        if is_missing(value):
            raise DataError(f"{table.where(position)}, column {column!r}: empty; every row needs"
                            f" a value to {what}")
    return np.array([_key(v) for v in values], dtype=object)


def folds_from_column(table: Table, column: str, folds: int | None) -> np.ndarray:
    """Fold index of each row from a column that names each row's fold (its distinct values,
    sorted, are folds 0, 1, ...)."""
    keys = group_keys(table, column, "take the fold from")
    names = sorted(set(keys), key=_natural)
    if len(names) < 2:
        raise DataError(f"{table.source}: column {column!r} names a single fold; cross-validation"
                        " needs at least two")
    if folds is not None and folds != len(names):
        raise DataError(f"{table.source}: column {column!r} names {len(names)} folds"
                        f" ({', '.join(names[:10])}{', ...' if len(names) > 10 else ''}) but"
                        f" --folds is {folds}; leave --folds out or make them agree")
    index = {name: i for i, name in enumerate(names)}
    return np.array([index[k] for k in keys], dtype=np.int64)


def _natural(text: str) -> tuple[int, float, str]:
    """Numbers in numeric order (2 before 10), then text."""
    try:
        return (0, float(text), text)
    except ValueError:
        return (1, 0.0, text)


def assign_folds(count: int, folds: int, *, groups: np.ndarray | None = None,
                 strata: np.ndarray | None = None, seed: int = 0, source: str = "<table>") -> np.ndarray:
    """Fold index (0..folds-1) of each of ``count`` rows. Rows of one group share a fold;
    folds get about equal numbers of rows; with ``strata`` (a class per row) each fold gets
    about the same share of every class. The same seed gives the same folds."""
    if folds < 2:
        raise DataError(f"--folds {folds}: cross-validation needs at least 2 folds")
    keys = groups if groups is not None else np.arange(count).astype(str).astype(object)
    names, group_of_row = np.unique(keys.astype(str), return_inverse=True)
    if len(names) < folds:
        what = "groups" if groups is not None else "rows"
        advice = (f"use at most --folds {len(names)}" if len(names) >= 2 else
                  "cross-validation needs at least 2, and a table with more")
        raise DataError(f"{source}: {len(names)} {what} cannot fill {folds} folds; {advice}")
    rng = np.random.default_rng(derive_seed(seed, 0xF01D))
    if strata is None:
        counts = np.bincount(group_of_row, minlength=len(names))[:, None]
    else:
        _, stratum_of_row = np.unique(strata.astype(str), return_inverse=True)
        counts = np.zeros((len(names), stratum_of_row.max() + 1), np.int64)
        np.add.at(counts, (group_of_row, stratum_of_row), 1)
    fold_of_group = _greedy(counts, folds, rng, balance_strata=strata is not None)
    return fold_of_group[group_of_row]


def _greedy(counts: np.ndarray, folds: int, rng: np.random.Generator,
            balance_strata: bool) -> np.ndarray:
    """Place groups (``counts``: rows per group and stratum) one by one, biggest (or, balancing
    strata, most lopsided) first, each in the fold that stays most even."""
    shuffled = rng.permutation(len(counts))  # ties are broken at random, by the seed
    sizes = counts.sum(axis=1)
    if balance_strata:
        shares = counts / sizes[:, None]
        keys = -shares.std(axis=1)[shuffled]
    else:
        keys = -sizes[shuffled]
    order = shuffled[np.argsort(keys, kind="stable")]
    totals = counts.sum(axis=0).clip(min=1)
    in_fold = np.zeros((folds, counts.shape[1]), np.int64)
    fold_of_group = np.empty(len(counts), np.int64)
    for group in order:
        if balance_strata:
            spread = [np.std((in_fold + _one_hot(f, folds, counts[group])) / totals, axis=0).mean()
                      for f in range(folds)]
            rows = in_fold.sum(axis=1)
            best = min(range(folds), key=lambda f: (round(spread[f], 12), rows[f]))
        else:
            best = int(np.argmin(in_fold.sum(axis=1)))
        in_fold[best] += counts[group]
        fold_of_group[group] = best
    return fold_of_group


def _one_hot(fold: int, folds: int, row: np.ndarray) -> np.ndarray:
    out = np.zeros((folds, len(row)), np.int64)
    out[fold] = row
    return out

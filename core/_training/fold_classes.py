"""The classes of the first head's target over the folds of a cross-validation: what
``--stratify`` balances, and the notes where a fold's held-out or training rows lack a class.

Whether a target holds classes is the head's answer (``TargetCodec.holds_classes``), never a
guess from its values.
"""

from __future__ import annotations

import numpy as np

from .._data.binding import Binding
from .._data.table import Table, is_missing
from .._errors import DataError
from .._spec import ModelSpec
from .folds import FoldPlan


def _first_target(spec: ModelSpec) -> tuple[str, str, bool]:
    """The first head, its target column, and whether it holds classes (as the head says):
    whose classes folds are balanced and checked by."""
    bound = Binding(spec).heads[0]
    return bound.name, bound.codec.columns()[0], bound.codec.holds_classes()


def class_of_row(table: Table, column: str) -> np.ndarray:
    """Each row's class in ``column``, as text without surrounding spaces ("" where missing)."""
    return np.array([str(v).strip() if not is_missing(v) else "" for v in table.columns[column]],
                    dtype=object)


def strata(table: Table, spec: ModelSpec) -> tuple[np.ndarray, str]:
    """The classes to balance: the values of the first head's target column."""
    head, column, classes = _first_target(spec)
    if not classes:
        raise DataError(f"--stratify balances the classes of the first head's target, and head"
                        f" {head!r} ({spec.heads[head].describe()}) predicts no classes")
    return class_of_row(table, column), column


def absent_classes(table: Table, spec: ModelSpec, plan: FoldPlan) -> str | None:
    """Which classes of the first head's target (where it holds classes) have no row in some
    fold: their metrics there (a recall, an AUROC) cannot count them."""
    _, column, classes = _first_target(spec)
    if not classes:
        return None
    values = class_of_row(table, column)
    absent = {c: [k + 1 for k in range(plan.folds) if not (values[plan.fold_of_row == k] == c).any()]
              for c in sorted(set(values) - {""})}
    said = [f"{c!r} in fold(s) {', '.join(map(str, f))}" for c, f in absent.items() if f]
    if not said:
        return None
    return (f"column {column!r} has no row of class {'; '.join(said[:3])}"
            f"{' (and more)' if len(said) > 3 else ''} of {plan.folds}: metrics there leave the"
            " class out (recall, one-vs-rest AUROC)"
            + ("" if plan.from_column or plan.stratified_by else
               "; --stratify gives each fold its share"))


#: Fewer training rows of a class than this in a fold's training rows is noted: the model
#: there learns the class from almost nothing (and its own validation split may take some).
FEW_TRAINING_ROWS = 5


def untrained_classes(table: Table, spec: ModelSpec, plan: FoldPlan) -> str | None:
    """Which classes of the first head's target no training row of some fold holds (every row
    of the class lies in that fold): that fold's model never learns the class, and its rows
    there are scored as they are. Also the classes that a fold's training rows hold fewer than
    :data:`FEW_TRAINING_ROWS` of."""
    _, column, classes = _first_target(spec)
    if not classes:
        return None
    values = class_of_row(table, column)
    lacking, few = [], []
    for fold in range(plan.folds):
        names, counts = np.unique(values[plan.fold_of_row != fold], return_counts=True)
        trained = dict(zip(names.tolist(), counts.tolist()))
        missing = sorted(set(values[plan.fold_of_row == fold]) - set(trained) - {""})
        if missing:
            lacking.append(f"fold {fold + 1}: {', '.join(map(repr, missing[:3]))}"
                           + (" and more" if len(missing) > 3 else ""))
        scarce = sorted((c, n) for c, n in trained.items() if c != "" and n < FEW_TRAINING_ROWS)
        if scarce:
            few.append(f"fold {fold + 1}: " + ", ".join(f"{c!r} ({n})" for c, n in scarce[:3])
                       + (" and more" if len(scarce) > 3 else ""))
    said = []
    if lacking:
        said.append(f"the training rows of some folds hold no row of a class of column {column!r}"
                    f" ({'; '.join(lacking)}): that fold's model has an output for the class but"
                    " never learns it, and scores its rows as they are (its recall there is 0)")
    if few:
        said.append(f"the training rows of some folds hold fewer than {FEW_TRAINING_ROWS} rows of"
                    f" a class of column {column!r} ({'; '.join(few)}), before their validation"
                    " split takes its share: that fold's model can hardly learn the class"
                    + _more_of_it(plan))
    return "; ".join(said) or None


def _more_of_it(plan: FoldPlan) -> str:
    """What would give every fold more rows of a rare class, of what this plan has not done."""
    if plan.from_column:
        return ""  # the user's own folds
    if plan.stratified_by is None:
        return "; --stratify, or groups that spread the class, give every fold more of it"
    if plan.group_column is not None:
        return (f"; the folds are already stratified: groups of {plan.group_column!r} that"
                " spread the class would give every fold more of it")
    return "; the folds are already stratified: only more rows of the class would help"


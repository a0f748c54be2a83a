"""Turning table values into numbers: vocabularies of categories and numeric columns.

The built-in codecs' shared helpers (the tabular adapter's, and the classification, multilabel
and regression heads'). A category is kept as found: an integer (also when written as ``"3"``
or ``3.0``) or a text; lookups use a canonical key so that a model trained on a DataFrame of
ints predicts on a CSV of the same ints.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import numpy as np

from polymodal.plugin import ConfigError, DataError, RowIssues, Table, is_missing

#: The largest magnitude of a number in a numeric column (a tabular input's, a regression
#: target's); a larger one, like an infinite one, is a bad row. Models compute in float32,
#: whose largest number is about 3.4e38, and the columns are standardised, which squares their
#: values: 1e30 leaves float32 room around such values, keeps the squares (1e60) far from
#: float64's limit, and is far beyond any measured quantity.
MAX_MAGNITUDE = 1e30


def category(value: Any) -> int | str | None:
    """The category a raw value stands for (None when missing)."""
    if is_missing(value):
        return None
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value))
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return int(value) if float(value).is_integer() else repr(float(value))
    text = str(value).strip()
    if text.lstrip("+-").isdigit():
        return int(text)
    return text


def key(value: int | str) -> str:
    return str(value)


def fit_vocabulary(values: Iterable[Any]) -> list[int | str]:
    """The distinct categories in ``values``: integers in order, then texts in order."""
    found = {category(v) for v in values}
    found.discard(None)
    ints = sorted(v for v in found if isinstance(v, int))
    texts = sorted(v for v in found if isinstance(v, str))
    return [*ints, *texts]


def lookup(vocabulary: list[int | str]) -> dict[str, int]:
    return {key(v): i for i, v in enumerate(vocabulary)}


def encode_categories(values: np.ndarray, index: dict[str, int], unknown: int,
                      missing: int) -> tuple[np.ndarray, list[int | str]]:
    """Ids of ``values`` (``unknown`` for categories not in ``index``, ``missing`` for missing
    values) and the unknown categories, one per value."""
    ids = np.empty(len(values), dtype=np.int64)
    unseen: list[int | str] = []
    for i, value in enumerate(values):
        cat = category(value)
        if cat is None:
            ids[i] = missing
            continue
        found = index.get(key(cat))
        if found is None:
            unseen.append(cat)
            ids[i] = unknown
        else:
            ids[i] = found
    return ids, unseen


def numeric_column(table: Table, column: str, issues: RowIssues | None) -> np.ndarray:
    """``column`` as float64, NaN for missing values; a value that is not a number is a bad
    row in ``issues`` (and NaN)."""
    values = table.columns[column]
    if values.dtype.kind in "biuf":
        out = values.astype(np.float64)
        if issues is not None:  # as for the values written as text below (a DataFrame's floats)
            for position in np.flatnonzero(np.isinf(out) | (np.abs(out) > MAX_MAGNITUDE)):
                issues.bad_row(int(position), column, too_large(float(out[position])))
        return out
    out = np.empty(len(values), dtype=np.float64)
    for i, value in enumerate(values):
        if is_missing(value):
            out[i] = math.nan
            continue
        if isinstance(value, (bool, np.bool_)):  # a true/false among numbers (JSON rows)
            out[i] = math.nan
            if issues is not None:
                issues.bad_row(i, column, f"{str(value).lower()} is true/false, not a number")
            continue
        try:
            out[i] = float(value)
        except (TypeError, ValueError):
            out[i] = math.nan
            if issues is not None:
                issues.bad_row(i, column, f"{value!r} is not a number")
            continue
        if abs(out[i]) > MAX_MAGNITUDE and issues is not None:
            issues.bad_row(i, column, too_large(value))
    return out


def too_large(value: Any) -> str:
    """Why ``value``, infinite or beyond :data:`MAX_MAGNITUDE`, is a bad row."""
    if math.isinf(float(value)):
        return f"{value!r} is infinite"
    return (f"{value!r} is larger in magnitude than {MAX_MAGNITUDE:g}, the most a number in a"
            " numeric column may be (models compute in float32)")


def listing(values: list[Any], limit: int = 10) -> str:
    """The first ``limit`` of ``values`` for a message, with the count when there are more."""
    shown = ", ".join(map(str, values[:limit]))
    return shown + (f", ... ({len(values)} in all)" if len(values) > limit else "")


def names_for_count(found: list[int | str], count: int, *, option: str, singular: str,
                    table: Table, column: str, where: str) -> list[int | str]:
    """The names of a head's ``count`` outputs (its ``option``: classes, labels) from the names
    ``found`` in a target ``column``: integers 0..count-1 name themselves; other names are kept
    in order and padded with ``{singular}_{i}`` placeholders; more names than outputs is an
    error."""
    if all(isinstance(v, int) and 0 <= v < count for v in found):
        return list(range(count))
    if len(found) > count:
        raise DataError(f"{table.source}: target column {column!r} holds {len(found)} {option}"
                        f" ({listing(found)}) but {where}.{option} is {count}; set {option}: auto"
                        " to learn them")
    return found + [f"{singular}_{i}" for i in range(len(found), count)]


def output_names(names: list[Any], *, option: str, singular: str, least: int) -> list[int | str]:
    """A head's output names given in its spec (``classes: [benign, malignant]``), each as the
    category it stands for; raises ValueError (a config problem) for too few, empty or repeated
    names."""
    found = [category(n) for n in names]
    if any(f is None for f in found):
        raise ValueError(f"{option}: a {singular} name is empty")
    if len(found) < least:
        raise ValueError(f"{option}: give at least {least} {singular} name(s), or a number, or auto")
    keys = [key(f) for f in found if f is not None]
    repeated = sorted({k for k in keys if keys.count(k) > 1})
    if repeated:
        raise ValueError(f"{option}: {singular} {repeated[0]!r} is named twice")
    return [f for f in found if f is not None]


def output_count(value: int | str | list[Any]) -> int | None:
    """How many outputs a head's ``classes``/``labels`` option gives (None for auto)."""
    if isinstance(value, list):
        return len(value)
    return value if isinstance(value, int) else None


def vocabulary_of(table: Table, column: str, wanted: int | str | list[Any], *, option: str,
                  singular: str, where: str, found: list[int | str]) -> list[int | str]:
    """The names of a head's outputs: as the spec lists them, or those ``found`` in the target
    column (``auto``), or a count's worth named from them."""
    if isinstance(wanted, list):
        return list(wanted)
    if wanted == "auto":
        return found
    return names_for_count(found, int(wanted), option=option, singular=singular, table=table,
                           column=column, where=where)


def check_statistic(value: Any, what: str, option: str, *, scale: bool) -> None:
    """A fitted mean (or, with ``scale``, a std: above 0) must be a finite number; a
    :class:`ConfigError` at ``option`` says what ``what`` (``the fitted std of 'age'``) is."""
    if (isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value)
            or (scale and value <= 0)):
        raise ConfigError(f"{what} is {value!r}, not a finite number" + (" above 0" if scale else ""),
                          option=option)


def check_fitted(state: Any, key: str, option: str, *, count: int | None = None,
                 at_most: int | None = None, numbers: bool = False) -> list[Any]:
    """The fitted list ``state[key]`` of a model file, checked against the config: ``count``
    entries (or ``at_most``), numbers where ``numbers``. A :class:`ConfigError` at ``option``
    says how they disagree."""
    values = state.get(key) if isinstance(state, dict) else None
    if not isinstance(values, list):
        raise ConfigError(f"the fitted {key} are missing or not a list", option=option)
    if count is not None and len(values) != count:
        raise ConfigError(f"the fitted {key} hold {len(values)} entries for {count}", option=option)
    if at_most is not None and len(values) > at_most:
        raise ConfigError(f"the fitted {key} hold {len(values)} entries, more than its"
                          f" {at_most}", option=option)
    if numbers and not all(isinstance(v, (int, float)) and not isinstance(v, bool)
                           for v in values):
        raise ConfigError(f"the fitted {key} are not all numbers", option=option)
    return values

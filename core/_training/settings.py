"""What a training command is asked beside its spec and table, as two objects: how each of its
runs trains (:class:`RunSettings`) and how the table is cut into folds (:class:`FoldSettings`).

``train``, ``cv`` and ``tune`` take the same settings and map their command-line options onto
them one to one. The overrides become a run's ``training`` options in one place,
:func:`with_options`, the engine's own resolution (each override checked as the spec's field).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .._data.table import Table
from .._errors import DataError, SpecError
from .._options import TrainingOptions
from .._spec import ModelSpec
from .fold_classes import strata
from .folds import FoldPlan, assign_folds, folds_from_column, group_column, group_keys


def with_options(spec: ModelSpec, overrides: Mapping[str, Any] | None) -> ModelSpec:
    """``spec`` with ``overrides`` (None values left out) in its ``training`` section, checked
    as the spec's own values are."""
    if not overrides:
        return spec
    from pydantic import ValidationError

    from .._spec import monitored_metric_problems, pydantic_problems

    data = {**spec.training.model_dump(), **{k: v for k, v in overrides.items() if v is not None}}
    try:
        options = TrainingOptions.model_validate(data)
    except ValidationError as exc:
        raise SpecError(pydantic_problems(exc, "training", TrainingOptions)) from None
    problems = monitored_metric_problems(options, spec.heads, None)
    if problems:
        raise SpecError(problems)
    return spec.model_copy(update={"training": options})


@dataclass(frozen=True)
class RunSettings:
    """How every run of a command trains: the ``overrides`` of the spec's ``training`` section
    (None values are left out), what a bad row does (``fail`` or ``skip``), whether a run's
    checkpoint is kept once it ends, the command's ``output``, where runs are tracked
    (``track``, as for ``train``; None: the spec's ``training.track``) and whether a progress
    bar shows."""

    overrides: Mapping[str, Any] = field(default_factory=dict)
    on_bad_row: str = "fail"
    keep_checkpoints: bool = False
    output: str | Path | None = None
    track: Any = None
    progress: bool = False

    def __post_init__(self) -> None:
        given = {k: v for k, v in dict(self.overrides or {}).items() if v is not None}
        object.__setattr__(self, "overrides", given)

    def resolved(self, spec: ModelSpec) -> ModelSpec:
        """``spec`` with the overrides in its ``training`` section, checked."""
        return with_options(spec, self.overrides)

    def option(self, spec: ModelSpec, name: str) -> Any:
        """The training option ``name`` a run of ``spec`` uses: the override, else the spec's."""
        return self.overrides.get(name, getattr(spec.training, name))

    def folder(self, spec: ModelSpec, kind: str) -> Path:
        """The command's folder: ``output``, else ``<spec name>.<kind>`` here."""
        return Path(self.output) if self.output is not None else Path(f"{spec.name}.{kind}")


@dataclass(frozen=True)
class FoldSettings:
    """How the table is cut into folds: ``folds`` of them (default 5), drawn keeping the groups
    of ``group_by`` (default: the spec's ``training.group_by``) together, or named by
    ``fold_column``; ``stratify`` balances the classes of the first head's target."""

    folds: int | None = None
    group_by: str | None = None
    fold_column: str | None = None
    stratify: bool = False

    @property
    def asked(self) -> bool:
        """Whether folds were asked for at all (``tune`` validates on one split without)."""
        return self.folds is not None or self.fold_column is not None

    def split_column(self, spec: ModelSpec) -> str | None:
        """The column whose groups stay on one side of every split."""
        return group_column(self.group_by, spec.training.group_by)

    def plan(self, table: Table, spec: ModelSpec, seed: int) -> FoldPlan:
        """The folds of ``table``: named by ``fold_column``, or drawn with ``seed``."""
        group = self.split_column(spec)
        if self.fold_column is not None:
            if self.stratify:
                raise DataError("--stratify needs folds to draw; --fold-column names them")
            fold_of_row = folds_from_column(table, self.fold_column, self.folds)
            if group:  # it splits each fold's training rows for validation: groups stay whole
                _check_groups_in_one_fold(table, group, fold_of_row, self.fold_column)
            return FoldPlan(fold_of_row, int(fold_of_row.max()) + 1, self.fold_column,
                            from_column=True, split_by=group)
        folds = 5 if self.folds is None else self.folds
        groups = group_keys(table, group, "group the folds by") if group else None
        classes, stratified_by = strata(table, spec) if self.stratify else (None, None)
        fold_of_row = assign_folds(len(table), folds, groups=groups, strata=classes, seed=seed,
                                   source=table.source)
        return FoldPlan(fold_of_row, folds, group, stratified_by=stratified_by, split_by=group)


def _check_groups_in_one_fold(table: Table, group: str, fold_of_row: np.ndarray,
                              fold_column: str) -> None:
    """Each group of ``group`` lies in one fold of ``fold_column``: a group in two folds would
    be trained on and scored on."""
    folds_of: dict[str, set[int]] = {}
    for key, fold in zip(group_keys(table, group, "group the validation split by"), fold_of_row):
        folds_of.setdefault(key, set()).add(int(fold))
    split = sorted(k for k, f in folds_of.items() if len(f) > 1)
    if split:
        raise DataError(f"{table.source}: group {split[0]!r} of column {group!r} has rows in"
                        f" {len(folds_of[split[0]])} folds of column {fold_column!r}"
                        f" ({len(split)} such group(s)): its rows would be trained on and scored"
                        " on; name folds that keep each group whole")


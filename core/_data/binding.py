"""Binding a spec to table columns: the codecs components provide, and what runs them.

A component that can read a table opts in from its own config: ``AdapterConfig.codec()`` or
``HeadConfig.codec()`` returns a :class:`Codec` (an adapter's) or :class:`TargetCodec` (a
head's). Core knows no component: it asks each codec which columns it reads, lets it check
rows cheaply, fit its preprocessing on the training rows (JSON-able state, saved in the model
file), complete its config from the data (learned cardinalities, class counts), and encode rows
into the tensors the component's module takes.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from .._errors import DataError, SpecError
from .table import Table, is_missing

if TYPE_CHECKING:
    import torch

    from .._components import ComponentConfig
    from .._spec import ModelSpec

State = dict[str, Any]


class RowIssues:
    """What encoding found in the rows of one table chunk.

    ``bad`` holds rows that cannot be used (position -> message naming the row and column);
    ``notes`` counts tolerated oddities (unseen categories, targets missing for some heads) to
    report once: each is a phrase that follows its count; ``examples`` holds a few of the values
    behind a note.
    """

    def __init__(self, table: Table):
        self.table = table
        self.bad: dict[int, str] = {}
        self.notes: Counter[str] = Counter()
        self.examples: dict[str, list[Any]] = {}

    def bad_row(self, position: int, column: str, message: str) -> None:
        if position not in self.bad:  # the first problem of a row is the one reported
            self.bad[position] = f"{self.table.where(position)}, column {column!r}: {message}"

    def note(self, what: str, count: int = 1, examples: Iterable[Any] = ()) -> None:
        if count:
            self.notes[what] += count
            add_examples(self.examples, what, examples)


EXAMPLES_PER_NOTE = 3


def add_examples(into: dict[str, list[Any]], what: str, values: Iterable[Any]) -> None:
    """Keep up to EXAMPLES_PER_NOTE distinct ``values`` for the note ``what``."""
    kept = into.get(what, [])
    for value in values:
        if len(kept) == EXAMPLES_PER_NOTE:
            break
        if value not in kept:
            kept.append(value)
    if kept:
        into[what] = kept


class Codec:
    """How one adapter reads its columns of a table. Subclass and return it from the config's
    ``codec()``; every method has a default that does nothing."""

    def __init__(self, config: ComponentConfig):
        self.config = config
        self.name = ""  # the input's or head's name, set by the binding
        self.where = ""  # the component's spec path, set by the binding

    def columns(self) -> list[str]:
        """The table columns this component reads."""
        raise NotImplementedError

    def check(self, table: Table, issues: RowIssues, state: State | None) -> None:
        """Report rows that cannot be encoded (cheaply: headers, not whole images).
        ``state`` is None before fitting."""

    def fit(self, table: Table) -> State:
        """Preprocessing state learned from the training rows (JSON-able)."""
        return {}

    def complete(self, state: State) -> dict[str, Any]:
        """Config fields to fill in from the fitted state (``{"categorical": {...}}``)."""
        return {}

    def prepare(self, module: Any, state: State) -> None:
        """Put fitted values into the freshly built module (normalisation buffers)."""

    def encode(self, table: Table, state: State, issues: RowIssues) -> Any:
        """The module's input for the rows of ``table``; bad rows go to ``issues``."""
        raise NotImplementedError

    def augment(self, value: Any, options: Any, generator: torch.Generator) -> Any:
        """Training-time augmentation of an encoded batch (``options``: the spec's
        ``training.augment``)."""
        return value


class TargetCodec(Codec):
    """How one head reads its target column, and turns outputs back into the table's values."""

    #: The names :meth:`metrics` returns, known before any data, so that a spec's
    #: ``training.early_stopping.metric`` is checked when the spec is read. Left empty, it is
    #: checked after the first epoch.
    metric_names: tuple[str, ...] = ()

    def encode(self, table: Table, state: State, issues: RowIssues) -> tuple[torch.Tensor, torch.Tensor]:
        """``(targets, present)``: encoded targets, and a bool mask of rows that have one."""
        raise NotImplementedError

    def has_target(self, table: Table) -> np.ndarray:
        """Rows that hold a target (a bool array); by default: a value in every column read."""
        present = np.ones(len(table), dtype=bool)
        for column in self.columns():
            present &= np.array([not is_missing(v) for v in table.columns[column]], dtype=bool)
        return present

    def decode(self, output: torch.Tensor, state: State) -> dict[str, list[Any]]:
        """Output columns (``{"label": [...], "label_prob_cat": [...]}``) for raw head outputs."""
        raise NotImplementedError

    def metrics(self, output: torch.Tensor, target: torch.Tensor, state: State) -> dict[str, float]:
        """Metrics of raw outputs against encoded targets (rows with a target only)."""
        raise NotImplementedError

    def details(self, output: torch.Tensor, target: torch.Tensor, state: State) -> dict[str, Any]:
        """Extra evaluation results (a confusion matrix), JSON-able."""
        return {}

    def render_details(self, details: Mapping[str, Any]) -> str:
        """``details`` as text for a terminal."""
        return ""


@dataclass
class Bound:
    name: str
    where: str
    codec: Codec


@dataclass
class Encoded:
    """One encoded chunk: model inputs, targets per head, and the rows kept."""

    inputs: dict[str, Any]
    targets: dict[str, tuple[Any, Any]] = field(default_factory=dict)
    positions: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    bad: dict[int, str] = field(default_factory=dict)
    notes: Counter[str] = field(default_factory=Counter)
    examples: dict[str, list[Any]] = field(default_factory=dict)

    def pin_memory(self) -> Encoded:
        """A copy in page-locked memory (DataLoader's ``pin_memory`` calls this), so the copy
        to a GPU runs asynchronously."""
        return Encoded(_pinned(self.inputs), _pinned(self.targets), self.positions, self.bad,
                       self.notes, self.examples)


def _pinned(value: Any) -> Any:
    if hasattr(value, "pin_memory"):
        return value.pin_memory()
    if isinstance(value, dict):
        return {k: _pinned(v) for k, v in value.items()}
    if isinstance(value, tuple):
        return tuple(_pinned(v) for v in value)
    return value


def _codec_of(config: ComponentConfig, name: str, where: str, kind: str) -> Codec:
    make = getattr(config, "codec", None)
    try:
        codec = make() if callable(make) else None
    except Exception as exc:  # noqa: BLE001 - the component's error, reported at its path
        from .._registry import component_problems

        raise SpecError(component_problems(exc, where, config)) from None
    if codec is None:
        raise SpecError([(where, f"{kind} {config.describe()!r} cannot read table columns"
                          " (its component provides no data codec)")])
    codec.name, codec.where = name, where
    return codec


class Binding:
    """A spec's components, each bound to the table columns it reads."""

    def __init__(self, spec: ModelSpec):
        self.spec = spec
        self.inputs = [Bound(n, f"inputs.{n}.adapter",
                             _codec_of(i.adapter, n, f"inputs.{n}.adapter", "adapter"))
                       for n, i in spec.inputs.items()]
        self.heads = [Bound(n, f"heads.{n}", _codec_of(h, n, f"heads.{n}", "head"))
                      for n, h in spec.heads.items()]

    def head_codec(self, name: str) -> TargetCodec:
        return next(b.codec for b in self.heads if b.name == name)  # type: ignore[return-value]

    def require_columns(self, table: Table, targets: bool) -> None:
        """One error naming every column the spec reads that the table lacks."""
        bound = self.inputs + (self.heads if targets else [])
        missing = []
        for b in bound:
            for column in b.codec.columns():
                if column not in table.columns:
                    missing.append(f"{column!r} (read by {b.where})")
        if missing:
            from .._errors import did_you_mean

            hint = did_you_mean(missing[0].split("'")[1], table.names) if len(missing) == 1 else ""
            raise DataError(f"{table.source}: no column {', '.join(missing)}.{hint}"
                            f" The table's columns are: {', '.join(table.names)}")

    def check(self, table: Table, state: State | None, targets: bool) -> RowIssues:
        issues = RowIssues(table)
        for b in self.inputs:
            b.codec.check(table, issues, None if state is None else state["inputs"][b.name])
        if targets:
            any_target = np.zeros(len(table), dtype=bool)
            has: dict[str, np.ndarray] = {}
            for b in self.heads:
                b.codec.check(table, issues, None if state is None else state["heads"][b.name])
                has[b.name] = b.codec.has_target(table)  # type: ignore[attr-defined]
                any_target |= has[b.name]
            self._no_target(issues, any_target)
            if len(self.heads) > 1:
                usable = any_target.copy()
                usable[list(issues.bad)] = False
                for b in self.heads:
                    issues.note(f"row(s) without a target in column"
                                f" {'/'.join(dict.fromkeys(b.codec.columns()))!r}: left out of head {b.name!r}"
                                " only", int((usable & ~has[b.name]).sum()))
        return issues

    def _no_target(self, issues: RowIssues, any_target: np.ndarray) -> None:
        """A row without any target (with several heads: none of theirs) is bad; a row missing
        only some heads' targets is masked for those heads."""
        columns = "/".join(dict.fromkeys(c for b in self.heads for c in b.codec.columns()))
        for position in np.flatnonzero(~any_target):
            issues.bad_row(int(position), columns, "the target is missing (empty or NaN)")

    def fit(self, table: Table) -> State:
        return {"inputs": {b.name: b.codec.fit(table) for b in self.inputs},
                "heads": {b.name: b.codec.fit(table) for b in self.heads}}

    def complete(self, state: State) -> ModelSpec:
        """The spec with what the data decides filled in (cardinalities, class counts)."""
        from pydantic import ValidationError

        from .._spec import _pydantic_problems

        problems: list[tuple[str, str]] = []

        def completed(config: ComponentConfig, codec: Codec, fitted: State) -> ComponentConfig:
            changes = codec.complete(fitted)
            if not changes:
                return config
            data = {**config.model_dump(), **changes}
            try:
                return type(config).model_validate(data)
            except ValidationError as exc:
                problems.extend(_pydantic_problems(exc, codec.where, type(config)))
                return config

        inputs = {b.name: self.spec.inputs[b.name].model_copy(update={
            "adapter": completed(self.spec.inputs[b.name].adapter, b.codec, state["inputs"][b.name])})
            for b in self.inputs}
        heads = {b.name: completed(self.spec.heads[b.name], b.codec, state["heads"][b.name])
                 for b in self.heads}
        if problems:
            raise SpecError(problems)
        return self.spec.model_copy(update={"inputs": inputs, "heads": heads})

    def prepare(self, model: Any, state: State) -> None:
        for b in self.inputs:
            b.codec.prepare(model.adapters[b.name], state["inputs"][b.name])
        for b in self.heads:
            b.codec.prepare(model.heads[b.name], state["heads"][b.name])

    def encode(self, table: Table, state: State, targets: bool) -> Encoded:
        """Encode every row of ``table``; rows with a problem are dropped and listed in ``bad``."""
        issues = RowIssues(table)
        inputs = {b.name: b.codec.encode(table, state["inputs"][b.name], issues)
                  for b in self.inputs}
        encoded_targets: dict[str, tuple[Any, Any]] = {}
        if targets:
            for b in self.heads:
                encoded_targets[b.name] = b.codec.encode(table, state["heads"][b.name], issues)
            any_target = np.zeros(len(table), dtype=bool)
            for _, present in encoded_targets.values():
                any_target |= present.numpy()
            self._no_target(issues, any_target)
        keep = np.array([p for p in range(len(table)) if p not in issues.bad], dtype=np.int64)
        if len(keep) < len(table):
            inputs = select(inputs, keep)
            encoded_targets = select(encoded_targets, keep)
        return Encoded(inputs, encoded_targets, keep, issues.bad, issues.notes, issues.examples)


def select(value: Any, keep: np.ndarray) -> Any:
    """Rows ``keep`` of every tensor in a nested dict/tuple of batch tensors."""
    import torch

    if isinstance(value, torch.Tensor):
        return value[torch.as_tensor(keep, dtype=torch.long)]
    if isinstance(value, dict):
        return {k: select(v, keep) for k, v in value.items()}
    if isinstance(value, tuple):
        return tuple(select(v, keep) for v in value)
    return value

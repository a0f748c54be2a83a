"""Binding a spec to table columns: each component's codec, and what runs them together.

A component that can read a table opts in from its own config: ``AdapterConfig.codec()`` or
``HeadConfig.codec()`` returns a :class:`~.codec.Codec` (an adapter's) or
:class:`~.codec.TargetCodec` (a head's). Core knows no component: it asks each codec which
columns it reads, lets it check rows cheaply, fit its preprocessing on the training rows
(JSON-able state, saved in the model file), complete its config from the data (learned
cardinalities, class counts), and encode rows into the tensors the component's module takes.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import numpy as np

from .._errors import ComponentError, ConfigError, DataError, SpecError, located
from .codec import Codec, RowIssues, State, TargetCodec
from .table import Table

if TYPE_CHECKING:
    from .._components import AdapterConfig, ComponentConfig, HeadConfig
    from .._spec import ModelSpec

C = TypeVar("C", bound=Codec)


@dataclass
class Bound(Generic[C]):
    """A component's codec, with the input's or head's name and the component's spec path."""

    name: str
    where: str
    codec: C


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
    import torch

    if isinstance(value, torch.Tensor):
        return value.pin_memory()
    if isinstance(value, dict):
        return {k: _pinned(v) for k, v in value.items()}
    if isinstance(value, tuple):
        return tuple(_pinned(v) for v in value)
    return value


def _bound(config: AdapterConfig | HeadConfig, name: str, where: str, kind: str,
           base: type[C]) -> Bound[C]:
    try:
        codec = config.codec(name, where)
    except Exception as exc:  # noqa: BLE001 - the component's error, reported at its path
        from .._registry import component_problems

        raise SpecError(component_problems(exc, where, config)) from None
    if codec is None:
        raise SpecError([(where, f"{kind} {config.describe()!r} cannot read table columns"
                          " (its component provides no data codec)")])
    if not isinstance(codec, base):
        raise ComponentError(f"{where}: {kind} {config.describe()!r}: its config's codec()"
                             f" returned {type(codec).__name__}, not a {base.__name__}")
    return Bound(name, where, codec)


#: The loss: of every head together (``loss``), or of one (``HEAD.loss``); lower is better.
LOSS = "loss"


class Binding:
    """A spec's components, each bound to the table columns it reads."""

    def __init__(self, spec: ModelSpec):
        self.spec = spec
        self.inputs: list[Bound[Codec]] = [
            # type-abstract: the base class is only checked against (isinstance), never made
            _bound(i.adapter, n, f"inputs.{n}.adapter", "adapter", Codec)  # type: ignore[type-abstract]
            for n, i in spec.inputs.items()]
        self.heads: list[Bound[TargetCodec]] = [
            _bound(h, n, f"heads.{n}", "head", TargetCodec)  # type: ignore[type-abstract]
            for n, h in spec.heads.items()]

    def head_codec(self, name: str) -> TargetCodec:
        return next(b.codec for b in self.heads if b.name == name)

    def higher_is_better(self, metric: str) -> bool:
        """Whether larger values of ``metric`` (``loss``, or ``HEAD.NAME``) are better, as its
        head declares; a metric its head does not declare is a spec error."""
        if metric == LOSS:
            return False
        head, name = metric.split(".", 1)
        if name == LOSS:
            return False
        declared = {m.name: m for m in self.head_codec(head).declared_metrics}
        if name not in declared:
            from .._spec import unknown_metric

            raise SpecError([unknown_metric(head, name, list(declared))])
        return declared[name].higher_is_better

    def check_metrics(self, head: str, values: dict[str, float]) -> dict[str, float]:
        """``values`` (what a head's codec computed), refused when it holds a metric the codec
        does not declare: its direction would be unknown."""
        codec = self.head_codec(head)
        undeclared = sorted(set(values) - {m.name for m in codec.declared_metrics})
        if undeclared:
            raise ComponentError(
                f"heads.{head}: {type(codec).__name__}.metrics() computed {', '.join(undeclared)},"
                " which its declared_metrics do not list (each needs a Metric with its direction)")
        return values

    def columns(self) -> set[str]:
        """Every table column the spec's codecs read."""
        return {c for b in self.inputs + self.heads for c in b.codec.columns()}

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
        for i in self.inputs:
            i.codec.check(table, issues, None if state is None else state["inputs"][i.name])
        if targets:
            any_target = np.zeros(len(table), dtype=bool)
            has: dict[str, np.ndarray] = {}
            for b in self.heads:
                b.codec.check(table, issues, None if state is None else state["heads"][b.name])
                has[b.name] = b.codec.has_target(table)
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
        return {"inputs": {b.name: _fitted(b, table) for b in self.inputs},
                "heads": {b.name: _fitted(b, table) for b in self.heads}}

    def complete(self, state: State) -> ModelSpec:
        """The spec with what the data decides filled in (cardinalities, class counts)."""
        from pydantic import ValidationError

        from .._spec import _pydantic_problems

        problems: list[tuple[str, str]] = []

        def completed(config: ComponentConfig, codec: Codec, fitted: State) -> ComponentConfig:
            try:
                changes = codec.complete(fitted)
            except ConfigError as exc:  # the data and an option disagree: reported at the option
                problems.extend(located(exc, codec.where))
                return config
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
        for i in self.inputs:
            i.codec.prepare(model.adapters[i.name], state["inputs"][i.name])
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


def _fitted(bound: Bound, table: Table) -> State:
    """What ``bound``'s codec learns from ``table``; a :class:`ConfigError` it raises (an
    option the data contradicts) is a spec problem at that option."""
    try:
        return bound.codec.fit(table)
    except ConfigError as exc:
        raise SpecError(located(exc, bound.where)) from None


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

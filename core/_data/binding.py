"""Binding a spec to table columns: each component's codec, and what runs them together.

A component that can read a table opts in from its own config: ``AdapterConfig.codec()`` or
``HeadConfig.codec()`` returns a :class:`~.codec.Codec` (an adapter's) or
:class:`~.codec.TargetCodec` (a head's). Core knows no component: it asks each codec which
columns it reads, lets it check rows cheaply, fit its preprocessing on the training rows
(JSON-able state, saved in the model file), complete its config from the data (learned
cardinalities, class counts), and encode rows into the tensors the component's module takes.
"""

from __future__ import annotations

import functools
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import numpy as np

from .._errors import ComponentError, ConfigError, DataError, SpecError, located
from .cache import RowCache
from .codec import Codec, RowIssues, State, TargetCodec, add_examples
from .nested import map_tensors
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
    #: input -> bool tensor [rows]: which rows hold the input, for the inputs some kept row
    #: lacks (what the model's ``present`` takes); inputs every row holds are not listed.
    present: dict[str, Any] = field(default_factory=dict)

    def pin_memory(self) -> Encoded:
        """A copy in page-locked memory (DataLoader's ``pin_memory`` calls this), so the copy
        to a GPU runs asynchronously."""
        return Encoded(_pinned(self.inputs), _pinned(self.targets), self.positions, self.bad,
                       self.notes, self.examples, _pinned(self.present))


def _pinned(value: Any) -> Any:
    return map_tensors(value, lambda tensor: tensor.pin_memory())


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
        #: Inputs a row may lack: the fusion takes them as absent there.
        self.may_be_absent = spec.absent_inputs()

    def head_codec(self, name: str) -> TargetCodec:
        return next(b.codec for b in self.heads if b.name == name)

    def input_codec(self, name: str) -> Codec:
        return next(b.codec for b in self.inputs if b.name == name)

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

    def absent(self, table: Table) -> dict[str, np.ndarray]:
        """The rows of ``table`` that hold no value for each input, as its codec says (inputs
        no row lacks are left out)."""
        found = {}
        for b in self.inputs:
            mask = b.codec.absent(table)
            if mask is None:
                continue
            mask = np.asarray(mask)
            if mask.shape != (len(table),) or mask.dtype != bool:
                raise ComponentError(f"{b.where}: {type(b.codec).__name__}.absent() returned"
                                     f" {mask.dtype} of shape {list(mask.shape)}, not a bool"
                                     f" array of {len(table)} (one per row)")
            if mask.any():
                found[b.name] = mask
        return found

    def check(self, table: Table, state: State | None, targets: bool) -> RowIssues:
        issues = RowIssues(table)
        absent = self.absent(table)
        for i in self.inputs:
            fitted = None if state is None else state["inputs"][i.name]
            self._read_rows(i, table, issues, absent.get(i.name),
                            functools.partial(_check_rows, i.codec, state=fitted))
        self._nothing_present(table, issues, absent)
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

    def _read_rows(self, bound: Bound[Codec], table: Table, issues: RowIssues,
                   absent: np.ndarray | None, read: Callable[[Table, RowIssues], Any]) -> Any:
        """``read`` (a codec's check or encode) over the rows that hold ``bound``'s input:
        every row where none is absent; else the rows that hold it where it may be absent (what
        it gives for them is placed back among every row's); else every row, a row without it
        being a bad row (``missing: bad_row``) or the adapter's to read (``auto``, read alone)."""
        if absent is None:
            return read(table, issues)
        name = bound.name
        if name in self.may_be_absent or self.spec.inputs[name].missing == "bad_row":
            if name not in self.may_be_absent:
                columns = "/".join(bound.codec.columns())
                for position in np.flatnonzero(absent):
                    issues.bad_row(int(position), columns, f"empty: input {name!r} is absent in"
                                   f" this row, and inputs.{name}.missing is bad_row")
            held = np.flatnonzero(~absent)
            found = RowIssues(table.take(held))
            value = read(found.table, found)
            _merge(issues, found, held)
            return _scattered(value, held, len(table))
        before = set(issues.bad)
        value = read(table, issues)
        head = self.spec.read_alone_by(name)
        for position in np.flatnonzero(absent):
            if int(position) in issues.bad and int(position) not in before:
                issues.bad[int(position)] += (f" (input {name!r} cannot be absent: head {head!r}"
                                              " reads it alone)")
        return value

    def _nothing_present(self, table: Table, issues: RowIssues,
                         absent: Mapping[str, np.ndarray]) -> None:
        """A row that lacks every input of a head has nothing to predict from: a bad row."""
        lacking = {n: m for n, m in absent.items() if n in self.may_be_absent}
        for inputs, heads in self.spec.heads_by_inputs().items():
            if len(inputs) < 2 or not all(n in lacking for n in inputs):
                continue
            none = np.logical_and.reduce([lacking[n] for n in inputs])
            for position in np.flatnonzero(none):
                issues.bad_row(int(position), "/".join(c for b in self.inputs if b.name in inputs
                                                       for c in b.codec.columns()),
                               f"every input of head {heads[0]!r} ({', '.join(inputs)}) is"
                               " absent: nothing to predict from")

    def presence(self, table: Table) -> dict[str, np.ndarray]:
        """Which rows hold each input the model may lack (a bool array per such input)."""
        return {n: ~m for n, m in self.absent(table).items() if n in self.may_be_absent}

    def _no_target(self, issues: RowIssues, any_target: np.ndarray) -> None:
        """A row without any target (with several heads: none of theirs) is bad; a row missing
        only some heads' targets is masked for those heads."""
        columns = "/".join(dict.fromkeys(c for b in self.heads for c in b.codec.columns()))
        for position in np.flatnonzero(~any_target):
            issues.bad_row(int(position), columns, "the target is missing (empty or NaN)")

    def fit(self, table: Table) -> State:
        """Each codec's state, an input's fitted on the rows that hold it."""
        holds = self.presence(table)
        inputs = {}
        for b in self.inputs:
            rows = table
            if b.name in holds:
                if not holds[b.name].any():
                    raise DataError(f"{table.source}: input {b.name!r} is absent in every"
                                    " training row, so nothing can be learned of it; give rows"
                                    " that hold it, or take it out of the spec")
                rows = table.take(np.flatnonzero(holds[b.name]))
            inputs[b.name] = _fitted(b, rows)
        return {"inputs": inputs, "heads": {b.name: _fitted(b, table) for b in self.heads}}

    def complete(self, state: State) -> ModelSpec:
        """The spec with what the data decides filled in (cardinalities, class counts)."""
        return self._changed(
            {b.name: functools.partial(b.codec.complete, state["inputs"][b.name]) for b in self.inputs},
            {b.name: functools.partial(b.codec.complete, state["heads"][b.name]) for b in self.heads})

    def settle(self, table: Table) -> ModelSpec:
        """The spec with what every head fixes from the whole ``table`` before it is cut into
        folds (``TargetCodec.fixed_options``: the class names), so every fold's model has the
        same outputs."""
        return self._changed({}, {b.name: functools.partial(b.codec.fixed_options, table)
                                  for b in self.heads})

    def _changed(self, inputs: Mapping[str, Callable[[], dict[str, Any]]],
                 heads: Mapping[str, Callable[[], dict[str, Any]]]) -> ModelSpec:
        """The spec with the config fields each codec's call gives changed, validated as the
        spec is; every problem is reported at its option at once."""
        from pydantic import ValidationError

        from .._spec import pydantic_problems

        problems: list[tuple[str, str]] = []

        def changed(config: ComponentConfig, codec: Codec,
                    changes_of: Callable[[], dict[str, Any]] | None) -> ComponentConfig:
            if changes_of is None:
                return config
            try:
                changes = changes_of()
            except ConfigError as exc:  # the data and an option disagree: reported at the option
                problems.extend(located(exc, codec.where))
                return config
            if not changes:
                return config
            try:
                return type(config).model_validate({**config.model_dump(), **changes})
            except ValidationError as exc:
                problems.extend(pydantic_problems(exc, codec.where, type(config)))
                return config

        new_inputs = {b.name: self.spec.inputs[b.name].model_copy(update={"adapter": changed(
            self.spec.inputs[b.name].adapter, b.codec, inputs.get(b.name))}) for b in self.inputs}
        new_heads = {b.name: changed(self.spec.heads[b.name], b.codec, heads.get(b.name))
                     for b in self.heads}
        if problems:
            raise SpecError(problems)
        return self.spec.model_copy(update={"inputs": new_inputs, "heads": new_heads})

    @staticmethod
    def _encoder(bound: Bound[Codec], state: State,
                 cache: RowCache | None) -> Callable[[Table, RowIssues], Any]:
        read = functools.partial(_encode_rows, bound.codec, state=state["inputs"][bound.name])
        if cache is None:
            return read
        return functools.partial(cache.read, bound.name, read=read)

    def prepare(self, model: Any, state: State) -> None:
        for i in self.inputs:
            i.codec.prepare(model.adapters[i.name], state["inputs"][i.name])
        for b in self.heads:
            b.codec.prepare(model.heads[b.name], state["heads"][b.name])

    def encode(self, table: Table, state: State, targets: bool,
               cache: RowCache | None = None) -> Encoded:
        """Encode every row of ``table``; rows with a problem are dropped and listed in ``bad``.
        With ``cache``, each input's rows kept there are taken from it, and the others kept."""
        issues = RowIssues(table)
        absent = self.absent(table)
        inputs = {b.name: self._read_rows(b, table, issues, absent.get(b.name),
                                          self._encoder(b, state, cache))
                  for b in self.inputs}
        self._nothing_present(table, issues, absent)
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
        import torch

        present = {n: torch.from_numpy(~m[keep]) for n, m in absent.items()
                   if n in self.may_be_absent and m[keep].any()}
        return Encoded(inputs, encoded_targets, keep, issues.bad, issues.notes, issues.examples,
                       present)


def _fitted(bound: Bound, table: Table) -> State:
    """What ``bound``'s codec learns from ``table``; a :class:`ConfigError` it raises (an
    option the data contradicts) is a spec problem at that option."""
    try:
        return bound.codec.fit(table)
    except ConfigError as exc:
        raise SpecError(located(exc, bound.where)) from None


def presence_labels(names: Sequence[str], present: Mapping[str, Any], count: int) -> np.ndarray:
    """Each row's presence pattern over inputs ``names``: ``photo + record`` where it holds them
    all, ``record only`` where it holds some (``present``: input -> bool mask of the rows that
    hold it, for inputs some row lacks)."""
    if count == 0:
        return np.zeros(0, dtype=object)
    held = np.ones((count, len(names)), dtype=bool)
    for i, name in enumerate(names):
        if name in present:
            held[:, i] = np.asarray(present[name], dtype=bool).reshape(-1)
    codes, first = np.unique(held, axis=0, return_inverse=True)
    labels = np.array([" + ".join(n for n, h in zip(names, row) if h)
                       + ("" if row.all() else " only") if row.any() else "none"
                       for row in codes], dtype=object)
    return labels[first.reshape(-1)]


def _check_rows(codec: Codec, rows: Table, found: RowIssues, state: State | None) -> None:
    codec.check(rows, found, state)


def _encode_rows(codec: Codec, rows: Table, found: RowIssues, state: State) -> Any:
    return codec.encode(rows, state, found)


def _merge(issues: RowIssues, found: RowIssues, positions: np.ndarray) -> None:
    """What was found in rows ``positions`` of ``issues``' table (``found``'s table is those
    rows), added to ``issues``; a row keeps its first problem."""
    for position, message in found.bad.items():
        issues.bad.setdefault(int(positions[position]), message)
    issues.notes.update(found.notes)
    for what, values in found.examples.items():
        add_examples(issues.examples, what, values)


def _scattered(value: Any, positions: np.ndarray, count: int) -> Any:
    """A batch of ``count`` rows holding ``value``'s rows at ``positions`` and zeros elsewhere
    (placeholders the model never reads: the input is marked absent there)."""
    import torch

    index = torch.as_tensor(positions, dtype=torch.long)

    def place(tensor: torch.Tensor) -> torch.Tensor:
        out = tensor.new_zeros((count, *tensor.shape[1:]))
        out[index] = tensor
        return out

    return map_tensors(value, place)


def select(value: Any, keep: np.ndarray) -> Any:
    """Rows ``keep`` of every tensor in a nested dict/tuple of batch tensors."""
    import torch

    index = torch.as_tensor(keep, dtype=torch.long)
    return map_tensors(value, lambda tensor: tensor[index])

"""The codec interface: how a component reads its table columns (part of the plugin API).

A component that can be trained from a table says so from its config: ``AdapterConfig.codec``
returns a :class:`Codec`, ``HeadConfig.codec`` a :class:`TargetCodec`. polymodal calls a
codec's methods in this order:

1. :meth:`Codec.columns` -- before anything is read, to check that the table has them.
   :meth:`Codec.absent` -- which rows hold no value for the input at all (plugin API 2.1); where
   the model takes the input as absent, the methods below see only the other rows.
2. :meth:`Codec.check` -- on every row, before fitting (``state`` is None) and before
   predicting with a trained model (``state`` is the fitted state): cheap checks that report
   the rows that cannot be encoded, so a bad row fails (or is skipped) before training starts.
3. :meth:`Codec.fit` -- once, on the training rows: the preprocessing state (JSON-able), saved
   in the model file.
4. :meth:`Codec.complete` -- config fields that the data decides (learned cardinalities).
5. :meth:`Codec.prepare` -- puts fitted values into the freshly built module.
6. :meth:`Codec.encode` -- per batch, the tensors the module takes (a training row's kept in
   memory across epochs where :meth:`Codec.keep_encoded` says it may be, plugin API 2.3).
7. :meth:`Codec.augment` -- per training batch, after encoding.

A head's :class:`TargetCodec` also reads its targets, turns outputs back into the table's
values (:meth:`TargetCodec.decode`) and computes the metrics it declares in
:attr:`TargetCodec.declared_metrics`, each with its direction.

Light to import: numpy only (torch is imported by the codecs that use it).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Generic, TypeVar

import numpy as np

from .table import Table, is_missing

if TYPE_CHECKING:
    import torch
    from pydantic import BaseModel

#: A codec's fitted preprocessing: JSON-able plain data (dicts, lists, strings, numbers), as
#: kept in the model file's ``polymodal.state`` metadata.
State = dict[str, Any]

#: The config of the component a codec reads a column for (any pydantic model, so that codecs
#: need nothing of the component module).
ConfigT = TypeVar("ConfigT", bound="BaseModel")

#: Values kept to show with each note.
EXAMPLES_PER_NOTE = 3


class RowIssues:
    """What checking or encoding found in the rows of one table (chunk).

    A codec reports a row that cannot be used with :meth:`bad_row`: the row is left out and the
    user gets the message with the table, row number and column (the run fails on it, or skips
    it with ``--on-bad-row skip``). A tolerated oddity (an unseen category) is a :meth:`note`,
    counted and reported once at the end.
    """

    def __init__(self, table: Table):
        self.table = table
        #: position -> message (naming the table, row and column) of rows that cannot be used
        self.bad: dict[int, str] = {}
        #: note -> how many times it was found
        self.notes: Counter[str] = Counter()
        #: note -> a few of the values behind it
        self.examples: dict[str, list[Any]] = {}

    def bad_row(self, position: int, column: str, message: str) -> None:
        """Row ``position`` (0-based in the table given to the codec) cannot be used because
        of its value in ``column``; ``message`` says what is wrong (``'??' is not a number``).
        Only the first problem of a row is kept."""
        if position not in self.bad:
            self.bad[position] = f"{self.table.where(position)}, column {column!r}: {message}"

    def note(self, what: str, count: int = 1, examples: Iterable[Any] = ()) -> None:
        """``count`` rows show ``what`` (a phrase that follows its count: ``value(s) in column
        'make' not seen in training``); a few ``examples`` are shown with it."""
        if count:
            self.notes[what] += count
            add_examples(self.examples, what, examples)


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


@dataclass(frozen=True)
class Metric:
    """A metric a head computes: its ``name`` (a key of :meth:`TargetCodec.metrics`), whether
    a higher value is better (early stopping's ``mode: auto`` follows it), and a short
    ``description``."""

    name: str
    higher_is_better: bool
    description: str = ""


class Codec(ABC, Generic[ConfigT]):
    """How an adapter reads its columns of a table and turns rows into its module's input.

    Return one from ``AdapterConfig.codec(name, where)``. Subclass it with the config's type
    (``class SignalCodec(Codec[SignalAdapter.Config])``) and implement :meth:`columns` and
    :meth:`encode`; every other method has a default that does nothing.

    Tables reach a codec as a :class:`~polymodal.plugin.Table`: ``table.columns[name]`` is a
    numpy array of the column's values as the source holds them (text from a CSV file, typed
    values from Parquet or a DataFrame, arrays in a DataFrame's cells); test values with
    :func:`~polymodal.plugin.is_missing`, and resolve relative file paths against
    ``table.base_dir``. Positions are 0-based within the table given to the method.
    """

    #: Whether the cells of :meth:`columns` name files (paths relative to ``table.base_dir``)
    #: that the codec reads. ``polymodal serve`` gives such a codec the files a request
    #: uploads as paths to private copies, and a path a request names only inside the server's
    #: ``--data-root``; a cell of another codec is passed as sent. Default: False.
    reads_files: ClassVar[bool] = False

    def __init__(self, config: ConfigT, name: str, where: str):
        #: The component's validated config.
        self.config = config
        #: The input's (or head's) name in the spec: ``ecg``. A column option often defaults to it.
        self.name = name
        #: The component's spec path, for messages: ``inputs.ecg.adapter``, ``heads.rhythm``.
        self.where = where

    @abstractmethod
    def columns(self) -> list[str]:
        """The table columns this codec reads. A table that lacks one is refused before any
        row is read, with one message naming every missing column and who reads it."""

    def absent(self, table: Table) -> np.ndarray | None:
        """Which rows of ``table`` hold no value for this input at all (a bool array, one per
        row), or None: every row holds one. Added in plugin API 2.1; the default (None) is what a
        plugin written for 2.0 gets.

        Absence is what the cells say (an empty path, every column empty), never a failure: a
        value that is given but cannot be read stays a bad row, reported by :meth:`check` or
        :meth:`encode`. Where the model takes this input as absent (``inputs.NAME.missing``), the
        absent rows are passed to the fusion as absent through its ``present`` mask, and
        :meth:`check`, :meth:`fit` and :meth:`encode` are given only the other rows (``encode``
        may be given none: return a batch of 0 rows). Where it does not, every row is given to
        them, as before. Must be cheap: it runs on every row before checking."""
        return None

    def check(self, table: Table, issues: RowIssues, state: State | None) -> None:
        """Report rows that cannot be encoded with ``issues.bad_row`` (and oddities with
        ``issues.note``). Runs on every row of a table before training (``state`` is None) and
        before predicting or evaluating (``state`` is the fitted state), so it must be cheap:
        read a file's header, not the whole file."""

    def fit(self, table: Table) -> State:
        """The preprocessing state learned from the training rows (after :meth:`check`, so
        bad rows are gone): JSON-able plain data, saved in the model file and passed to every
        later call. Default: nothing to learn."""
        return {}

    def complete(self, state: State) -> dict[str, Any]:
        """Config fields the data decides, to fill into the spec before the model is built
        (``{"categorical": {"make": 40}}`` for a cardinality given as ``auto``). They are
        validated like the spec, and saved with it. Default: none."""
        return {}

    def prepare(self, module: Any, state: State) -> None:
        """Put fitted values into the freshly built module (normalisation buffers), once,
        before training. ``module`` is the component built from the completed config; buffers
        it registers are saved in the model file. Default: nothing."""

    @abstractmethod
    def encode(self, table: Table, state: State, issues: RowIssues) -> Any:
        """The module's input for every row of ``table`` (a batch): a tensor, or a dict or
        tuple of tensors, with one row per table row. A row that cannot be encoded goes to
        ``issues.bad_row``; give it any placeholder value of the right shape (it is dropped)."""

    def keep_encoded(self) -> bool:
        """Whether polymodal may keep what :meth:`encode` gives for a row in memory and give it
        again in later epochs instead of calling :meth:`encode` (``training.cache_mib``), so
        that each file is read and decoded once per run. Say True where ``encode`` is a
        function of the row's cells, the files they name and the state alone: random work
        belongs in :meth:`augment`, which still runs on every batch. Added in plugin API 2.3.
        Default: False, every batch is encoded."""
        return False

    def expects(self, state: State) -> dict[str, Any]:
        """What a row's value must be for a model whose fitted state is ``state``, as plain JSON
        data for its clients (``polymodal serve``'s ``/v1/metadata``, ``polymodal inspect``):
        an image adapter's channels and size. Added in plugin API 2.4. Default: nothing to
        say beyond the columns."""
        return {}

    def read_sent(self, data: bytes, name: str) -> Any:
        """A file a client sent ``polymodal serve`` for a cell of :meth:`columns` (a codec that
        :attr:`reads_files`), read as the request is read, in the server's HTTP process, so that
        the process running the model does not: the value the cell then holds for :meth:`check`
        and :meth:`encode` in place of the file's path (the image adapter's: the decoded image,
        which its messages still name ``name``). ``name`` is the name the file was sent with,
        as messages give it. Read it as :meth:`encode` reads a file, within the same limits
        (check the size in its header before decoding it), and return a value that pickles (it
        is sent to the model's process). Raise :class:`~polymodal.plugin.DataError` with the
        message a row with this file is refused with (``image 'scan.png' cannot be read``);
        the server names the row and column. A file of more than 1 MiB is not given here: the
        server writes it, as one left alone. Added in plugin API 2.5. Default: None, for every
        file, as for a type it leaves alone: the server writes the file to its private folder
        and the cell holds its path."""
        return None

    def parts(self) -> list[str]:
        """The parts of this input that ``polymodal explain`` scores one at a time, by name:
        a tabular input's columns, an image's bands. Added in plugin API 2.1. Default: none, so
        the input is explained as a whole."""
        return []

    def permute_part(self, value: Any, part: str, order: torch.Tensor) -> Any:
        """``value`` (what :meth:`encode` gave for some rows) with part ``part`` (one of
        :meth:`parts`) taken from the rows ``order`` (a permutation of them) and the rest
        unchanged: how ``explain`` measures what that part contributes. Added in plugin API 2.1;
        needed where :meth:`parts` names any."""
        raise NotImplementedError(f"{type(self).__name__} names parts but cannot permute them")

    def attribution_value(self, value: Any) -> torch.Tensor | None:
        """``value`` (what :meth:`encode` gave for some rows) as floating-point numbers that the
        module takes in its place (uint8 pixels as 0..1): what ``polymodal explain --attribute``
        computes an attribution for. Added in plugin API 2.1. Default: None, the input is not
        attributed."""
        return None

    def attribution_pictures(self, value: torch.Tensor, attribution: torch.Tensor) -> dict[str, np.ndarray]:
        """Pictures of one row's attribution: ``value`` is what :meth:`attribution_value` gave
        for the row (a batch of one), ``attribution`` how much each of its numbers moved the
        head's output, of the same shape. Returns pictures by a name for their file (an image
        adapter: an overlay per band group, ``{"rgb": ...}``), each a ``uint8`` array ``[height,
        width, 3]``; polymodal writes them as PNG files. Added in plugin API 2.1. Default: none."""
        return {}

    def augment(self, value: Any, generator: torch.Generator) -> Any:
        """A training batch, augmented: ``value`` is what :meth:`encode` returned. Draw every
        random number from ``generator`` (seeded per batch, so a batch is augmented the same
        in any worker process and after a resumed run). Validation and prediction batches are
        never augmented. Default: unchanged."""
        return value

    def check_state(self, state: State) -> None:
        """Raise a :class:`~polymodal.plugin.ConfigError` when ``state``, read from a model
        file or an export, does not fit the config (a vocabulary longer than its cardinality,
        five class names for two logits): such a file was edited or mixed up, and would give
        wrong predictions without an error. Default: no check."""


class TargetCodec(Codec[ConfigT]):
    """How a head reads its target column, and turns its outputs back into the table's values.

    Return one from ``HeadConfig.codec(name, where)``. Besides :meth:`columns`, implement
    :meth:`encode` (targets and which rows have one), :meth:`decode` and :meth:`metrics`, and
    list the metrics in :attr:`declared_metrics`.
    """

    #: The metrics :meth:`metrics` computes, with their direction. They are known before any
    #: data is read, so a spec's ``training.early_stopping.metric`` is checked when the spec is
    #: read, and ``mode: auto`` knows whether higher is better. Every head also reports its
    #: ``loss`` (lower is better), which is not declared here.
    declared_metrics: ClassVar[tuple[Metric, ...]] = ()

    @abstractmethod
    def encode(self, table: Table, state: State, issues: RowIssues) -> tuple[torch.Tensor, torch.Tensor]:
        """``(targets, present)``: the encoded targets (one row per table row, what the head's
        ``loss`` takes) and a bool tensor ``[rows]`` of the rows that hold a target; a row
        without one is left out of this head's loss and metrics."""

    def fixed_options(self, table: Table) -> dict[str, Any]:
        """Config fields to settle from every row of ``table`` before it is cut into parts that
        are trained apart (cross-validation's folds), so that every part's model has the same
        outputs: the classification head gives its class names, so a fold whose training rows
        lack a class still has an output for it (its rows there are scored as they are). They
        are validated like the spec. Added in plugin API 2.1. Default: none (a target without a
        fixed vocabulary, such as a regression's)."""
        return {}

    def holds_classes(self) -> bool:
        """Whether the target is a choice among classes, so that cross-validation can balance
        them over the folds (``--stratify``) and say which classes a fold lacks. Added in plugin
        API 2.1. Default: False."""
        return False

    def row_scores(self, output: torch.Tensor, state: State,
                   predicted: list[Any] | None = None) -> tuple[list[Any], np.ndarray]:
        """Each row's prediction from raw outputs, and a number that says how strongly the head
        makes it (a classification's predicted class and its probability, a regression's value):
        what ``polymodal explain`` shows per row. With ``predicted`` (what an earlier call gave),
        the number for those predictions (the probability of each row's earlier class), so a
        change of inputs shows as a change of that number. Added in plugin API 2.1. Default: the
        first column :meth:`decode` writes, and no number (NaN)."""
        decoded = self.decode(output, state)
        first = next(iter(decoded.values()), [])
        return (list(first) if predicted is None else predicted), np.full(len(first), np.nan)

    def has_target(self, table: Table) -> np.ndarray:
        """Which rows hold a target (a bool array), checked before training; a row with no
        head's target is a bad row. Default: a value in every column read."""
        present = np.ones(len(table), dtype=bool)
        for column in self.columns():
            present &= np.array([not is_missing(v) for v in table.columns[column]], dtype=bool)
        return present

    @abstractmethod
    def decode(self, output: torch.Tensor, state: State) -> dict[str, list[Any]]:
        """The prediction columns ``predict`` writes for raw head outputs ``[rows, ...]`` (on
        the CPU, float32): column name -> one value per row, e.g. ``{"rhythm": ["AF", ...],
        "rhythm_prob_AF": [0.91, ...]}``. Name them after :attr:`name`."""

    @abstractmethod
    def metrics(self, output: torch.Tensor, target: torch.Tensor, state: State) -> dict[str, float]:
        """Each declared metric's value for raw outputs against encoded targets (the rows with
        a target only, on the CPU); NaN where a metric is undefined (one class only)."""

    def details(self, output: torch.Tensor, target: torch.Tensor, state: State) -> dict[str, Any]:
        """Extra evaluation results for ``evaluate`` (a confusion matrix), JSON-able. Default:
        none."""
        return {}

    def render_details(self, details: Mapping[str, Any]) -> str:
        """``details`` as text for a terminal. Default: nothing shown."""
        return ""

"""One model copy predicting the rows of several requests in one batch.

The rows of the requests in a batch form one table, each row numbered as in its own request, so
a codec's message names the row the client sent (``row 3, column 'photo': ...``). Rows are
checked and encoded by the model's own codecs, as ``polymodal predict`` does; a request with a
bad row fails alone (``on_bad_row: fail``) or has the row left out and listed (``skip``), and
the other requests of the batch are answered.
"""

from __future__ import annotations

import ast
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .._data.binding import Binding, presence_labels
from .._data.codec import add_examples
from .._data.table import Table
from .._errors import PolymodalError
from .._modelfile import KEY_SPEC, KEY_VERSIONS
from .._quantize import KEY_QUANTIZATION
from .._training.inference import (
    RowReport,
    channels_last_for,
    loaded_model,
    model_state,
    to_device,
)
from .._training.packing import pack_convolutions
from .limits import UNPROCESSABLE, ClientError
from .rows import Columns, RequestRows

#: The source name of a request's table: messages read ``request row 3, column 'x': ...``.
SOURCE = "request"
_WHERE = re.compile(r"^request row (?P<row>\d+), column (?P<column>'(?:[^'\\]|\\.)*'|"
                    r"\"(?:[^\"\\]|\\.)*\"): ")


@dataclass
class Outcome:
    """What a request gets: its predicted rows and skipped rows, or the error that failed it."""

    rows: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[dict[str, Any]] = field(default_factory=list)
    error: ClientError | None = None
    #: a fault of the server (a bug of a codec or the model) while predicting this request
    fault: Exception | None = None
    #: tolerated oddities of its rows, as ``predict`` reports them: a phrase -> how many rows
    #: (``value(s) in column 'site' not seen in training: ...``), with a few example values
    notes: dict[str, int] = field(default_factory=dict)
    note_examples: dict[str, list[Any]] = field(default_factory=dict)


def row_error(message: str, names: dict[str, str] | None = None) -> dict[str, Any]:
    """A codec's message about a row as ``{"row", "column", "message"}``, the message without
    the table's name (``row 3, column 'photo': not found``) and naming a sent file as it was
    sent (``names``: its private path -> its name), not by the server's copy."""
    for path, name in (names or {}).items():
        message = message.replace(repr(path), repr(name)).replace(path, name)
    found = _WHERE.match(message)
    text = message.removeprefix(f"{SOURCE} ")
    if found is None:
        return {"row": None, "column": None, "message": text}
    return {"row": int(found.group("row")), "column": ast.literal_eval(found.group("column")),
            "message": text}


class _NotesOfSeveral(Exception):
    """The rows of several requests gave notes (an unseen category...): each request is run
    alone so that its answer counts its own rows' notes (rare, so the cost is rare)."""


class Predictor:
    """A loaded model (a model file or an ONNX export) and what it needs to read rows."""

    def __init__(self, path: str | Path, device: str = "cpu"):
        self.model, self.source = loaded_model(path, exports=True)
        self.state = model_state(self.model, self.source)
        self.device = torch.device(device)
        self.model.to(self.device).eval()
        pack_convolutions(self.model)  # for the server's life: its weights never change
        self.channels_last = channels_last_for(self.model, self.device)
        self.binding = Binding(self.model.spec)
        self.spec = self.model.spec
        self.inputs = list(self.spec.inputs)
        metadata = getattr(self.model, "metadata", None) or _file_metadata(path)
        self.versions = _json(metadata.get(KEY_VERSIONS))
        #: a dynamically quantized int8 file scales activations by the rows it runs together,
        #: so each request's rows run as a batch of their own: an answer does not move with
        #: the requests that happen to share its batch
        self.per_request = _json(metadata.get(KEY_QUANTIZATION)).get("mode") == "dynamic"
        self.spec_data = _json(metadata.get(KEY_SPEC))

    @property
    def columns(self) -> Columns:
        read = [c for b in self.binding.inputs for c in b.codec.columns()]
        readers: dict[str, list[Any]] = {}
        for bound in self.binding.inputs:
            if getattr(bound.codec, "reads_files", False):
                for column in bound.codec.columns():
                    readers.setdefault(column, []).append(bound.codec.read_sent)
        # a column two codecs read keeps its file: each reads it its own way
        return Columns(tuple(dict.fromkeys(read)), frozenset(readers),
                       {c: found[0] for c, found in readers.items() if len(found) == 1})

    def missing_columns(self, request: RequestRows) -> ClientError | None:
        """The error for a request whose rows lack a column the model reads, as the CLI words it."""
        missing = [f"{c!r} (read by {b.where})" for b in self.binding.inputs
                   for c in b.codec.columns() if c not in request.columns]
        if not missing:
            return None
        return ClientError(UNPROCESSABLE, f"no row has column {', '.join(missing)}; the model"
                           f" reads {', '.join(map(repr, self.columns.read))}",
                           column=missing[0].split("'")[1])

    def run(self, requests: list[RequestRows]) -> list[Outcome]:
        """The outcome of each request. Where the batch fails as a whole (a codec refusing
        some request's rows with a :class:`PolymodalError`, or a fault), each request is run
        alone, so that only the one it comes from fails."""
        if self.per_request and len(requests) > 1:
            return [outcome for request in requests for outcome in self.run([request])]
        try:
            return self._run(requests)
        except _NotesOfSeveral:
            pass
        except Exception:  # noqa: BLE001 - retried one request at a time, below
            if len(requests) == 1:
                raise
        outcomes = []
        for request in requests:
            try:
                outcomes.extend(self._run([request]))
            except PolymodalError as exc:
                outcomes.append(Outcome(error=ClientError(UNPROCESSABLE, str(exc))))
            except Exception as exc:  # noqa: BLE001 - a fault: this request's answer is a 500
                outcomes.append(Outcome(fault=exc))
        return outcomes

    def _run(self, requests: list[RequestRows]) -> list[Outcome]:
        outcomes = [Outcome(skipped=list(r.skipped)) for r in requests]
        live = [i for i, r in enumerate(requests) if r.count]
        if live:
            self._predict_rows(requests, live, outcomes)
        for outcome in outcomes:
            outcome.skipped.sort(key=lambda found: found["row"] or 0)
        return outcomes

    def _predict_rows(self, requests: list[RequestRows], live: list[int],
                      outcomes: list[Outcome]) -> None:
        table, owners = _joined([requests[i] for i in live])
        owners = np.asarray(live, dtype=np.int64)[owners]
        issues = self.binding.check(table, self.state, targets=False)
        keep = self._sorted(issues.bad, owners, requests, outcomes)
        every = owners  # the requests of the batch, before failed ones were left out
        table, owners = table.take(keep), owners[keep]
        if len(table):
            encoded = self.binding.encode(table, self.state, targets=False)
            self._noted([issues, encoded], every, outcomes)
            self._sorted(encoded.bad, owners, requests, outcomes)
            if len(encoded.positions):
                self._predicted(table, owners, encoded, outcomes)

    @staticmethod
    def _noted(found: list[Any], owners: np.ndarray, outcomes: list[Outcome]) -> None:
        """The notes of checking and encoding (``found``), given to the one request whose rows
        they are about; :class:`_NotesOfSeveral` where the rows were several requests'."""
        report = RowReport()
        for each in found:
            report.notes.update(each.notes)
            for what, values in each.examples.items():
                add_examples(report.examples, what, values)
        if not report.notes:
            return
        if len(set(owners.tolist())) > 1:
            raise _NotesOfSeveral  # run each request alone, to tell whose rows they are
        outcome = outcomes[int(owners[0])]
        outcome.notes, outcome.note_examples = dict(report.notes), report.examples

    def _sorted(self, bad: dict[int, str], owners: np.ndarray, requests: list[RequestRows],
                outcomes: list[Outcome]) -> np.ndarray:
        """Bad rows given to their requests (failing those that do not skip); the positions
        of the rows still to predict."""
        for position in sorted(bad):
            owner = int(owners[position])
            found = row_error(bad[position], requests[owner].names)
            if requests[owner].on_bad_row == "skip":
                outcomes[owner].skipped.append(found)
            elif outcomes[owner].error is None:
                outcomes[owner].error = ClientError(UNPROCESSABLE, found["message"], found["row"],
                                                    found["column"])
        failed = np.array([o.error is not None for o in outcomes], dtype=bool)
        return np.array([p for p in range(len(owners)) if p not in bad
                         and not failed[owners[p]]], dtype=np.int64)

    @torch.no_grad()
    def _predicted(self, table: Table, owners: np.ndarray, encoded: Any,
                   outcomes: list[Outcome]) -> None:
        outputs = self.model(to_device(encoded.inputs, self.device, self.channels_last),
                             to_device(encoded.present, self.device) or None)
        heads = {b.name: b.codec.decode(outputs[b.name].detach().float().cpu(),
                                        self.state["heads"][b.name]) for b in self.binding.heads}
        used = presence_labels(self.inputs, encoded.present, len(encoded.positions))
        for index, position in enumerate(encoded.positions.tolist()):
            outcome = outcomes[int(owners[position])]
            if outcome.error is not None:
                continue
            outcome.rows.append({
                "row": int(table.rows[position]),
                "heads": {head: {c: _plain(v[index]) for c, v in columns.items()}
                          for head, columns in heads.items()},
                "inputs_used": _used(str(used[index]))})


def _joined(requests: list[RequestRows]) -> tuple[Table, np.ndarray]:
    """One table of the requests' rows, each numbered as in its request, and each row's
    request (its index in ``requests``)."""
    names = list(requests[0].columns)
    columns = {c: [v for r in requests for v in r.columns[c]] for c in names}
    table = Table.from_columns(columns, source=SOURCE)
    table.rows = np.concatenate([np.asarray(r.numbers, dtype=np.int64) for r in requests])
    owners = np.repeat(np.arange(len(requests)), [r.count for r in requests])
    return table, owners


def _used(label: str) -> list[str]:
    """``photo + record only`` as ``["photo", "record"]``; ``none`` as none."""
    return [] if label == "none" else label.removesuffix(" only").split(" + ")


def _file_metadata(path: str | Path) -> dict[str, str]:
    from .._modelfile import read_metadata

    return read_metadata(path)


def _json(text: str | None) -> dict[str, Any]:
    return json.loads(text) if text else {}


def _plain(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value

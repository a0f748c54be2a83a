"""Evaluating and predicting with a trained model on a table, streamed in batches.

A model file carries its fitted preprocessing, so raw rows go in and class names come out.
"""

from __future__ import annotations

import contextlib
import csv
import io
import math
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from .._data.binding import Binding, Encoded, presence_labels
from .._data.codec import RowIssues, State, add_examples
from .._data.nested import map_tensors
from .._data.table import Table, iter_table, read_table
from .._errors import DataError, ModelFileError, OutputError, did_you_mean
from .._files import atomic_open, refuse_overwriting_inputs
from .._output_lock import output_lock
from .hardware import choose_channels_last
from .packing import packed_convolutions
from .report import aligned

if TYPE_CHECKING:
    from .._assembly import PolymodalModel

BAD_ROW_POLICIES = ("fail", "skip")
#: The prediction column that says which inputs each row's prediction was made from, for a
#: model that takes some input as absent.
INPUTS_USED = "inputs_used"


@dataclass
class RowReport:
    """Rows left out (``skipped``: their messages) and tolerated oddities (``notes``: counts,
    with a few ``examples`` of the values behind them)."""

    skipped: list[str] = field(default_factory=list)
    notes: Counter[str] = field(default_factory=Counter)
    examples: dict[str, list[Any]] = field(default_factory=dict)

    @classmethod
    def from_json(cls, summary: dict[str, Any]) -> RowReport:
        return cls(list(summary["skipped"]), Counter(summary["notes"]),
                   dict(summary.get("note_examples", {})))

    def add(self, found: Encoded | RowIssues) -> None:
        """What checking or encoding a chunk found: its bad rows, notes and their examples."""
        self.skipped.extend(found.bad[position] for position in sorted(found.bad))  # in row order
        self.notes.update(found.notes)
        for what, values in found.examples.items():
            add_examples(self.examples, what, values)

    def note_lines(self) -> list[str]:
        out = []
        for what, count in sorted(self.notes.items()):
            examples = self.examples.get(what)
            out.append(f"{count} {what}" + (f" (e.g. {', '.join(map(repr, examples))})" if examples else ""))
        return out

    def lines(self, limit: int = 10) -> list[str]:
        out = []
        if self.skipped:
            out.append(f"skipped {len(self.skipped)} bad row(s):")
            out += [f"  {m}" for m in self.skipped[:limit]]
            if len(self.skipped) > limit:
                out.append(f"  ... and {len(self.skipped) - limit} more")
        return out + self.note_lines()

    def to_json(self) -> dict[str, Any]:
        return {"skipped_rows": len(self.skipped), "skipped": self.skipped,
                "notes": dict(self.notes), "note_examples": self.examples}


#: The tables predictions are written as, by the output's suffix: their delimiter.
TABLE_SUFFIXES = {".csv": ",", ".tsv": "\t"}


def _check_table_name(output: Path) -> None:
    """Predictions go to a .csv or .tsv file: never over a model file, never as text under
    another format's name (a .parquet holding CSV is read by nothing)."""
    suffix = output.suffix.lower()
    if suffix not in TABLE_SUFFIXES:
        what = "a model file's name" if suffix in (".safetensors", ".onnx", ".pt2", ".pt", ".pth") \
            else f"not a name of those ({suffix or 'no suffix'})"
        raise OutputError(f"{output}: predictions are written as a .csv or .tsv table, and this"
                          f" is {what}; name the file .csv or .tsv")

def check_on_bad_row(on_bad_row: str) -> None:
    if on_bad_row not in BAD_ROW_POLICIES:
        raise DataError(f"unknown bad-row policy {on_bad_row!r}; use {' or '.join(BAD_ROW_POLICIES)}")


def fail_on(bad: dict[int, str], on_bad_row: str, rows: int, among: str = "in this batch") -> None:
    """Under the ``fail`` policy, stop at the first of the ``bad`` rows of ``rows`` checked
    (``among``: which rows those were, for the message)."""
    if bad and on_bad_row == "fail":
        first = next(iter(bad.values()))
        more = f" ({len(bad)} bad rows {among})" if len(bad) > 1 else ""
        if len(bad) == rows > 1:  # every row: the spec, not the data, is the likelier cause
            more = f" (every row {among} is bad: check that the spec's options fit the table)"
        raise DataError(f"{first}{more}. Fix the row, or pass --on-bad-row skip (in Python,"
                        ' on_bad_row="skip") to leave such rows out')


def model_state(model: PolymodalModel, source: str) -> State:
    state = model.fitted_state
    if not state or "inputs" not in state or "heads" not in state:
        raise ModelFileError(f"{source}: this model was not trained on a table (it holds no fitted"
                             " preprocessing), so it cannot read one; train it with polymodal train")
    return state


def autocast(device: torch.device, precision: str):
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def channels_last_for(model: Any, device: torch.device) -> bool:
    """Whether image batches reach ``model`` on ``device`` channels-last: as its training
    resolved ``training.channels_last`` (on a CPU: on, unless its spec turns it off), the
    layout the model was trained in and its convolutions run fastest in. A model that is no
    torch module (an ONNX export) takes its inputs as they are."""
    spec = getattr(model, "spec", None)
    if not isinstance(model, torch.nn.Module) or spec is None:
        return False
    return choose_channels_last(spec.training.channels_last, device, "fp32")


def to_device(value: Any, device: torch.device, channels_last: bool = False) -> Any:
    def moved(tensor: torch.Tensor) -> torch.Tensor:
        tensor = tensor.to(device, non_blocking=True)
        if channels_last and tensor.dim() == 4:
            tensor = tensor.contiguous(memory_format=torch.channels_last)
        return tensor

    return map_tensors(value, moved)


def encoded_chunks(source: Any, binding: Binding, state: State, *, targets: bool,
                   batch_size: int, on_bad_row: str,
                   report: RowReport) -> Iterator[tuple[Table, Encoded]]:
    """Checked and encoded batches of ``source`` (a table or a file read chunk by chunk)."""
    check_on_bad_row(on_bad_row)
    first = True
    for chunk in iter_table(source, batch_size):
        if first:
            binding.require_columns(chunk, targets)
            first = False
        if len(chunk) == 0:
            continue
        issues = binding.check(chunk, state, targets)
        fail_on(issues.bad, on_bad_row, len(chunk), among=f"in rows {chunk.rows[0]}-{chunk.rows[-1]}")
        report.add(issues)
        keep = [p for p in range(len(chunk)) if p not in issues.bad]
        chunk = chunk.take(keep) if len(keep) < len(chunk) else chunk
        if len(chunk) == 0:
            continue
        encoded = binding.encode(chunk, state, targets)
        fail_on(encoded.bad, on_bad_row, len(chunk), among=f"in rows {chunk.rows[0]}-{chunk.rows[-1]}")
        report.add(encoded)
        yield chunk, encoded


@dataclass
class Collected:
    """Outputs and targets of every head over a table (rows with a target only), and losses."""

    outputs: dict[str, list[torch.Tensor]] = field(default_factory=dict)
    targets: dict[str, list[torch.Tensor]] = field(default_factory=dict)
    loss_sums: dict[str, float] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    #: each row's presence pattern over the head's inputs (``photo + record``, ``record only``)
    patterns: dict[str, list[np.ndarray]] = field(default_factory=dict)

    def add(self, head: str, output: torch.Tensor, target: torch.Tensor, loss: float,
            patterns: np.ndarray | None = None) -> None:
        self.outputs.setdefault(head, []).append(output.float().cpu())
        self.targets.setdefault(head, []).append(target.cpu())
        if patterns is not None:
            self.patterns.setdefault(head, []).append(patterns)
        self.loss_sums[head] = self.loss_sums.get(head, 0.0) + loss * len(target)
        self.counts[head] = self.counts.get(head, 0) + len(target)

    def head_loss(self, head: str) -> float:
        return self.loss_sums[head] / self.counts[head] if self.counts.get(head) else math.nan


def device_targets(targets: dict[str, tuple[Any, Any]], device: torch.device) -> dict[str, tuple[Any, torch.Tensor | None]]:
    """Each head's target moved to ``device``, with the rows that have it: ``None`` when every row
    does, else their positions (on ``device``); a head no row has a target for is left out.

    Which rows have a target is read from the batch's mask while it is still on the host, so a
    training step never waits for the GPU to find out.
    """
    moved = {}
    for head, (target, present) in targets.items():
        present = torch.as_tensor(present, dtype=torch.bool)
        if bool(present.all()):
            rows = None
        elif not bool(present.any()):
            continue
        else:
            rows = present.nonzero().squeeze(1)
            if device.type == "cuda":
                rows = rows.pin_memory()
            rows = rows.to(device, non_blocking=True)
        moved[head] = (to_device(target, device), rows)
    return moved


def head_losses(model: Any, outputs: dict[str, torch.Tensor], targets: dict[str, tuple[Any, torch.Tensor | None]]) -> dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Each head's loss over the rows that have its target: ``head -> (loss, output, target)``.

    ``targets`` comes from :func:`device_targets`; nothing here reads a value back from the device.
    """
    losses = {}
    for head, (target, rows) in targets.items():
        if head not in outputs:
            continue
        output = outputs[head]
        if rows is not None:
            output, target = output.index_select(0, rows), target.index_select(0, rows)
        losses[head] = (model.heads[head].loss(output, target), output, target)
    return losses


def auxiliary_losses(model: Any, outputs: Mapping[str, torch.Tensor],
                     targets: dict[str, tuple[Any, torch.Tensor | None]],
                     present: Mapping[str, Any] | None) -> dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Each head's copy for one input (``head@input``, ``fusion.auxiliary``): its loss, outputs
    and targets over the rows that hold both the head's target and the input."""
    found = {}
    for key, output in outputs.items():
        head, _, name = key.partition("@")
        if not name or head not in targets:
            continue
        target, rows = targets[head]
        keep = torch.ones(output.shape[0], dtype=torch.bool, device=output.device)
        if rows is not None:
            keep = torch.zeros_like(keep).index_fill(0, rows, True)
        held = (present or {}).get(name)
        if held is not None:
            keep &= torch.as_tensor(held, dtype=torch.bool).to(output.device)
        index = keep.nonzero().squeeze(1)
        if index.numel():
            chosen, wanted = output.index_select(0, index), target.index_select(0, index)
            found[key] = (model.auxiliary[key].loss(chosen, wanted), chosen, wanted)
    return found


def auxiliary_metrics(collected: Collected, binding: Binding,
                      state: State) -> dict[str, dict[str, float]]:
    """The metrics of each head's per-input copy (``head@input``) that ``collected`` holds."""
    found = {}
    for key in collected.outputs:
        head, _, name = key.partition("@")
        if name:
            found[key] = binding.check_metrics(head, binding.head_codec(head).metrics(
                torch.cat(collected.outputs[key]), torch.cat(collected.targets[key]),
                state["heads"][head]))
    return found


@torch.no_grad()
def collect(model: Any, batches: Iterable[Encoded], device: torch.device, precision: str = "fp32",
            channels_last: bool = False) -> Collected:
    collected = Collected()
    for encoded, outputs in _outputs(model, batches, device, precision, channels_last):
        _add(collected, model, encoded, outputs, device)
    return collected


def _outputs(model: Any, batches: Iterable[Encoded], device: torch.device, precision: str = "fp32",
             channels_last: bool = False) -> Iterator[tuple[Encoded, dict[str, torch.Tensor]]]:
    """Each batch with the model's outputs for it, in evaluation mode, without gradients."""
    was_training = model.training
    model.eval()
    try:
        with packed_convolutions(model):
            for encoded in batches:
                inputs = to_device(encoded.inputs, device, channels_last)
                with torch.no_grad(), autocast(device, precision):
                    outputs = model(inputs, to_device(encoded.present, device) or None)
                yield encoded, outputs
    finally:
        model.train(was_training)


def _add(collected: Collected, model: Any, encoded: Encoded, outputs: dict[str, torch.Tensor],
         device: torch.device) -> None:
    """Each head's outputs and targets of a batch, with its loss and its rows' presence."""
    targets = device_targets(encoded.targets, device)
    for head, (loss, output, target) in head_losses(model, outputs, targets).items():
        collected.add(head, output, target, float(loss), _patterns(model, head, encoded))
    for key, (loss, output, target) in auxiliary_losses(model, outputs, targets,
                                                        encoded.present).items():
        collected.add(key, output, target, float(loss))


@dataclass
class Scored:
    """A trained model on a table with targets, from one pass: each head's ``metrics``, its
    metrics ``by_presence`` of its inputs, and the prediction ``columns`` of the rows scored."""

    metrics: dict[str, dict[str, float]]
    by_presence: dict[str, dict[str, dict[str, Any]]]
    columns: dict[str, list[Any]]
    report: RowReport


def score(model: Any, data: Any, *, on_bad_row: str = "fail", device: str = "cpu",
          batch_size: int = 256) -> Scored:
    """Metrics and predictions of a trained model (object) on the rows of ``data`` that have a
    target, from one pass over them."""
    state = model_state(model, "<model>")
    binding = Binding(model.spec)
    target = torch.device(device)
    model.to(target)
    report, collected = RowReport(), Collected()
    columns: dict[str, list[Any]] = {}
    chunks = encoded_chunks(data, binding, state, targets=True, batch_size=batch_size,
                            on_bad_row=on_bad_row, report=report)
    channels_last = channels_last_for(model, target)
    with packed_convolutions(model):  # once for every chunk, not once each
        for chunk, encoded in chunks:
            for _, outputs in _outputs(model, [encoded], target, channels_last=channels_last):
                refuse_nonfinite(outputs, chunk.rows[encoded.positions])
                _add(collected, model, encoded, outputs, target)
                found = {"row": chunk.rows[encoded.positions].tolist(),
                         **_prediction_columns(binding, state, outputs, encoded)}
                for column, values in found.items():
                    columns.setdefault(column, []).extend(values)
    return Scored(head_metrics(collected, binding, state),
                  presence_metrics(collected, binding, state), columns, report)


def nonfinite_rows(outputs: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Each head's rows (a bool mask) whose output is not a number (NaN or infinite): the mark
    of a model whose training diverged; heads without such rows are left out."""
    found = {}
    for head, output in outputs.items():
        bad = ~torch.isfinite(output.detach().reshape(len(output), -1)).all(dim=1)
        if bool(bad.any()):
            found[head] = bad.cpu()
    return found


def refuse_nonfinite(outputs: Mapping[str, torch.Tensor], rows: np.ndarray | None = None,
                     source: str | None = None) -> None:
    """Refuse outputs that are not numbers: a class or value decoded from NaN means nothing
    (and each library picks a different class from it). ``rows``: the batch's row numbers;
    ``source``: the model file's name."""
    found = nonfinite_rows(outputs)
    if not found:
        return
    head, bad = next(iter(found.items()))
    first = f", row {int(rows[int(bad.nonzero()[0])])} first" if rows is not None else ""
    named = f"{source}: " if source and source != "<model>" else ""  # not an object's stand-in
    raise ModelFileError(f"{named}the model's head {head!r} gives values that are not numbers (NaN or"
                         f" infinite) for {int(bad.sum())} row(s){first}: it cannot predict. Was"
                         " it saved from a run whose training diverged? Train it again with a"
                         " lower lr")


def _prediction_columns(binding: Binding, state: State, outputs: Mapping[str, torch.Tensor],
                        encoded: Encoded, taken: Iterable[str] = ()) -> dict[str, list[Any]]:
    """A batch's decoded predictions and, for a model that takes an input as absent, which
    inputs each row's prediction used."""
    columns = _decoded(binding, state, outputs)
    if binding.may_be_absent:
        columns[kept_name(INPUTS_USED, [*columns, *taken])] = presence_labels(
            list(binding.spec.inputs), encoded.present, len(encoded.positions)).tolist()
    return columns


def _patterns(model: Any, head: str, encoded: Encoded) -> np.ndarray:
    """The presence pattern of each row of ``encoded`` that has ``head``'s target."""
    labels = presence_labels(model.spec.head_inputs(head), encoded.present, len(encoded.positions))
    return labels[np.asarray(encoded.targets[head][1], dtype=bool)]


def head_metrics(collected: Collected, binding: Binding, state: State) -> dict[str, dict[str, float]]:
    metrics = {}
    for bound in binding.heads:
        if bound.name not in collected.outputs:
            continue
        output = torch.cat(collected.outputs[bound.name])
        target = torch.cat(collected.targets[bound.name])
        values = {"loss": collected.head_loss(bound.name)}
        values.update(binding.check_metrics(
            bound.name, bound.codec.metrics(output, target, state["heads"][bound.name])))
        metrics[bound.name] = values
    return metrics


def presence_metrics(collected: Collected, binding: Binding,
                     state: State) -> dict[str, dict[str, dict[str, Any]]]:
    """Each head's metrics on the rows of each presence pattern of its inputs (``photo +
    record``, ``record only``), most rows first; heads whose rows all hold every input are left
    out."""
    found: dict[str, dict[str, dict[str, Any]]] = {}
    for bound in binding.heads:
        if not collected.patterns.get(bound.name):
            continue
        labels = np.concatenate(collected.patterns[bound.name])
        kinds, counts = np.unique(labels, return_counts=True)
        if len(kinds) < 2:
            continue
        output = torch.cat(collected.outputs[bound.name])
        target = torch.cat(collected.targets[bound.name])
        for kind in kinds[np.argsort(-counts, kind="stable")]:
            rows = torch.from_numpy(np.flatnonzero(labels == kind))
            values = binding.check_metrics(bound.name, bound.codec.metrics(
                output[rows], target[rows], state["heads"][bound.name]))
            found.setdefault(bound.name, {})[str(kind)] = {"rows": len(rows), "metrics": values}
    return found


def presence_table(by_presence: Mapping[str, Mapping[str, Any]]) -> str:
    """One head's metrics per presence pattern (what :func:`presence_metrics` gives for it)."""
    metrics = list(dict.fromkeys(m for v in by_presence.values() for m in v["metrics"]))
    rows = [["inputs present", "rows", *metrics]]
    for kind, values in by_presence.items():
        rows.append([kind, str(values["rows"]),
                     *(_number(values["metrics"].get(m, math.nan)) for m in metrics)])
    return "\n".join(aligned(rows))


def _number(value: float | str | None) -> str:
    if isinstance(value, str):  # already shown (mean ± sd)
        return value
    return "-" if value is None or math.isnan(value) else f"{value:.4f}"


def loaded_model(model: Any, exports: bool = False) -> tuple[Any, str]:
    """The model of a model file (or, where ``exports``, of an ONNX export) and its name."""
    if isinstance(model, (str, Path)):
        if exports and Path(model).suffix.lower() == ".onnx":
            from .onnx_model import OnnxModel

            return OnnxModel.open(model), str(model)
        from .._modelfile import load

        return load(model), str(model)
    return model, "<model>"


def evaluate(model: Any, data: Any, *, batch_size: int = 256, on_bad_row: str = "fail",
             device: str = "cpu") -> dict[str, Any]:
    """Metrics of each head of a trained model (file or object) on a table with targets,
    and each classification head's confusion matrix."""
    model, source = loaded_model(model)
    state = model_state(model, source)
    binding = Binding(model.spec)
    unscored = _heads_without_targets(binding, data)
    target = torch.device(device)
    model.to(target)
    report = RowReport()
    batches = (e for _, e in encoded_chunks(data, binding, state, targets=True,
                                            batch_size=batch_size, on_bad_row=on_bad_row, report=report))
    collected = collect(model, batches, target, channels_last=channels_last_for(model, target))
    refuse_nonfinite({h: torch.cat(v) for h, v in collected.outputs.items()}, source=source)
    result: dict[str, Any] = {"rows": max(collected.counts.values(), default=0), "heads": {},
                              "not_evaluated": unscored}
    for name, values in head_metrics(collected, binding, state).items():
        codec = binding.head_codec(name)
        output = torch.cat(collected.outputs[name])
        truth = torch.cat(collected.targets[name])
        result["heads"][name] = {"rows": collected.counts[name], "metrics": values,
                                 **codec.details(output, truth, state["heads"][name])}
    result["by_presence"] = presence_metrics(collected, binding, state)
    result.update(report.to_json())
    return result


def _heads_without_targets(binding: Binding, data: Any) -> dict[str, str]:
    """Heads whose target column the table lacks, taken out of ``binding``: the others are
    evaluated. When no head has its column, the binding is left whole, to report them all."""
    first = next(iter_table(data, 1), None)
    if first is None:
        return {}
    names = first.columns
    absent = {b.name: [c for c in b.codec.columns() if c not in names] for b in binding.heads}
    absent = {head: columns for head, columns in absent.items() if columns}
    if len(absent) == len(binding.heads):
        return {}
    binding.heads = [b for b in binding.heads if b.name not in absent]
    return {head: f"no column {', '.join(map(repr, columns))}" for head, columns in absent.items()}


def render_evaluation(model: Any, result: dict[str, Any]) -> str:
    binding = Binding(model.spec)
    lines = [f"{result['rows']} row(s) evaluated"]
    for name, why in result.get("not_evaluated", {}).items():
        lines.append(f"head {name} not evaluated: the table has {why}")
    for name, values in result["heads"].items():
        metrics = "  ".join(f"{k} {v:.4f}" for k, v in values["metrics"].items())
        lines.append(f"\nhead {name} ({values['rows']} rows): {metrics}")
        details = {k: v for k, v in values.items() if k not in ("rows", "metrics")}
        if details:
            text = binding.head_codec(name).render_details(details)
            if text:
                lines.append(text)
        by_presence = result.get("by_presence", {}).get(name)
        if by_presence:
            lines.append(f"by the inputs each row holds:\n{presence_table(by_presence)}")
    return "\n".join(lines)


def predict(model: Any, data: Any, output: str | Path | None = None, *, batch_size: int = 256,
            on_bad_row: str = "fail", keep: Iterable[str] = (), device: str = "cpu",
            on_batch: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Predictions for every row of ``data``: each classification head's class name and
    class probabilities, each regression head's value; with the source row number and the
    ``keep`` columns. Streams batch by batch: with ``output`` (a CSV file, written atomically
    and locked against another run writing it) a table larger than memory works; without, the
    columns are returned (``result["columns"]``).
    ``model`` is a model, a model file, or an ONNX file ``polymodal export`` wrote (run by ONNX
    Runtime, with the same preprocessing).
    """
    if output is not None:
        _check_table_name(Path(output))
        refuse_overwriting_inputs(output, {"the table to predict": data, "the model": model})
    model, source = loaded_model(model, exports=True)
    state = model_state(model, source)
    target = torch.device(device)
    model.to(target).eval()
    report = RowReport()
    batches = _predicted(model, state, data, target, batch_size, on_bad_row, list(keep), report,
                         source)
    if output is None:
        gathered: dict[str, list[Any]] = {}
        rows = 0
        for columns in batches:
            for k, v in columns.items():
                gathered.setdefault(k, []).extend(v)
            rows = _counted(rows, columns, on_batch)
        return {"rows": rows, **report.to_json(), "columns": gathered}
    with output_lock(output, what="output"), atomic_open(output) as handle:
        writer = csv.writer(handle, delimiter=TABLE_SUFFIXES[Path(output).suffix.lower()])
        rows = 0
        for columns in batches:
            if rows == 0:
                writer.writerow(list(columns))
            writer.writerows(zip(*columns.values()))
            rows = _counted(rows, columns, on_batch)
    return {"rows": rows, **report.to_json(), "output": str(output)}


def _counted(rows: int, columns: dict[str, list[Any]], on_batch: Callable[[int], None] | None) -> int:
    rows += len(columns["row"])
    if on_batch is not None:
        on_batch(rows)
    return rows


def _predicted(model: Any, state: State, data: Any, device: torch.device, batch_size: int,
               on_bad_row: str, keep: list[str], report: RowReport,
               source: str) -> Iterator[dict[str, list[Any]]]:
    """The output columns of each batch: the row number, the kept columns, the predictions."""
    binding = Binding(model.spec)
    chunks = encoded_chunks(data, binding, state, targets=False, batch_size=batch_size,
                            on_bad_row=on_bad_row, report=report)
    channels_last = channels_last_for(model, device)
    with packed_convolutions(model):
        for chunk, encoded in chunks:
            missing = [c for c in keep if c not in chunk.columns]
            if missing:
                raise DataError(f"{chunk.source}: no column {', '.join(map(repr, missing))} to"
                                f" keep.{did_you_mean(missing[0], chunk.columns)}")
            with torch.no_grad():
                outputs = model(to_device(encoded.inputs, device, channels_last),
                                to_device(encoded.present, device) or None)
            refuse_nonfinite(outputs, chunk.rows[encoded.positions], source)
            predicted = _prediction_columns(binding, state, outputs, encoded, ["row", *keep])
            columns: dict[str, list[Any]] = {"row": chunk.rows[encoded.positions].tolist()}
            for c in keep:
                columns[kept_name(c, [*predicted, *columns])] = [
                    _plain(v) for v in chunk.columns[c][encoded.positions]]
            columns.update(predicted)
            yield columns


def encode(model: Any, data: Any) -> Encoded:
    """The rows of ``data`` (a table file, a DataFrame, a dict of columns) as a trained model
    (file or object) takes them: read by its own codecs and fitted preprocessing, as ``predict``
    reads them, all in one batch. Call the model on it, ``model(batch.inputs, batch.present)``,
    and :func:`decode` the outputs. ``batch.present`` marks the rows that lack an input the
    model takes as absent; ``batch.positions`` are the rows held, 0-based. A row that cannot be
    read is an error naming it, as in ``predict`` without ``on_bad_row="skip"``; targets are
    not read."""
    model, source = loaded_model(model)
    table = read_table(data)
    chunks = encoded_chunks(table, Binding(model.spec), model_state(model, source), targets=False,
                            batch_size=max(len(table), 1), on_bad_row="fail", report=RowReport())
    for _, encoded in chunks:
        return encoded
    raise DataError(f"{table.source}: no rows to encode")


def decode(model: Any, outputs: Mapping[str, torch.Tensor]) -> dict[str, list[Any]]:
    """Raw head outputs of a model trained on a table (what ``model(batch)`` returns: logits,
    standardised regression values) as the columns ``predict`` writes: class names and
    probabilities, values in the target's units."""
    return _decoded(Binding(model.spec), model_state(model, "the model"), outputs)


def _decoded(binding: Binding, state: State, outputs: Mapping[str, torch.Tensor]) -> dict[str, list[Any]]:
    columns: dict[str, list[Any]] = {}
    for bound in binding.heads:
        if bound.name in outputs:
            output = outputs[bound.name].detach().float().cpu()
            columns.update(bound.codec.decode(output, state["heads"][bound.name]))
    return columns


def kept_name(column: str, taken: Iterable[str]) -> str:
    """The output name of a kept column: its own, or ``NAME_kept`` where a prediction (often the
    head named after its target column), the row number or another kept column has that name."""
    taken = set(taken)
    while column in taken:
        column += "_kept"
    return column


def _plain(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    return value


def to_csv_text(columns: dict[str, list[Any]]) -> str:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(list(columns))
    writer.writerows(zip(*columns.values()))
    return out.getvalue()

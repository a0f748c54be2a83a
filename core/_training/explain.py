"""What each input contributes to a trained model, behind ``polymodal explain``.

On the rows of a table with targets, every head's declared metrics are computed with the model
as it is, then again with each input changed, and the difference is the input's contribution:

- **absent**: the input marked absent in every row (the fusion's ``present`` mask, as for a row
  whose cell is empty); possible where the head fuses the input with others;
- **permuted**: the input's values shuffled across rows (``repeats`` times, mean ± sd), which
  keeps what the input looks like but breaks what it says about each row;
- **parts**: each part a codec names (a tabular column, an image band) shuffled on its own.

A *drop* is how much worse the metric gets, in the direction the head declares (positive: the
model relies on the input). Per row (``rows``), each head's prediction is shown with the number
that says how strongly the head makes it (the predicted class's probability, a value), and how
that number moves with each input absent.

The rows are encoded once and kept in memory (at most ``max_rows``, drawn with the seed);
every variant is one inference pass over them: ``1 + absent inputs + inputs x repeats + parts x
repeats`` passes in all.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .._data.binding import Binding, Encoded, select
from .._data.codec import State
from .._data.loader import derive_seed
from .._data.table import Table, read_table
from .._errors import DataError, OutputError
from .._files import atomic_folder, atomic_path, write_text
from .._output_lock import output_lock
from .inference import (
    RowReport,
    channels_last_for,
    encoded_chunks,
    kept_name,
    loaded_model,
    model_state,
    to_device,
)
from .packing import packed_convolutions
from .report import aligned, csv_text, json_safe

DEFAULT_REPEATS = 5
#: Rows kept in memory to explain; a larger table is sampled (with the seed).
DEFAULT_MAX_ROWS = 5000


@dataclass
class Variant:
    """One way of changing the inputs, and the metrics of each head it gave."""

    input: str
    how: str  # "absent" or "permuted"
    part: str | None = None
    #: head -> metric -> one value per repeat
    values: dict[str, dict[str, list[float]]] = field(default_factory=dict)

    @property
    def label(self) -> str:
        what = f"{self.input}.{self.part}" if self.part else self.input
        return f"{what} {self.how}"


@dataclass
class Explanation:
    """What :func:`explain` found; ``summary()`` is ``report.json``."""

    source: str
    rows: int
    repeats: int
    seed: int
    full: dict[str, dict[str, float]]  # head -> metric -> value with every input as it is
    variants: list[Variant]
    directions: dict[str, dict[str, bool]]  # head -> metric -> higher is better
    not_absent: dict[str, dict[str, str]]  # head -> input -> why it cannot be made absent
    per_row: dict[str, list[Any]]
    passes: int
    seconds: float
    report: RowReport = field(default_factory=RowReport)
    output: Path | None = None
    #: ``--attribute``: pictures by their path in the output folder
    pictures: dict[str, np.ndarray] = field(default_factory=dict)

    def drop(self, variant: Variant, head: str, metric: str) -> tuple[float, float]:
        """Mean and sd (over repeats) of how much worse ``metric`` is with ``variant``."""
        values = np.array(variant.values.get(head, {}).get(metric, []), np.float64)
        if values.size == 0:
            return math.nan, math.nan
        sign = 1.0 if self.directions[head][metric] else -1.0
        drops = sign * (self.full[head][metric] - values)
        return float(np.nanmean(drops)) if np.isfinite(drops).any() else math.nan, \
            float(np.nanstd(drops, ddof=1)) if np.isfinite(drops).sum() > 1 else math.nan

    def drops(self) -> dict[str, dict[str, dict[str, float]]]:
        """head -> variant label (``photo absent``) -> metric -> mean drop: what
        ``cv --explain`` keeps of each fold."""
        return {head: {v.label: {m: self.drop(v, head, m)[0] for m in metrics}
                       for v in self.variants if head in v.values}
                for head, metrics in self.full.items()}

    def importance_rows(self) -> list[list[Any]]:
        rows = []
        for head, metrics in self.full.items():
            for variant in self.variants:
                if head not in variant.values:
                    continue
                for metric in metrics:
                    values = np.array(variant.values[head][metric], np.float64)
                    mean, sd = self.drop(variant, head, metric)
                    rows.append([head, metric, variant.input, variant.part or "", variant.how,
                                 len(values), _round(float(np.nanmean(values)) if values.size else math.nan),
                                 _round(mean), _round(sd)])
        return rows

    def summary(self) -> dict[str, Any]:
        heads = {}
        for head, metrics in self.full.items():
            contributions = {}
            for variant in self.variants:
                if head not in variant.values:
                    continue
                contributions[variant.label] = {
                    metric: {"value": float(np.nanmean(variant.values[head][metric])),
                             "drop": self.drop(variant, head, metric)[0],
                             "drop_sd": self.drop(variant, head, metric)[1]}
                    for metric in metrics}
            heads[head] = {"metrics": metrics, "contributions": contributions,
                           "cannot_be_absent": self.not_absent.get(head, {})}
        return json_safe({"source": self.source, "rows": self.rows, "repeats": self.repeats,
                          "seed": self.seed, "passes": self.passes,
                          "seconds": round(self.seconds, 2), "heads": heads,
                          "attributions": sorted(self.pictures),
                          "output": str(self.output) if self.output else None,
                          **self.report.to_json()})

    def text(self, shown_rows: int = 10) -> str:
        lines = [f"explained {self.rows} row(s) of {self.source} ({self.repeats} repeat(s) of"
                 f" each permutation, seed {self.seed}; {self.passes} inference passes,"
                 f" {self.seconds:.1f} s)"]
        for head, metrics in self.full.items():
            table = [[f"head {head}", *metrics], ["every input", *(_number(v) for v in metrics.values())]]
            for variant in self.variants:
                if head in variant.values:
                    cells = [_signed(*self.drop(variant, head, m)) for m in metrics]
                    table.append([f"drop, {variant.label}", *cells])
            lines += ["", *aligned(table)]
            for name, why in self.not_absent.get(head, {}).items():
                lines.append(f"  ({name} absent: not measured, {why})")
        lines.append("\na drop is how much worse each metric gets with the input absent or"
                     " its values shuffled across rows (mean ± sd over repeats): positive, the"
                     " model relies on it; about 0, it does not")
        if self.per_row.get("row"):
            columns = list(self.per_row)
            table = [columns] + [[_cell(self.per_row[c][i]) for c in columns]
                                 for i in range(min(shown_rows, len(self.per_row["row"])))]
            lines += ["", "per row (rows.csv has every chosen row):", *aligned(table)]
        if self.pictures:
            lines += ["", f"attribution pictures of the chosen rows: {len(self.pictures)} in"
                      f" {self.output / 'attributions' if self.output else 'attributions'}"
                      " (each picture: the input, what moved the head's output as a grey map, and the two"
                      " laid over in red)"]
        return "\n".join(lines)


def _round(value: float) -> float | None:
    return None if value is None or not math.isfinite(value) else round(float(value), 6)


def _number(value: float) -> str:
    return "-" if not math.isfinite(value) else f"{value:.4f}"


def _signed(mean: float, sd: float) -> str:
    if not math.isfinite(mean):
        return "-"
    return f"{mean:+.4f}" + (f" ± {sd:.4f}" if math.isfinite(sd) else "")


def _cell(value: Any) -> str:
    if value is None:  # no prediction: the row would hold no input of the head
        return "n/a"
    if isinstance(value, float):
        return _number(value)
    return str(value)


class _Rows:
    """The table's rows, checked and encoded once: inputs, presence masks, targets."""

    def __init__(self, table: Table, encoded: Encoded, binding: Binding):
        self.table = table.take(encoded.positions)
        self.count = len(encoded.positions)
        self.inputs = encoded.inputs
        self.present = {b.name: torch.as_tensor(encoded.present[b.name], dtype=torch.bool)
                        if b.name in encoded.present else torch.ones(self.count, dtype=torch.bool)
                        for b in binding.inputs}
        self.targets = encoded.targets


class _Explainer:
    def __init__(self, model: Any, binding: Binding, state: Any, rows: _Rows, batch_size: int,
                 device: torch.device, tick: Callable[[], None]):
        self.model, self.binding, self.state, self.rows = model, binding, state, rows
        self.batch_size, self.device, self.tick = batch_size, device, tick
        self.channels_last = channels_last_for(model, device)
        self.passes = 0

    @torch.no_grad()
    def outputs(self, inputs: Mapping[str, Any], present: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Every head's raw outputs over every row (CPU float32), batch by batch."""
        self.passes += 1
        gathered: dict[str, list[torch.Tensor]] = {}
        for start in range(0, self.rows.count, self.batch_size):
            index = np.arange(start, min(start + self.batch_size, self.rows.count))
            masks = {n: m[index] for n, m in present.items() if n in self.binding.may_be_absent
                     or not bool(m[index].all())}
            out = self.model(to_device(select(dict(inputs), index), self.device,
                                       self.channels_last),
                             to_device(masks, self.device) or None)
            for head, value in out.items():
                gathered.setdefault(head, []).append(value.detach().float().cpu())
        self.tick()
        return {head: torch.cat(parts) for head, parts in gathered.items()}

    def metrics(self, outputs: Mapping[str, torch.Tensor]) -> dict[str, dict[str, float]]:
        found = {}
        for bound in self.binding.heads:
            if bound.name not in outputs or bound.name not in self.rows.targets:
                continue
            target, has = self.rows.targets[bound.name]
            rows = torch.as_tensor(has, dtype=torch.bool)
            if not bool(rows.any()):
                continue
            found[bound.name] = self.binding.check_metrics(bound.name, bound.codec.metrics(
                outputs[bound.name][rows], target[rows], self.state["heads"][bound.name]))
        return found


def _heads_reading_alone(binding: Binding) -> dict[str, dict[str, str]]:
    """head -> input -> why the input cannot be made absent for that head."""
    spec = binding.spec
    found: dict[str, dict[str, str]] = {}
    for head in spec.heads:
        used = spec.head_inputs(head)
        if len(used) == 1:
            found[head] = {used[0]: f"head {head!r} reads it alone"}
    return found


def _permuted(rows: _Rows, name: str, order: torch.Tensor,
              part: tuple[Any, str] | None = None) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """The inputs and presence masks with input ``name`` (or one ``part`` of it: ``(codec,
    part)``) taken from the rows ``order``."""
    inputs = dict(rows.inputs)
    present = dict(rows.present)
    if part is None:
        inputs[name] = select(rows.inputs[name], order.numpy())
        present[name] = rows.present[name][order]
    else:
        codec, which = part
        inputs[name] = codec.permute_part(rows.inputs[name], which, order)
    return inputs, present


def explain(model: Any, data: Any, output: str | Path | None = None, *,
            repeats: int = DEFAULT_REPEATS, rows: int | Sequence[int] = 0,
            keep: Iterable[str] = (), seed: int = 0, batch_size: int = 256, device: str = "cpu",
            on_bad_row: str = "fail", max_rows: int = DEFAULT_MAX_ROWS, parts: bool = True,
            attribute: str | None = None, progress: bool = False,
            log: Callable[[str], None] | None = None) -> Explanation:
    """What each input (and each part of it: a column, a band) of a trained model contributes
    to each head's metrics on the rows of ``data`` (a table with targets); with ``rows`` (a
    count: the first rows; or row numbers as the table numbers them), how each head's
    prediction moves per row when each input is absent. With ``output`` (a folder), writes
    ``report.txt``, ``report.json``, ``importance.csv``, ``rows.csv`` and a bar chart per head.
    With ``attribute`` (a method of :data:`attribution.METHODS`, on Captum), the chosen rows'
    attribution pictures too (``attributions/``), for each input whose codec draws them.
    """
    say = log or (lambda _: None)
    _check_request(repeats, rows, output, attribute)
    started = time.perf_counter()
    model, source = loaded_model(model)
    state = model_state(model, source)
    binding = Binding(model.spec)
    target_device = torch.device(device)
    model.to(target_device).eval()
    table = _sampled(read_table(data), max_rows, seed, say)
    _check_row_numbers(table, rows)  # before the rows are read and decoded
    report = RowReport()
    encoded_rows = _Rows(*_encoded(table, binding, state, on_bad_row, report), binding)
    variants = _variants(binding, model.spec, parts)
    total = 1 + sum(1 if v.how == "absent" else repeats for v in variants)
    bar = _bar(progress, total)
    explainer = _Explainer(model, binding, state, encoded_rows, batch_size, target_device,
                           bar.update if bar is not None else (lambda: None))
    try:
        # Every pass predicts with the same weights; attributions, which differentiate, take
        # the usual path.
        with packed_convolutions(model):
            full_outputs = explainer.outputs(encoded_rows.inputs, encoded_rows.present)
            full = explainer.metrics(full_outputs)
            rng = np.random.default_rng(derive_seed(seed, 0xE1))
            for variant in variants:
                _measure(explainer, variant, repeats, rng)
            per_row = _per_row(explainer, full_outputs, rows, list(keep))
            pictures = _pictures(explainer, rows, attribute)
    finally:
        if bar is not None:
            bar.close()
    directions = {head: {m: binding.higher_is_better(f"{head}.{m}") for m in metrics}
                  for head, metrics in full.items()}
    result = Explanation(str(getattr(table, "source", source)), encoded_rows.count, repeats, seed,
                         full, variants, directions, _heads_reading_alone(binding), per_row,
                         explainer.passes, time.perf_counter() - started, report,
                         pictures=pictures)
    if output is not None:
        result.output = Path(output)
        _write(result)
    return result


def _check_request(repeats: int, rows: int | Sequence[int], output: str | Path | None,
                   attribute: str | None) -> None:
    """What explain is asked, checked before any work."""
    if repeats < 1:
        raise DataError(f"--repeats {repeats}: shuffle each input at least once")
    if attribute is not None:
        from .attribution import captum_method

        captum_method(attribute)  # an unknown method, or no Captum: said before any work
        if not rows:
            raise DataError(f"--attribute {attribute}: choose the rows to draw (--rows)")
        if output is None:
            raise DataError(f"attribute={attribute!r}: give an output folder for the pictures")
    if output is not None:
        _refuse_others_folder(Path(output))


def _encoded(table: Table, binding: Binding, state: State, on_bad_row: str,
             report: RowReport) -> tuple[Table, Encoded]:
    """Every readable row of ``table``, encoded as one batch, and the table its positions are
    of (the rows left after those found bad when checked, with their own row numbers)."""
    chunks = list(encoded_chunks(table, binding, state, targets=True,
                                 batch_size=max(len(table), 1), on_bad_row=on_bad_row, report=report))
    if not chunks or len(chunks[0][1].positions) == 0:
        raise DataError(f"{table.source}: no row to explain")
    return chunks[0]


def _refuse_others_folder(folder: Path) -> None:
    """An existing folder must be empty or an earlier explanation's: explain replaces its
    report.json and report.txt, which a cross-validation or a search folder holds too."""
    try:
        found = sorted(p.name for p in folder.iterdir())
    except (FileNotFoundError, NotADirectoryError):
        if folder.exists():
            raise OutputError(f"{folder}: not a folder; give explain a folder (-o)") from None
        return
    if found and "importance.csv" not in found:
        raise OutputError(f"{folder}: this folder holds files explain did not write"
                          f" ({', '.join(found[:3])}{', ...' if len(found) > 3 else ''}); give"
                          " explain a folder of its own (-o)")


def _pictures(explainer: _Explainer, rows: int | Sequence[int],
              method: str | None) -> dict[str, np.ndarray]:
    if method is None:
        return {}
    from .attribution import attribute

    return attribute(explainer, _chosen_rows(explainer.rows, rows), method)


def _sampled(table: Table, max_rows: int, seed: int, say: Callable[[str], None]) -> Table:
    if len(table) <= max_rows:
        return table
    chosen = np.sort(np.random.default_rng(derive_seed(seed, 0x5A)).choice(
        len(table), max_rows, replace=False))
    say(f"note: {table.source} has {len(table)} rows: explaining {max_rows} drawn at random"
        " (--max-rows)")
    return table.take(chosen)


def _variants(binding: Binding, spec: Any, parts: bool) -> list[Variant]:
    """Every input absent (where some head fuses it with others) and permuted, and each part
    of each input permuted."""
    fused = {n for inputs in spec.heads_by_inputs() if len(inputs) > 1 for n in inputs}
    found = []
    for bound in binding.inputs:
        if bound.name in fused:
            found.append(Variant(bound.name, "absent"))
        found.append(Variant(bound.name, "permuted"))
        if parts:
            named = bound.codec.parts()
            found += [Variant(bound.name, "permuted", part) for part in named] if len(named) > 1 else []
    return found


def _measure(explainer: _Explainer, variant: Variant, repeats: int,
             rng: np.random.Generator) -> None:
    rows = explainer.rows
    if variant.how == "absent":
        present = {**rows.present, variant.input: torch.zeros(rows.count, dtype=torch.bool)}
        _record(variant, explainer.metrics(explainer.outputs(rows.inputs, present)),
                explainer, variant.input)
        return
    codec = explainer.binding.input_codec(variant.input)
    for _ in range(repeats):
        order = torch.from_numpy(rng.permutation(rows.count))
        inputs, present = _permuted(rows, variant.input, order,
                                    None if variant.part is None else (codec, variant.part))
        _record(variant, explainer.metrics(explainer.outputs(inputs, present)), explainer,
                variant.input)


def _record(variant: Variant, metrics: dict[str, dict[str, float]], explainer: _Explainer,
            name: str) -> None:
    alone = _heads_reading_alone(explainer.binding)
    for head, values in metrics.items():
        if variant.how == "absent" and name in alone.get(head, {}):
            continue  # the head has no fusion to take the input as absent
        for metric, value in values.items():
            variant.values.setdefault(head, {}).setdefault(metric, []).append(value)


def _check_row_numbers(table: Table, chosen: int | Sequence[int]) -> None:
    if isinstance(chosen, int):
        return
    known = {int(r) for r in table.rows}
    missing = [r for r in chosen if int(r) not in known]
    if missing:
        first, last = (int(table.rows.min()), int(table.rows.max())) if len(table) else (0, 0)
        raise DataError(f"--rows: {table.source} has no row {missing[0]}: rows are numbered as"
                        f" the table's lines, from 1 after the header ({first} to {last} here),"
                        " not by an id column")


def _chosen_rows(rows: _Rows, chosen: int | Sequence[int]) -> np.ndarray:
    """Positions of the rows to show: the first ``chosen`` rows, or those row numbers."""
    if isinstance(chosen, int):
        return np.arange(min(max(chosen, 0), rows.count))
    where = {int(r): i for i, r in enumerate(rows.table.rows)}
    missing = [r for r in chosen if int(r) not in where]
    if missing:
        raise DataError(f"--rows: no row {missing[0]} among the rows explained (bad rows are"
                        " left out; row numbers count from 1, header excluded)")
    return np.array([where[int(r)] for r in chosen], dtype=np.int64)


def _per_row(explainer: _Explainer, full: Mapping[str, torch.Tensor],
             chosen: int | Sequence[int], keep: list[str]) -> dict[str, list[Any]]:
    """For each chosen row: each head's prediction and its number with every input, and that
    number with each input absent (where the head fuses it with others)."""
    rows = explainer.rows
    at = _chosen_rows(rows, chosen)
    if len(at) == 0:
        return {}
    missing = [c for c in keep if c not in rows.table.columns]
    if missing:
        raise DataError(f"{rows.table.source}: no column {missing[0]!r} to keep")
    columns: dict[str, list[Any]] = {"row": rows.table.rows[at].tolist()}
    for c in keep:
        columns[kept_name(c, columns)] = [_plain(v) for v in rows.table.columns[c][at]]
    alone = _heads_reading_alone(explainer.binding)
    fused = {n for inputs in explainer.binding.spec.heads_by_inputs() if len(inputs) > 1 for n in inputs}
    without = {}
    for name in [b.name for b in explainer.binding.inputs if b.name in fused]:
        present = {**rows.present, name: torch.zeros(rows.count, dtype=torch.bool)}
        without[name] = explainer.outputs(rows.inputs, present)
    for bound in explainer.binding.heads:
        if bound.name not in full:
            continue
        state = explainer.state["heads"][bound.name]
        predicted, score = bound.codec.row_scores(full[bound.name][at], state)
        columns[kept_name(bound.name, columns)] = list(predicted)
        columns[f"{bound.name}_score"] = [float(v) for v in score]
        for name, outputs in without.items():
            if name in alone.get(bound.name, {}) or name not in explainer.binding.spec.head_inputs(bound.name):
                continue
            other, _ = bound.codec.row_scores(outputs[bound.name][at], state)
            _, held = bound.codec.row_scores(outputs[bound.name][at], state, list(predicted))
            # Left blank: a row that lacks the input already, and one that holds no other input
            # of the head (it would be predicted from nothing, a bad row anywhere else).
            left = torch.zeros(len(at), dtype=torch.bool)
            for other_input in explainer.binding.spec.head_inputs(bound.name):
                if other_input != name:
                    left |= rows.present[other_input][at]
            left &= rows.present[name][at]  # a row that lacks it already: nothing to take away
            columns[f"{bound.name}_without_{name}"] = [v if ok else None for v, ok in zip(other, left.tolist())]
            columns[f"{bound.name}_score_without_{name}"] = [
                float(v) if ok else None for v, ok in zip(held, left.tolist())]
            columns[f"{bound.name}_change_without_{name}"] = [
                float(b - a) if ok else None for a, b, ok in zip(score, held, left.tolist())]
    return columns


def _plain(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


def _bar(enabled: bool, total: int):
    import sys

    if not enabled or not sys.stderr.isatty():
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc="explain", unit="pass", leave=False, file=sys.stderr)


def _write(result: Explanation) -> None:
    out = result.output
    assert out is not None
    with output_lock(out, what="explain folder"), atomic_folder(out) as folder:
        write_text(folder / "report.txt", result.text() + "\n")
        write_text(folder / "report.json", json.dumps(result.summary(), indent=2))
        write_text(folder / "importance.csv", csv_text(
            ["head", "metric", "input", "part", "how", "repeats", "value", "drop", "drop_sd"],
            result.importance_rows()))
        if result.per_row:
            write_text(folder / "rows.csv", csv_text(list(result.per_row),
                                                     zip(*result.per_row.values())))
        if result.pictures:
            from .attribution import write_pictures

            write_pictures(folder, result.pictures)
        for head in result.full:
            _chart(result, head, folder / f"importance_{head}.png")


def _chart(result: Explanation, head: str, path: Path) -> None:
    """A bar per variant: the drop of the head's first metric (mean ± sd)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    metric = next(iter(result.full[head]))
    shown = [v for v in result.variants if head in v.values]
    drops = [result.drop(v, head, metric) for v in shown]
    figure, axes = plt.subplots(figsize=(7, 0.35 * len(shown) + 1.2))
    positions = np.arange(len(shown))[::-1]
    axes.barh(positions, [d[0] if math.isfinite(d[0]) else 0 for d in drops],
              xerr=[d[1] if math.isfinite(d[1]) else 0 for d in drops],
              color=["#c44e52" if v.how == "absent" else "#4c72b0" if v.part is None else "#8da0cb"
                     for v in shown])
    axes.set_yticks(positions, [v.label for v in shown])
    axes.axvline(0, color="black", linewidth=0.8)
    axes.set_xlabel(f"drop of {metric} (positive: the model relies on it)")
    axes.set_title(f"head {head}: {metric} {result.full[head][metric]:.4f} with every input")
    figure.tight_layout()
    with atomic_path(path) as pending:
        figure.savefig(pending, dpi=80, format="png")
    plt.close(figure)


"""The ``multilabel`` head: any number of ``labels`` a sample, trained with binary cross-entropy."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field, field_validator, model_validator
from torch import nn

from polymodal.plugin import (
    DataError,
    Head,
    HeadConfig,
    PolymodalError,
    RowIssues,
    State,
    Table,
    TargetCodec,
    Vector,
    changed_options,
    hookimpl,
    is_missing,
)

from ._columns import (
    category,
    fit_vocabulary,
    key,
    listing,
    lookup,
    output_count,
    output_names,
    vocabulary_of,
)
from ._metrics import MULTILABEL_METRICS, multilabel_metrics

#: The plugin interface this module is written for.
POLYMODAL_PLUGIN_API = 2


class MultilabelHead(Head):
    """Multi-label classification: one logit a label (``[B, labels]``), binary cross-entropy.

    Targets are 0/1 (or soft) values ``[B, labels]``. ``pos_weight`` weighs each label's
    positives in the loss (more than 1 for rare labels). Predictions are every label's
    probability and the labels at or above ``threshold``. On a table, the target column holds
    a row's label names joined by ``separator`` (``scratch;dent``), or a list of names in a
    DataFrame.
    """

    class Config(HeadConfig):
        type: Literal["multilabel"] = "multilabel"
        labels: int | Literal["auto"] | list[int | str] = Field(
            "auto", description="Number of labels, `auto` to learn the label names from the"
            " training table's target column, or the label names in the order of the outputs"
            " (`[scratch, dent]`), which may include a label the training rows lack.",
            # Bounds are checked by _check_labels (for a message at this option's place);
            # the schema states them for editors.
            json_schema_extra={"anyOf": [{"type": "integer", "minimum": 1, "maximum": 1_000_000},
                                         {"const": "auto", "type": "string"},
                                         {"type": "array", "minItems": 1, "maxItems": 1_000_000,
                                          "items": {"anyOf": [{"type": "string"}, {"type": "integer"}]}}]})
        pos_weight: list[float] | None = Field(
            None, description="Loss weight of each label's positive examples (one per label).")
        threshold: float = Field(0.5, description="Probability at which a label is predicted.",
                                 gt=0.0, lt=1.0)
        dropout: float = Field(0.0, description="Dropout before the output layer.", ge=0.0, lt=1.0)
        separator: str = Field(
            ";", min_length=1, description="When trained on a table: what separates the label"
            " names in a target cell.")
        empty: Literal["no_labels", "no_target"] = Field(
            "no_labels", description="When trained on a table: what an empty target cell means:"
            " the row has none of the labels, or the row has no target (left out of this"
            " head's loss and metrics).")

        @field_validator("labels")
        @classmethod
        def _check_labels(cls, labels: int | Literal["auto"] | list[int | str]
                          ) -> int | Literal["auto"] | list[int | str]:
            if isinstance(labels, list):
                if len(labels) > 1_000_000:
                    raise ValueError("Input should have at most 1000000 label names")
                return output_names(labels, option="labels", singular="label", least=1)
            if labels != "auto" and not 1 <= labels <= 1_000_000:
                bound = "greater than or equal to 1" if labels < 1 else "at most 1000000"
                raise ValueError(f"Input should be {bound} (or auto)")
            return labels

        @model_validator(mode="after")
        def _check_weights(self):
            if self.pos_weight is not None and self.labels == "auto":
                raise ValueError("pos_weight needs a number of labels (not auto)")
            if self.pos_weight is not None:
                if len(self.pos_weight) != self.count():
                    raise ValueError(f"pos_weight has {len(self.pos_weight)} values for"
                                     f" {self.count()} labels")
                if any(w <= 0 for w in self.pos_weight):
                    raise ValueError("pos_weight values must be > 0")
            return self

        def count(self) -> int | None:
            """How many labels (outputs); None while they are to be learned (auto)."""
            return output_count(self.labels)

        def describe(self) -> str:
            return f"multilabel, {self.count() or 'auto'} labels"

        def diagram_settings(self) -> list[str]:
            # describe() shows the labels; edges show the inputs; the target column and how
            # its cells are read are data.
            return changed_options(self, skip=("inputs", "target", "labels", "separator", "empty"))

        def codec(self, name: str, where: str) -> MultilabelCodec:
            return MultilabelCodec(self, name, where)

    config: Config
    pos_weight: torch.Tensor  # a buffer

    example_options = {"labels": 3}
    exportable = True

    def __init__(self, config: Config, takes: Vector):
        super().__init__(config, takes)
        if config.labels == "auto":
            raise PolymodalError("labels: auto is learned from data: train the model on a"
                                 " table (polymodal train), or give the number of labels")
        self.dropout = nn.Dropout(config.dropout) if config.dropout else nn.Identity()
        self.linear = nn.Linear(takes.dim, config.count() or 1)
        # Not persistent: it comes from the spec, which the model file holds.
        weight = None if config.pos_weight is None else torch.tensor(config.pos_weight)
        self.register_buffer("pos_weight", weight, persistent=False)

    def forward(self, fused: torch.Tensor) -> torch.Tensor:
        return self.linear(self.dropout(fused))

    def loss(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        weight = None if self.pos_weight is None else self.pos_weight.to(output.dtype)
        return F.binary_cross_entropy_with_logits(
            output, target.to(output.dtype).view_as(output), pos_weight=weight)

    def predict(self, output: torch.Tensor) -> dict[str, torch.Tensor]:
        probabilities = output.float().sigmoid()
        return {"labels": probabilities >= self.config.threshold, "probabilities": probabilities}


# -- reading tables ----------------------------------------------------------------------------


class MultilabelCodec(TargetCodec[MultilabelHead.Config]):
    """Reads the target column's label names, learned on the training rows; predictions are
    written back as the names at or above the threshold, with each label's probability."""

    declared_metrics = MULTILABEL_METRICS

    def column(self) -> str:
        return self.config.target or self.name

    def columns(self) -> list[str]:
        return [self.column()]

    def _cell(self, value: Any) -> list[int | str] | None:
        """The labels of one cell; None when the row has no target."""
        if isinstance(value, (list, tuple, set, np.ndarray)):
            items = list(value)
        elif is_missing(value):
            return [] if self.config.empty == "no_labels" else None
        else:
            items = str(value).split(self.config.separator)
        return [found for found in map(category, items) if found is not None]

    def has_target(self, table: Table) -> np.ndarray:
        return np.array([self._cell(v) is not None for v in table.columns[self.column()]], bool)

    def check(self, table: Table, issues: RowIssues, state: State | None) -> None:
        if state is not None:
            self.encode(table, state, issues)
        elif isinstance(self.config.labels, list):  # the spec names them: others are bad rows
            self.encode(table, {"labels": self.config.labels}, issues)

    def fit(self, table: Table) -> State:
        return {"labels": self._names(table)}

    def fixed_options(self, table: Table) -> dict[str, Any]:
        """The label names of the whole table, so a fold whose rows lack one keeps its output."""
        return {} if isinstance(self.config.labels, list) else {"labels": self._names(table)}

    def _names(self, table: Table) -> list[int | str]:
        found = fit_vocabulary(label for value in table.columns[self.column()]
                               for label in self._cell(value) or ())
        if self.config.labels == "auto" and not found:
            raise DataError(f"{table.source}: target column {self.column()!r} of {self.where}"
                            " holds no labels in the training rows")
        return vocabulary_of(table, self.column(), self.config.labels, option="labels",
                             singular="label", where=self.where, found=found)

    def complete(self, state: State) -> dict[str, Any]:
        return {"labels": len(state["labels"])} if self.config.labels == "auto" else {}

    def check_state(self, state: State) -> None:
        from ._columns import check_fitted, output_count

        check_fitted(state, "labels", "labels", count=output_count(self.config.labels))

    def encode(self, table: Table, state: State, issues: RowIssues) -> tuple[torch.Tensor, torch.Tensor]:
        index = lookup(state["labels"])
        values = table.columns[self.column()]
        target = np.zeros((len(values), len(index)), dtype=np.float32)
        present = np.zeros(len(values), dtype=bool)
        for position, value in enumerate(values):
            labels = self._cell(value)
            if labels is None:
                continue
            unknown = [label for label in labels if key(label) not in index]
            if unknown:
                issues.bad_row(position, self.column(), f"label {unknown[0]!r} is not one the"
                               f" model was trained on ({listing(state['labels'])})")
                continue
            target[position, [index[key(label)] for label in labels]] = 1.0
            present[position] = True
        return torch.from_numpy(target), torch.from_numpy(present)

    def decode(self, output: torch.Tensor, state: State) -> dict[str, list[Any]]:
        names = state["labels"]
        probabilities = output.float().sigmoid()
        chosen = probabilities >= self.config.threshold
        columns: dict[str, list[Any]] = {self.name: [
            self.config.separator.join(str(n) for n, on in zip(names, row) if on)
            for row in chosen.tolist()]}
        for i, name in enumerate(names):
            columns[f"{self.name}_prob_{name}"] = [round(p, 6) for p in probabilities[:, i].tolist()]
        return columns

    def row_scores(self, output: torch.Tensor, state: State,
                   predicted: list[Any] | None = None) -> tuple[list[Any], np.ndarray]:
        """The predicted labels (joined by the separator) and the mean probability of those
        labels (of every label above the threshold; the top label's where none is)."""
        probabilities = output.float().sigmoid().numpy()
        if predicted is None:
            predicted = self.decode(output, state)[self.name]
        index = lookup(state["labels"])
        scores = np.empty(len(predicted))
        for row, names in enumerate(predicted):
            found = [category(n) for n in str(names).split(self.config.separator)]
            chosen = [index[key(c)] for c in found if c is not None and key(c) in index]
            scores[row] = probabilities[row, chosen].mean() if chosen else probabilities[row].max()
        return predicted, scores

    def metrics(self, output: torch.Tensor, target: torch.Tensor, state: State) -> dict[str, float]:
        return multilabel_metrics(output.float().sigmoid().numpy(), target.numpy(),
                                  self.config.threshold)

    def details(self, output: torch.Tensor, target: torch.Tensor, state: State) -> dict[str, Any]:
        predicted = (output.float().sigmoid() >= self.config.threshold).numpy()
        truth = target.numpy() >= 0.5
        per_label = {}
        for i, name in enumerate(state["labels"]):
            hits = int((predicted[:, i] & truth[:, i]).sum())
            said, support = int(predicted[:, i].sum()), int(truth[:, i].sum())
            per_label[str(name)] = {
                "precision": hits / said if said else None,
                "recall": hits / support if support else None,
                "support": support, "predicted": said}
        return {"labels": per_label}

    def render_details(self, details: Mapping[str, Any]) -> str:
        rows = details["labels"]
        width = max(len(n) for n in [*rows, "label"])
        lines = ["label".ljust(width) + "  precision  recall  support  predicted"]
        for name, row in rows.items():
            cells = ["—" if row[k] is None else f"{row[k]:.3f}" for k in ("precision", "recall")]
            lines.append(f"{name.ljust(width)}  {cells[0]:>9}  {cells[1]:>6}  {row['support']:>7}"
                         f"  {row['predicted']:>9}")
        return "\n".join(lines)



@hookimpl
def polymodal_components():
    return [MultilabelHead]

"""The ``classification`` head: one class out of ``classes``, trained with cross-entropy."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field, field_validator, model_validator
from torch import nn

from polymodal.plugin import (
    ConfigError,
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
    did_you_mean,
    hookimpl,
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
from ._metrics import CLASSIFICATION_METRICS, classification_metrics, confusion_matrix

#: The plugin interface this module is written for.
POLYMODAL_PLUGIN_API = 2


class ClassificationHead(Head):
    """Single-label classification: logits ``[B, classes]``, cross-entropy loss, softmax predictions.

    The loss takes optional per-class weights and label smoothing; targets are class indices.
    Predictions are the most probable class and every class's probability.
    """

    class Config(HeadConfig):
        type: Literal["classification"] = "classification"
        classes: int | Literal["auto"] | list[int | str] = Field(
            "auto", description="Number of classes (at least 2), `auto` to learn the classes"
            " from the training table's target column, or the class names in the order of the"
            " outputs (`[benign, malignant]`), which may include a class the training rows lack.",
            # Bounds are checked by _check_classes (for a message at this option's place);
            # the schema states them for editors.
            json_schema_extra={"anyOf": [{"type": "integer", "minimum": 2, "maximum": 1_000_000},
                                         {"const": "auto", "type": "string"},
                                         {"type": "array", "minItems": 2, "maxItems": 1_000_000,
                                          "items": {"anyOf": [{"type": "string"}, {"type": "integer"}]}}]})
        dropout: float = Field(0.0, description="Dropout before the output layer.", ge=0.0, lt=1.0)
        class_weights: dict[str, float] | list[float] | None = Field(
            None, description="Loss weight of classes, for imbalanced data (the loss of"
            " training and of validation, and so early stopping on `loss`): by class name"
            " (`{malignant: 4.0}`; classes not named weigh 1), or a list with one weight per"
            " class in the order of `classes` (needs a number of classes). Training turns names"
            " into the list, in the order the classes were learned, and saves that.")
        label_smoothing: float = Field(0.0, description="Label smoothing of the loss.",
                                       ge=0.0, lt=1.0)

        @field_validator("classes")
        @classmethod
        def _check_classes(cls, classes: int | Literal["auto"] | list[int | str]
                           ) -> int | Literal["auto"] | list[int | str]:
            if isinstance(classes, list):
                if len(classes) > 1_000_000:
                    raise ValueError("Input should have at most 1000000 class names")
                return output_names(classes, option="classes", singular="class", least=2)
            if classes != "auto" and not 2 <= classes <= 1_000_000:
                bound = "greater than or equal to 2" if classes < 2 else "at most 1000000"
                raise ValueError(f"Input should be {bound} (or auto)")
            return classes

        @model_validator(mode="after")
        def _check_weights(self):
            weights = self.class_weights
            if weights is None:
                return self
            values = weights.values() if isinstance(weights, dict) else weights
            if any(not w >= 0 for w in values):
                raise ConfigError("weights must be >= 0", option="class_weights")
            if isinstance(weights, list) and self.classes == "auto":
                raise ConfigError("a list of weights needs a number of classes; with classes:"
                                  " auto, give weights by class name ({name: weight})",
                                  option="class_weights")
            if isinstance(weights, list) and len(weights) != self.count():
                raise ConfigError(f"{len(weights)} weights for {self.count()} classes",
                                  option="class_weights")
            return self

        def count(self) -> int | None:
            """How many classes (outputs); None while they are to be learned (auto)."""
            return output_count(self.classes)

        def describe(self) -> str:
            return f"classification, {self.count() or 'auto'} classes"

        def diagram_settings(self) -> list[str]:
            # describe() shows the classes; edges show the inputs; the target column is data.
            return changed_options(self, skip=("inputs", "target", "classes"))

        def codec(self, name: str, where: str) -> ClassificationCodec:
            return ClassificationCodec(self, name, where)

    config: Config

    example_options = {"classes": 2}
    exportable = True

    def __init__(self, config: Config, takes: Vector):
        super().__init__(config, takes)
        if config.classes == "auto":
            raise PolymodalError("classes: auto is learned from data: train the model on a"
                                 " table (polymodal train), or give the number of classes")
        self.dropout = nn.Dropout(config.dropout) if config.dropout else nn.Identity()
        self.linear = nn.Linear(takes.dim, config.count() or 2)
        if isinstance(config.class_weights, dict):
            raise PolymodalError("class_weights by class name are put in class order when the"
                                 " model is trained on a table (polymodal train); give a list"
                                 " with one weight per class to build it without data")
        if config.class_weights is not None:
            self.register_buffer("class_weights", torch.tensor(config.class_weights),
                                 persistent=False)
        else:
            self.class_weights = None

    def forward(self, fused: torch.Tensor) -> torch.Tensor:
        return self.linear(self.dropout(fused))

    def loss(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        weights = None if self.class_weights is None else self.class_weights.to(output.dtype)
        return F.cross_entropy(output, target.long().view(-1), weight=weights,
                               label_smoothing=self.config.label_smoothing)

    def predict(self, output: torch.Tensor) -> dict[str, torch.Tensor]:
        probabilities = output.float().softmax(dim=-1)
        return {"class": probabilities.argmax(dim=-1), "probabilities": probabilities}


# -- reading tables ----------------------------------------------------------------------------


class ClassificationCodec(TargetCodec[ClassificationHead.Config]):
    """Reads the target column: class names as found (strings or integers), learned on the
    training rows; predictions are written back as class names with each class's probability."""

    declared_metrics = CLASSIFICATION_METRICS

    def column(self) -> str:
        return self.config.target or self.name

    def columns(self) -> list[str]:
        return [self.column()]

    def holds_classes(self) -> bool:
        return True

    def fixed_options(self, table: Table) -> dict[str, Any]:
        """The class names of the whole table, so a fold whose rows lack one keeps its output."""
        if isinstance(self.config.classes, list):
            return {}
        return {"classes": self._names(table)}

    def check(self, table: Table, issues: RowIssues, state: State | None) -> None:
        names: list[int | str]
        if state is not None:
            names = state["classes"]
        elif isinstance(self.config.classes, list):  # the spec names them: others are bad rows
            self._note_lookalike_classes(table, issues)
            names = self.config.classes
        else:
            self._note_lookalike_classes(table, issues)
            return
        index = lookup(names)
        whose = "the model was trained on" if state is not None else f"{self.where}.classes names"
        for position, value in enumerate(table.columns[self.column()]):
            found = category(value)
            if found is not None and key(found) not in index:
                issues.bad_row(position, self.column(), f"class {found!r} is not one {whose}"
                               f" ({listing(names)})")

    def _note_lookalike_classes(self, table: Table, issues: RowIssues) -> None:
        """Classes that differ only in case (``Malignant`` beside ``malignant``) are kept apart,
        as the table says, but are most often a typo: the rarer spelling's rows are noted."""
        counts = Counter(c for c in map(category, table.columns[self.column()]) if isinstance(c, str))
        spellings: dict[str, list[str]] = {}
        for name in sorted(counts, key=lambda n: -counts[n]):
            spellings.setdefault(name.casefold(), []).append(name)
        for common, *rare in spellings.values():
            for name in rare:
                issues.note(f"row(s) of column {self.column()!r} hold class {name!r}, kept apart from"
                            f" {common!r}, which differs only in case", counts[name])

    def fit(self, table: Table) -> State:
        return {"classes": self._names(table)}

    def _names(self, table: Table) -> list[int | str]:
        """The class names: the spec's, or learned from ``table``'s target column."""
        found = fit_vocabulary(table.columns[self.column()])
        if self.config.classes == "auto" and len(found) < 2:
            raise DataError(f"{table.source}: target column {self.column()!r} of {self.where}"
                            f" holds {len(found)} class(es) ({listing(found)}); a"
                            " classification needs at least 2")
        return vocabulary_of(table, self.column(), self.config.classes, option="classes",
                             singular="class", where=self.where, found=found)

    def complete(self, state: State) -> dict[str, Any]:
        changes: dict[str, Any] = {}
        if self.config.classes == "auto":
            changes["classes"] = len(state["classes"])
        if isinstance(self.config.class_weights, dict):
            changes["class_weights"] = self._weights_in_order(self.config.class_weights,
                                                              state["classes"])
        return changes

    def _weights_in_order(self, by_name: dict[str, float], classes: list[int | str]) -> list[float]:
        """One weight per class, in the order of ``classes`` (1 for a class not named)."""
        names = [key(c) for c in classes]
        unknown = [n for n in by_name if n not in names]
        if unknown:
            raise ConfigError(f"no class {unknown[0]!r} in the training rows' column"
                              f" {self.column()!r}.{did_you_mean(unknown[0], names)} Its classes:"
                              f" {listing(names)}", option="class_weights")
        return [float(by_name.get(n, 1.0)) for n in names]

    def encode(self, table: Table, state: State, issues: RowIssues) -> tuple[torch.Tensor, torch.Tensor]:
        index = lookup(state["classes"])
        values = table.columns[self.column()]
        target = np.zeros(len(values), dtype=np.int64)
        present = np.zeros(len(values), dtype=bool)
        for position, value in enumerate(values):
            found = category(value)
            if found is None:
                continue
            cls = index.get(key(found))
            if cls is None:
                issues.bad_row(position, self.column(), f"class {found!r} is not one the model"
                               f" was trained on ({listing(state['classes'])})")
                continue
            target[position], present[position] = cls, True
        return torch.from_numpy(target), torch.from_numpy(present)

    def check_state(self, state: State) -> None:
        from ._columns import check_fitted, output_count

        check_fitted(state, "classes", "classes", count=output_count(self.config.classes))

    def decode(self, output: torch.Tensor, state: State) -> dict[str, list[Any]]:
        names = state["classes"]
        probabilities = output.float().softmax(dim=-1)
        columns: dict[str, list[Any]] = {
            self.name: [names[i] for i in probabilities.argmax(dim=-1).tolist()]}
        for i, name in enumerate(names):
            columns[f"{self.name}_prob_{name}"] = [round(p, 6) for p in probabilities[:, i].tolist()]
        return columns

    def row_scores(self, output: torch.Tensor, state: State,
                   predicted: list[Any] | None = None) -> tuple[list[Any], np.ndarray]:
        """The predicted class and its probability (with ``predicted``: those classes')."""
        names = state["classes"]
        probabilities = output.float().softmax(dim=-1).numpy()
        if predicted is None:
            chosen = probabilities.argmax(axis=-1)
            predicted = [names[i] for i in chosen]
        else:
            index = lookup(names)
            chosen = np.array([index[key(c)] for c in predicted])
        return predicted, probabilities[np.arange(len(chosen)), chosen]

    def metrics(self, output: torch.Tensor, target: torch.Tensor, state: State) -> dict[str, float]:
        return classification_metrics(output.float().softmax(-1).numpy(), target.numpy())

    def details(self, output: torch.Tensor, target: torch.Tensor, state: State) -> dict[str, Any]:
        matrix = confusion_matrix(target.numpy(), output.argmax(-1).numpy(), len(state["classes"]))
        return {"classes": state["classes"], "confusion_matrix": matrix.tolist()}

    def render_details(self, details: Mapping[str, Any]) -> str:
        names = [str(c) for c in details["classes"]]
        width = max(len(n) for n in names + ["true \\ predicted"])
        cells = max([len(n) for n in names] + [len(str(v)) for r in details["confusion_matrix"] for v in r])
        lines = ["true \\ predicted".ljust(width) + "  " + "  ".join(n.rjust(cells) for n in names)]
        for name, row in zip(names, details["confusion_matrix"]):
            lines.append(name.ljust(width) + "  " + "  ".join(str(v).rjust(cells) for v in row))
        return "\n".join(lines)



@hookimpl
def polymodal_components():
    return [ClassificationHead]

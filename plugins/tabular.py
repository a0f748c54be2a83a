"""The ``tabular`` adapter: categorical embeddings and numerical columns of a table."""

from __future__ import annotations

import math
from collections import Counter
from typing import Literal

import numpy as np
import torch
from pydantic import Field, PositiveInt, field_validator, model_validator
from torch import nn

import polymodal
from polymodal.components import AdapterConfig, ModalityAdapter
from polymodal.data.binding import Codec, RowIssues
from polymodal.data.encoding import category, encode_categories, fit_vocabulary, lookup, numeric_column
from polymodal.data.table import Table
from polymodal.errors import DataError, PolymodalError
from polymodal.signals import FeatureMap, Signal, Tokens, Vector

#: Extra embedding rows after a column's ``cardinality`` known categories.
UNKNOWN_OFFSET = 0  # row ``cardinality``: ids outside 0..cardinality-1 (unseen categories)
MISSING_OFFSET = 1  # row ``cardinality + 1``: id -1 (missing value)
PROVISIONAL_CARDINALITY = 16


def default_embedding_dim(cardinality: int) -> int:
    """Embedding width for a column of ``cardinality`` categories: ``min(50, round(1.6 n^0.56))``.

    The rule grows sub-linearly with the number of categories and caps at 50, the common
    heuristic for entity embeddings of tabular data.
    """
    return max(1, min(50, round(1.6 * cardinality**0.56)))


class TabularAdapter(ModalityAdapter):
    """Table rows: categorical columns as embeddings, numerical columns standardised.

    Takes a dict of column name -> 1-D tensor. A categorical column holds integer ids
    ``0..cardinality-1``; any other id (an unseen category) uses a reserved *unknown* row and
    ``-1`` (missing) a reserved *missing* row, so an embedding table has ``cardinality + 2``
    rows and inference never fails on new values. Numerical columns are standardised with
    stored mean/std buffers; NaN is imputed with the mean and, with ``missing_indicators``,
    flagged by an extra 0/1 feature per column. ``output: vector`` concatenates everything into
    one vector; ``output: tokens`` gives one token of ``token_dim`` per column (for attention
    fusion); ``output: map`` gives the vector as a ``[B, D, 1, 1]`` feature map (to feed an image
    backbone).
    """

    class Config(AdapterConfig):
        type: Literal["tabular"] = "tabular"
        categorical: dict[str, PositiveInt | Literal["auto"]] = Field(
            default_factory=dict, description="Categorical columns: name -> cardinality"
            " (number of known categories), or `auto` (or a plain list of names) to learn it"
            " from the training table.")
        numerical: list[str] = Field(
            default_factory=list, description="Numerical columns, in order.")
        embedding_dims: dict[str, PositiveInt] = Field(
            default_factory=dict, description="Per-column embedding width overriding the default"
            " rule min(50, round(1.6 * cardinality^0.56)).")
        missing_indicators: bool = Field(
            True, description="Add a 0/1 missing flag per numerical column (NaN is imputed"
            " with the column mean either way).")
        output: Literal["vector", "tokens", "map"] = Field(
            "vector", description="`vector`: one concatenated vector; `tokens`: one token per"
            " column; `map`: the vector as a 1x1 feature map.")
        token_dim: PositiveInt = Field(
            32, description="Token width for `output: tokens`.", le=8192)

        @field_validator("categorical", mode="before")
        @classmethod
        def _names_are_auto(cls, value):
            if isinstance(value, (list, tuple)):
                return {name: "auto" for name in value}
            return value

        @model_validator(mode="after")
        def _check_columns(self):
            if not self.categorical and not self.numerical:
                raise ValueError("a tabular input needs at least one categorical or numerical column")
            overlap = set(self.categorical) & set(self.numerical)
            if overlap:
                raise ValueError(f"columns both categorical and numerical: {sorted(overlap)}")
            if len(set(self.numerical)) != len(self.numerical):
                raise ValueError("numerical lists a column twice")
            unknown = set(self.embedding_dims) - set(self.categorical)
            if unknown:
                raise ValueError(
                    f"embedding_dims names columns that are not categorical: {sorted(unknown)}")
            return self

        def describe(self) -> str:
            return f"tabular, {len(self.categorical)} categorical + {len(self.numerical)} numerical"

        def embedding_dim(self, column: str) -> int:
            card = self.categorical[column]
            # A learned cardinality is unknown until training fills it in; connections are
            # checked with a provisional width meanwhile.
            return self.embedding_dims.get(column) or default_embedding_dim(
                card if card != "auto" else PROVISIONAL_CARDINALITY)

        def vector_width(self) -> int:
            numeric = len(self.numerical) * (2 if self.missing_indicators else 1)
            return sum(self.embedding_dim(c) for c in self.categorical) + numeric

        def codec(self) -> TabularCodec:
            return TabularCodec(self)

        def gives(self) -> Signal:
            if self.output == "tokens":
                return Tokens(self.token_dim)
            if self.output == "map":
                return FeatureMap(self.vector_width())
            return Vector(self.vector_width())

    def __init__(self, config: Config, takes: None = None):
        super().__init__(config, takes)
        learned = [c for c, card in config.categorical.items() if card == "auto"]
        if learned:
            raise PolymodalError(
                f"the cardinality of {', '.join(map(repr, learned))} is learned from data:"
                " train the model on a table (polymodal train), or give a number")
        tokens = config.output == "tokens"
        self.embeddings = nn.ModuleDict({
            column: nn.Embedding(card + 2, config.token_dim if tokens else config.embedding_dim(column))
            for column, card in config.categorical.items()
        })
        n_num = len(config.numerical)
        self.register_buffer("num_mean", torch.zeros(n_num))
        self.register_buffer("num_std", torch.ones(n_num))
        if tokens and n_num:
            # Each numerical feature becomes a token: value * weight + bias, per column.
            features = 2 if config.missing_indicators else 1
            self.num_weight = nn.Parameter(torch.randn(n_num, features, config.token_dim) / math.sqrt(features))
            self.num_bias = nn.Parameter(torch.zeros(n_num, config.token_dim))

    def _categorical(self, column: str, values: torch.Tensor) -> torch.Tensor:
        card = self.config.categorical[column]
        if values.is_floating_point():
            missing = torch.isnan(values)
            values = torch.where(missing, torch.full_like(values, -1), values).long()
        ids = values.long()
        ids = torch.where((ids >= 0) & (ids < card), ids, torch.full_like(ids, card + UNKNOWN_OFFSET))
        ids = torch.where(values == -1, torch.full_like(ids, card + MISSING_OFFSET), ids)
        return self.embeddings[column](ids)

    def _numerical(self, columns: dict[str, torch.Tensor]) -> torch.Tensor:
        raw = torch.stack([columns[c].float() for c in self.config.numerical], dim=1)
        missing = torch.isnan(raw)
        standard = (raw - self.num_mean) / self.num_std
        standard = torch.where(missing, torch.zeros_like(standard), standard)
        if self.config.missing_indicators:
            return torch.stack([standard, missing.to(standard.dtype)], dim=2)  # [B, n, 2]
        return standard.unsqueeze(2)  # [B, n, 1]

    def forward(self, columns: dict[str, torch.Tensor]) -> torch.Tensor:
        if not isinstance(columns, dict):
            raise DataError("tabular input: expected a dict of column name -> tensor,"
                            f" got {type(columns).__name__}")
        wanted = list(self.config.categorical) + self.config.numerical
        absent = [c for c in wanted if c not in columns]
        if absent:
            raise DataError(f"tabular input: missing column(s) {', '.join(absent)}")
        batch = {columns[c].reshape(-1).shape[0] for c in wanted}
        if len(batch) != 1:
            raise DataError(f"tabular input: columns have different lengths {sorted(batch)}")
        cats = [self._categorical(c, columns[c].reshape(-1)) for c in self.config.categorical]
        nums = self._numerical({c: columns[c].reshape(-1) for c in self.config.numerical}) \
            if self.config.numerical else None
        if self.config.output == "tokens":
            parts = [e.unsqueeze(1) for e in cats]
            if nums is not None:
                parts.append(torch.einsum("bnf,nfd->bnd", nums, self.num_weight) + self.num_bias)
            return torch.cat(parts, dim=1)
        parts = list(cats)
        if nums is not None:
            parts.append(nums.flatten(1))
        vector = torch.cat(parts, dim=1)
        if self.config.output == "map":
            return vector[:, :, None, None]
        return vector


# -- reading tables ----------------------------------------------------------------------------


class TabularCodec(Codec):
    """Reads the adapter's columns: learns each categorical column's vocabulary (categories
    as found, strings or integers) and each numerical column's mean and standard deviation
    (ignoring missing values) on the training rows."""

    config: TabularAdapter.Config

    def columns(self) -> list[str]:
        return [*self.config.categorical, *self.config.numerical]

    def check(self, table: Table, issues: RowIssues, state: dict | None) -> None:
        for column in self.config.numerical:
            numeric_column(table, column, issues)

    def fit(self, table: Table) -> dict:
        vocabularies = {}
        for column, card in self.config.categorical.items():
            values = table.columns[column]
            found = fit_vocabulary(values)
            if card != "auto":
                if all(isinstance(v, int) and 0 <= v < card for v in found):
                    found = list(range(card))  # already ids: keep them as they are
                elif len(found) > card:
                    # The most frequent categories get the rows; the rest share `unknown`.
                    counts = Counter(category(v) for v in values)
                    counts.pop(None, None)
                    kept = {v for v, _ in counts.most_common(card)}
                    found = [v for v in found if v in kept]
            vocabularies[column] = found
        means, stds = [], []
        for column in self.config.numerical:
            values = numeric_column(table, column, None)
            finite = values[np.isfinite(values)]
            mean = float(finite.mean()) if finite.size else 0.0
            std = float(finite.std()) if finite.size > 1 else 1.0
            means.append(mean)
            stds.append(std if std > 1e-12 else 1.0)
        return {"vocabularies": vocabularies, "mean": means, "std": stds}

    def complete(self, state: dict) -> dict:
        learned = {c: max(1, len(state["vocabularies"][c]))
                   for c, card in self.config.categorical.items() if card == "auto"}
        return {"categorical": {**self.config.categorical, **learned}} if learned else {}

    def prepare(self, module: TabularAdapter, state: dict) -> None:
        with torch.no_grad():
            module.num_mean.copy_(torch.tensor(state["mean"], dtype=torch.float32))
            module.num_std.copy_(torch.tensor(state["std"], dtype=torch.float32))

    def encode(self, table: Table, state: dict, issues: RowIssues) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        for column in self.config.categorical:
            vocabulary = state["vocabularies"][column]
            ids, unseen = encode_categories(table.columns[column], lookup(vocabulary),
                                            unknown=len(vocabulary), missing=-1)
            issues.note(f"unseen categories in column {column!r}", unseen)
            out[column] = torch.from_numpy(ids)
        for column in self.config.numerical:
            out[column] = torch.from_numpy(numeric_column(table, column, issues).astype(np.float32))
        return out


@polymodal.hookimpl
def polymodal_components():
    return [TabularAdapter]

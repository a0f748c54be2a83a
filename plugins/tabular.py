"""The ``tabular`` adapter: categorical embeddings and numerical columns of a table."""

from __future__ import annotations

import math
import statistics
from collections import Counter
from typing import Any, Literal

import numpy as np
import torch
from pydantic import Field, PositiveInt, field_validator, model_validator
from torch import nn

from polymodal.plugin import (
    AdapterConfig,
    Codec,
    ConfigError,
    DataError,
    FeatureMap,
    ModalityAdapter,
    PolymodalError,
    RowIssues,
    Signal,
    State,
    Table,
    Tokens,
    Vector,
    changed_options,
    hookimpl,
    is_missing,
)

from ._columns import (
    MAX_MAGNITUDE,
    category,
    encode_categories,
    fit_vocabulary,
    key as category_key,
    lookup,
    numeric_column,
)

#: The plugin interface this module is written for.
POLYMODAL_PLUGIN_API = 2

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
    stored mean/std buffers. NaN follows ``nan``: ``impute`` (the default) replaces it with the
    column mean and, with ``missing_indicators``, flags it (an extra 0/1 feature, or a learned
    vector added to the column's embedding); ``error`` refuses it, naming column and row.

    ``numerical_embedding`` turns each numerical value into a vector (Gorishniy et al., "On
    Embeddings for Numerical Features in Tabular Deep Learning"): ``linear`` (value times a
    learned vector), ``piecewise_linear`` (the value's position within ``bins`` bins whose
    edges are the ``bin_edges`` buffer: trained on a table, the quantiles of each standardised
    column's training values, so every bin holds as many rows; otherwise standard-normal
    quantiles; then a linear layer) or ``periodic`` (sines and cosines of learned
    frequencies, then a linear layer and ReLU).

    ``output: vector`` concatenates everything into one vector; ``output: tokens`` gives one
    token of ``token_dim`` per column (for attention fusion; numerical columns use
    ``linear`` unless an embedding is chosen); ``output: map`` gives the vector as a
    ``[B, D, 1, 1]`` feature map, to feed an image backbone. ``project_to`` adds a learned linear
    projection of the vector (or map) to that width, e.g. the 3 channels of an image backbone.
    """

    class Config(AdapterConfig):
        type: Literal["tabular"] = "tabular"
        categorical: dict[str, PositiveInt | Literal["auto"]] = Field(
            default_factory=dict, description="Categorical columns: name -> cardinality"
            " (number of known categories), or `auto` (or a plain list of names) to learn it"
            " from the training table.",
            # Both forms, as the schema and the reference state them (see _names_are_auto).
            json_schema_extra={"anyOf": [
                {"type": "object", "additionalProperties": {"anyOf": [
                    {"type": "integer", "exclusiveMinimum": 0}, {"const": "auto"}]}},
                {"type": "array", "items": {"type": "string"}}]})
        numerical: list[str] = Field(
            default_factory=list, description="Numerical columns, in order.")
        embedding_dims: dict[str, PositiveInt] = Field(
            default_factory=dict, description="Per-column embedding width overriding the default"
            " rule min(50, round(1.6 * cardinality^0.56)).")
        nan: Literal["impute", "error"] = Field(
            "impute", description="NaN in a numerical column: `impute` with the column mean"
            " (flagged by missing_indicators), or `error`.")
        missing_indicators: bool = Field(
            True, description="With nan: impute, flag imputed values (a 0/1 feature per column,"
            " or a learned vector added to the column's embedding).")
        numerical_embedding: Literal["linear", "piecewise_linear", "periodic"] | None = Field(
            None, description="Embed each numerical value as a vector (see above); none: the"
            " standardised value itself (`linear` for tokens).")
        numerical_dim: PositiveInt = Field(
            16, description="Width of each numerical embedding in vector/map output (tokens use"
            " token_dim).", le=4096)
        bins: int = Field(8, description="Bins of the piecewise_linear embedding.", ge=2, le=1024)
        frequencies: PositiveInt = Field(
            16, description="Learned frequencies of the periodic embedding.", le=1024)
        frequency_scale: float = Field(
            0.1, description="Standard deviation of the periodic embedding's initial"
            " frequencies.", gt=0)
        project_to: PositiveInt | None = Field(
            None, description="Learned linear projection of the vector (or map) to this width.",
            le=65536)
        output: Literal["vector", "tokens", "map"] = Field(
            "vector", description="`vector`: one concatenated vector; `tokens`: one token per"
            " column; `map`: the vector as a 1x1 feature map.")
        token_dim: PositiveInt = Field(
            32, description="Token width for `output: tokens`.", le=8192)

        # The list form is part of the option: the spec's JSON Schema accepts it too.
        @field_validator("categorical", mode="before",
                         json_schema_input_type=dict[str, PositiveInt | Literal["auto"]] | list[str])
        @classmethod
        def _names_are_auto(cls, value):
            if isinstance(value, (list, tuple)):
                if not all(isinstance(name, str) for name in value):
                    raise ValueError("a list of categorical columns holds their names (text)")
                return dict.fromkeys(value, "auto")
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
            if self.output == "tokens" and self.project_to is not None:
                raise ValueError("project_to applies to output vector or map; tokens have"
                                 " token_dim")
            return self

        def describe(self) -> str:
            return f"tabular, {len(self.categorical)} categorical + {len(self.numerical)} numerical"

        def diagram_settings(self) -> list[str]:
            # describe() counts the columns.
            return changed_options(self, skip=("categorical", "numerical"))

        def embedding_dim(self, column: str) -> int:
            card = self.categorical[column]
            # A learned cardinality is unknown until training fills it in; connections are
            # checked with a provisional width meanwhile.
            return self.embedding_dims.get(column) or default_embedding_dim(
                card if card != "auto" else PROVISIONAL_CARDINALITY)

        def flags(self) -> bool:
            """Whether imputed values are flagged."""
            return self.nan == "impute" and self.missing_indicators

        def vector_width(self) -> int:
            if self.project_to is not None:
                return self.project_to
            if self.numerical_embedding is None:
                numeric = len(self.numerical) * (2 if self.flags() else 1)
            else:
                numeric = len(self.numerical) * self.numerical_dim
            return sum(self.embedding_dim(c) for c in self.categorical) + numeric

        def codec(self, name: str, where: str) -> TabularCodec:
            return TabularCodec(self, name, where)

        def gives(self) -> Signal:
            if self.output == "tokens":
                return Tokens(self.token_dim)
            if self.output == "map":
                return FeatureMap(self.vector_width())
            return Vector(self.vector_width())

        def fix_for(self, wanted: Signal) -> str | None:
            if isinstance(wanted, FeatureMap):
                return (f"set project_to: {wanted.channels}" if self.output == "map"
                        else f"set output: map and project_to: {wanted.channels}")
            if isinstance(wanted, Vector) and self.output != "tokens":
                return f"set project_to: {wanted.dim}"
            return None

    config: Config
    num_mean: torch.Tensor  # buffers
    num_std: torch.Tensor

    example_options = {"categorical": {"make": 40}, "numerical": ["age"]}
    exportable = True

    def __init__(self, config: Config, takes: None = None):
        super().__init__(config, takes)
        learned = [c for c, card in config.categorical.items() if card == "auto"]
        if learned:
            raise PolymodalError(
                f"the cardinality of {', '.join(map(repr, learned))} is learned from data:"
                " train the model on a table (polymodal train), or give a number")
        #: Each categorical column's cardinality (none is left to learn: refused above).
        self._cardinalities = {c: card for c, card in config.categorical.items() if card != "auto"}
        tokens = config.output == "tokens"
        self.embeddings = nn.ModuleDict({
            column: nn.Embedding(card + 2, config.token_dim if tokens else config.embedding_dim(column))
            for column, card in self._cardinalities.items()
        })
        n_num = len(config.numerical)
        self.register_buffer("num_mean", torch.zeros(n_num))
        self.register_buffer("num_std", torch.ones(n_num))
        kind = config.numerical_embedding or ("linear" if tokens else None)
        self.numerical_embedding: NumericalEmbedding | None = None
        if kind is not None and n_num:
            self.numerical_embedding = NumericalEmbedding(
                kind, n_num, config.token_dim if tokens else config.numerical_dim,
                bins=config.bins, frequencies=config.frequencies, scale=config.frequency_scale,
                flags=config.flags())
        self.projection: nn.Module = nn.Identity()
        if config.project_to is not None:
            unprojected = config.model_copy(update={"project_to": None}).vector_width()
            self.projection = nn.Linear(unprojected, config.project_to)

    def _categorical(self, column: str, values: torch.Tensor) -> torch.Tensor:
        card = self._cardinalities[column]
        if values.is_floating_point():
            missing = torch.isnan(values)
            values = torch.where(missing, torch.full_like(values, -1), values).long()
        ids = values.long()
        ids = torch.where((ids >= 0) & (ids < card), ids, torch.full_like(ids, card + UNKNOWN_OFFSET))
        ids = torch.where(values == -1, torch.full_like(ids, card + MISSING_OFFSET), ids)
        return self.embeddings[column](ids)

    def _numerical(self, columns: dict[str, torch.Tensor]) -> torch.Tensor:
        """``[B, n, width]``: each numerical column's features."""
        raw = torch.stack([columns[c].float() for c in self.config.numerical], dim=1)
        missing = torch.isnan(raw)
        # An exported graph cannot raise on values: the codec reports NaN under this policy as
        # a bad row before the model runs, and an export's metadata states the policy.
        if self.config.nan == "error" and not torch.compiler.is_exporting() and bool(missing.any()):
            row, col = (int(i) for i in missing.nonzero()[0])
            raise DataError(f"tabular input: NaN in numerical column {self.config.numerical[col]!r}"
                            f" (row {row}); the adapter's nan policy is error")
        standard = (raw - self.num_mean) / self.num_std
        # Imputing the mean is 0 once standardised.
        standard = torch.where(missing, torch.zeros_like(standard), standard)
        if self.numerical_embedding is not None:
            return self.numerical_embedding(standard, missing)
        if self.config.flags():
            return torch.stack([standard, missing.to(standard.dtype)], dim=2)  # [B, n, 2]
        return standard.unsqueeze(2)  # [B, n, 1]

    def example_input(self, batch_size: int = 2) -> dict[str, torch.Tensor]:
        columns = {c: torch.randint(0, card, (batch_size,))
                   for c, card in self._cardinalities.items()}
        columns.update({c: torch.randn(batch_size) for c in self.config.numerical})
        return columns

    def forward(self, columns: dict[str, torch.Tensor]) -> torch.Tensor:
        if not isinstance(columns, dict):
            raise DataError("tabular input: expected a dict of column name -> tensor,"
                            f" got {type(columns).__name__}")
        wanted = list(self.config.categorical) + self.config.numerical
        absent = [c for c in wanted if c not in columns]
        if absent:
            raise DataError(f"tabular input: missing column(s) {', '.join(absent)}")
        # A list, not a set: while exporting, lengths are symbols, which compare but do not hash.
        lengths = [columns[c].reshape(-1).shape[0] for c in wanted]
        if any(length != lengths[0] for length in lengths):
            raise DataError("tabular input: columns have different lengths"
                            f" {sorted(set(map(int, lengths)))}")
        cats = [self._categorical(c, columns[c].reshape(-1)) for c in self.config.categorical]
        nums = self._numerical({c: columns[c].reshape(-1) for c in self.config.numerical}) \
            if self.config.numerical else None
        if self.config.output == "tokens":
            parts = [e.unsqueeze(1) for e in cats]
            if nums is not None:
                parts.append(nums)
            return torch.cat(parts, dim=1)
        parts = list(cats)
        if nums is not None:
            parts.append(nums.flatten(1))
        vector = self.projection(torch.cat(parts, dim=1))
        if self.config.output == "map":
            return vector[:, :, None, None]
        return vector


class NumericalEmbedding(nn.Module):
    """Per-column embeddings of standardised numerical values: ``[B, n]`` -> ``[B, n, dim]``.

    Every column has its own weights (a batched linear map ``[n, in, dim]``). With ``flags``, a
    learned per-column vector is added where a value was imputed.
    """

    bin_edges: torch.Tensor  # a buffer, with piecewise_linear

    def __init__(self, kind: str, columns: int, dim: int, *, bins: int, frequencies: int,
                 scale: float, flags: bool):
        super().__init__()
        self.kind = kind
        if kind == "linear":
            features = 1
        elif kind == "piecewise_linear":
            # Equal-mass bins for a normally distributed standardised column, until training
            # on a table puts in the column's own quantiles.
            edges = _normal_edges(bins)
            self.register_buffer("bin_edges", torch.tensor([edges] * columns))  # [n, bins + 1]
            features = bins
        else:
            self.frequencies = nn.Parameter(torch.randn(columns, frequencies) * scale)
            features = 2 * frequencies
        self.weight = nn.Parameter(torch.randn(columns, features, dim) / math.sqrt(features))
        self.bias = nn.Parameter(torch.zeros(columns, dim))
        self.missing = nn.Parameter(torch.zeros(columns, dim)) if flags else None

    def encode(self, values: torch.Tensor) -> torch.Tensor:
        """``[B, n]`` -> ``[B, n, features]`` before the per-column linear map."""
        if self.kind == "linear":
            return values.unsqueeze(2)
        if self.kind == "piecewise_linear":
            left, right = self.bin_edges[:, :-1], self.bin_edges[:, 1:]  # [n, bins]
            position = (values.unsqueeze(2) - left) / (right - left)
            # Inner bins saturate at 0 and 1; the first and last stay open so that values
            # beyond the outer edges still differ.
            low = torch.zeros_like(position)
            low[..., 0] = -torch.inf
            high = torch.ones_like(position)
            high[..., -1] = torch.inf
            return torch.minimum(torch.maximum(position, low), high)
        angles = 2 * math.pi * values.unsqueeze(2) * self.frequencies
        return torch.cat([torch.sin(angles), torch.cos(angles)], dim=2)

    def forward(self, values: torch.Tensor, missing: torch.Tensor) -> torch.Tensor:
        out = torch.einsum("bnf,nfd->bnd", self.encode(values), self.weight) + self.bias
        if self.kind == "periodic":
            out = torch.relu(out)
        if self.missing is not None:
            out = out + missing.unsqueeze(2).to(out.dtype) * self.missing
        return out


# -- reading tables ----------------------------------------------------------------------------


class TabularCodec(Codec[TabularAdapter.Config]):
    """Reads the adapter's columns: learns each categorical column's vocabulary (categories
    as found, strings or integers) and each numerical column's mean and standard deviation
    (ignoring missing values) on the training rows."""

    def columns(self) -> list[str]:
        return [*self.config.categorical, *self.config.numerical]

    def keep_encoded(self) -> bool:
        return True  # codes and scaled numbers depend on the cells and the state alone

    def absent(self, table: Table) -> np.ndarray:
        """A row whose every column is empty holds none of this input."""
        empty = np.ones(len(table), dtype=bool)
        for column in self.columns():
            values = table.columns[column]
            if values.dtype.kind == "f":
                empty &= np.isnan(values)
            elif values.dtype.kind in "biu":
                return np.zeros(len(table), dtype=bool)  # integers are never missing
            else:
                empty &= np.fromiter((is_missing(v) for v in values), bool, len(values))
        return empty

    def parts(self) -> list[str]:
        """Each column is explained on its own."""
        return self.columns()

    def permute_part(self, value: dict[str, torch.Tensor], part: str,
                     order: torch.Tensor) -> dict[str, torch.Tensor]:
        return {**value, part: value[part][order]}

    def check(self, table: Table, issues: RowIssues, state: State | None) -> None:
        for column in self.config.numerical:
            values = numeric_column(table, column, issues)
            if self.config.nan == "error":
                # Reported here, as a bad row, rather than by the module mid-batch (an exported
                # model cannot refuse values at all).
                for position in np.flatnonzero(np.isnan(values)):
                    issues.bad_row(int(position), column, "the value is missing (empty or NaN),"
                                   f" and {self.where}.nan is error")

    def fit(self, table: Table) -> State:
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
        means, stds, edges = [], [], []
        for column in self.config.numerical:
            values = numeric_column(table, column, None)
            # Infinite and huge values are bad rows, left out before fitting where checked.
            finite = values[np.isfinite(values) & (np.abs(values) <= MAX_MAGNITUDE)]
            mean = float(finite.mean()) if finite.size else 0.0
            std = float(finite.std()) if finite.size > 1 else 1.0
            std = std if std > 1e-12 else 1.0
            means.append(mean)
            stds.append(std)
            edges.append(_quantile_edges((finite - mean) / std, self.config.bins))
        state = {"vocabularies": vocabularies, "mean": means, "std": stds}
        if self.config.numerical_embedding == "piecewise_linear":
            state["bin_edges"] = edges
        return state

    def complete(self, state: State) -> dict[str, Any]:
        learned = {c: max(1, len(state["vocabularies"][c]))
                   for c, card in self.config.categorical.items() if card == "auto"}
        return {"categorical": {**self.config.categorical, **learned}} if learned else {}

    def check_state(self, state: State) -> None:
        from ._columns import check_fitted, check_statistic

        for column, card in self.config.categorical.items():
            vocabulary = check_fitted(state.get("vocabularies", {}), column,
                                      f"categorical.{column}",
                                      at_most=None if card == "auto" else card)
            # A fitted vocabulary holds each category once: one that holds a category twice
            # was edited, and its ids are not the ones the model was trained with.
            seen: set[str] = set()
            for entry in vocabulary:
                if category_key(entry) in seen:
                    raise ConfigError(f"the fitted {column} hold the category {entry!r} twice",
                                      option=f"categorical.{column}")
                seen.add(category_key(entry))
        for key in ("mean", "std"):
            values = check_fitted(state, key, "numerical", count=len(self.config.numerical),
                                  numbers=True)
            for column, value in zip(self.config.numerical, values):
                check_statistic(value, f"the fitted {key} of {column!r}", "numerical",
                                scale=key == "std")

    def prepare(self, module: TabularAdapter, state: State) -> None:
        with torch.no_grad():
            module.num_mean.copy_(torch.tensor(state["mean"], dtype=torch.float32))
            module.num_std.copy_(torch.tensor(state["std"], dtype=torch.float32))
            if "bin_edges" in state and module.numerical_embedding is not None:
                module.numerical_embedding.bin_edges.copy_(
                    torch.tensor(state["bin_edges"], dtype=torch.float32))

    def encode(self, table: Table, state: State, issues: RowIssues) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        for column in self.config.categorical:
            vocabulary = state["vocabularies"][column]
            # -2 is outside 0..cardinality-1, so the adapter gives it its *unknown* row even
            # when the vocabulary is shorter than a cardinality the spec fixed.
            ids, unseen = encode_categories(table.columns[column], lookup(vocabulary),
                                            unknown=-2, missing=-1)
            issues.note(f"value(s) in column {column!r} not seen in training: used the reserved"
                        " unknown category", len(unseen), examples=unseen)
            out[column] = torch.from_numpy(ids)
        for column in self.config.numerical:
            out[column] = torch.from_numpy(numeric_column(table, column, issues).astype(np.float32))
        return out


def _normal_edges(bins: int) -> list[float]:
    """``bins + 1`` standard-normal quantiles (the outer ones at 0.1% and 99.9%)."""
    normal = statistics.NormalDist()
    return [normal.inv_cdf(min(max(i / bins, 0.001), 0.999)) for i in range(bins + 1)]


def _quantile_edges(values: np.ndarray, bins: int) -> list[float]:
    """``bins + 1`` edges at the quantiles of ``values``, spread apart where values repeat (a
    bin needs a width); standard-normal quantiles when there are no values."""
    if values.size == 0:
        return _normal_edges(bins)
    edges = np.quantile(values, np.linspace(0.0, 1.0, bins + 1))
    for i in range(1, len(edges)):
        edges[i] = max(edges[i], edges[i - 1] + 1e-3)
    return [float(e) for e in edges]


@hookimpl
def polymodal_components():
    return [TabularAdapter]

"""The ``text`` adapter: a text column, tokenized, as token ids and an attention mask; and its
codec, which reads the column with a ``tokenizers`` tokenizer kept in the model file."""

from __future__ import annotations

import functools
from typing import Any, Literal

import numpy as np
import torch
from pydantic import Field

from polymodal.plugin import (
    AdapterConfig,
    Codec,
    ConfigError,
    DataError,
    ModalityAdapter,
    PolymodalError,
    RowIssues,
    Sequence,
    Signal,
    SpecError,
    State,
    Table,
    is_missing,
)

from . import _local

#: Characters of a cell tokenized, per token of ``max_length``: a token covers at least one
#: character, so cutting there bounds the work on a hostile cell without changing the tokens
#: kept (unless a stretch of whitespace is longer than all of it).
CHARACTERS_PER_TOKEN = 64
#: Largest vocabulary: ids travel as float32 between the adapter and the backbone, exact below 2**24.
MAX_VOCABULARY = 2**24
#: Padding tokens looked for when the spec names none.
PAD_TOKENS = ("[PAD]", "<pad>", "<|pad|>", "<|padding|>")
#: Token ids of an example batch when no tokenizer is known (every vocabulary has these).
EXAMPLE_IDS = 5


class TextAdapter(ModalityAdapter):
    """Free text (a claim's description, a report, a note), tokenized: token ids and a mask.

    Trained on a table, the input's ``column`` holds one text a row. It is tokenized with the
    ``tokenizer`` (a local folder, or a Hugging Face hub name already in the local cache: never
    downloaded), cut to ``max_length`` tokens (``truncation``) and padded. The tokenizer itself
    is stored in the model file, so a model file predicts from raw text with nothing else
    present, and so does its ONNX export (tokenized with the ``tokenizers`` library alone).

    It gives the token ids and the attention mask as a 2-channel sequence ``[B, 2, L]``, for the
    ``transformers`` backbone of this package to read. An empty cell (or ``NA``, ...) is an
    absent input: where a fusion takes the text with other inputs the row is used without it;
    elsewhere it is a bad row.
    """

    class Config(AdapterConfig):
        type: Literal["text"] = "text"
        tokenizer: str = Field(
            description="The tokenizer: a local folder (tokenizer.json, or the files of a"
            " transformers tokenizer), or a hub name already in the local Hugging Face cache"
            " (bert-base-uncased). Read when training; the model file keeps it.", min_length=1)
        max_length: int = Field(128, description="Most tokens a text is given, special tokens"
                                " included.", ge=2, le=8192)
        truncation: bool = Field(True, description="Cut a longer text to max_length tokens;"
                                 " false: such a row is a bad row.")
        padding: Literal["longest", "max_length"] = Field(
            "longest", description="Pad each batch to its longest text, or every text to"
            " max_length (an export always takes max_length).")
        pad_token: str | None = Field(
            None, description="The tokenizer's padding token; default: [PAD], <pad>, ... as"
                              " the vocabulary has.", min_length=1)
        column: str | None = Field(
            None, description="Training on a table: the column with each row's text;"
            " default: the input's name.", min_length=1)

        def describe(self) -> str:
            return f"text, up to {self.max_length} tokens"

        def diagram_settings(self) -> list[str]:
            return [f"tokenizer {self.tokenizer}"] + (["no truncation"] if not self.truncation else [])

        def gives(self) -> Signal:
            return Sequence(2)

        def codec(self, name: str, where: str) -> TextCodec:
            return TextCodec(self, name, where)

    config: Config

    example_options = {"tokenizer": "bert-base-uncased", "max_length": 16}
    exportable = True

    def example_input(self, batch_size: int = 2) -> dict[str, torch.Tensor]:
        length = self.config.max_length
        ids = torch.randint(0, EXAMPLE_IDS, (batch_size, length))
        mask = torch.ones(batch_size, length, dtype=torch.long)
        mask[1:, length // 2:] = 0  # a shorter second text
        return {"input_ids": ids, "attention_mask": mask}

    def export_example(self, batch_size: int = 2, state: Any = None) -> dict[str, torch.Tensor]:
        vocabulary = int(state["vocab_size"]) if state else EXAMPLE_IDS
        length = self.config.max_length
        return {"input_ids": torch.randint(0, vocabulary, (batch_size, length)),
                "attention_mask": torch.ones(batch_size, length, dtype=torch.long)}

    def export_form(self, value: Any) -> Any:
        """Token ids and mask padded to ``max_length``: an export takes that length."""
        if not isinstance(value, dict):
            return value
        missing = self.config.max_length - value["input_ids"].shape[1]
        if missing <= 0:
            return value
        return {key: torch.nn.functional.pad(tensor.long(), (0, missing)) for key, tensor in value.items()}

    def forward(self, value: dict[str, torch.Tensor]) -> torch.Tensor:
        if not isinstance(value, dict) or set(value) != {"input_ids", "attention_mask"}:
            got = sorted(value) if isinstance(value, dict) else type(value).__name__
            raise DataError(f"text input: expected a dict of input_ids and attention_mask, got {got}")
        ids, mask = value["input_ids"], value["attention_mask"]
        if ids.dim() != 2 or ids.shape != mask.shape or ids.shape[1] > self.config.max_length:
            raise DataError(f"text input: expected input_ids and attention_mask of one shape"
                            f" [batch, L <= {self.config.max_length}], got {list(ids.shape)} and"
                            f" {list(mask.shape)}")
        return torch.stack([ids.float(), mask.float()], dim=1)


# -- reading tables ----------------------------------------------------------------------------


@functools.lru_cache(maxsize=8)
def _tokenizer(text: str, truncate_at: int | None) -> Any:
    """The tokenizer of ``text`` (its JSON) with its own padding and truncation off (the codec
    pads), truncating at ``truncate_at`` tokens. Cached: a state's text is one string object,
    whose hash Python computes once."""
    tokenizer = _local.parse_tokenizer(text, "the tokenizer")
    tokenizer.no_padding()
    tokenizer.no_truncation()
    if truncate_at is not None:
        tokenizer.enable_truncation(truncate_at)
    return tokenizer


class TextCodec(Codec[TextAdapter.Config]):
    """Tokenizes the ``column`` of each row into ``input_ids`` and ``attention_mask``. Fitting
    reads the tokenizer from its folder (or the local hub cache) into the state, which the model
    file keeps: from then on the tokenizer comes from the state only."""

    def __init__(self, config: TextAdapter.Config, name: str, where: str):
        super().__init__(config, name, where)
        self._read: State | None = None

    def column(self) -> str:
        return self.config.column or self.name

    def columns(self) -> list[str]:
        return [self.column()]

    def absent(self, table: Table) -> np.ndarray:
        """An empty cell (or ``NA``, ``nan``, ...) holds no text: the input is absent there."""
        return np.array([is_missing(v) for v in table.columns[self.column()]], dtype=bool)

    def fit(self, table: Table) -> State:
        return self._from_folder()

    def check(self, table: Table, issues: RowIssues, state: State | None) -> None:
        self.encode(table, state or self._from_folder(), issues)

    def check_state(self, state: State) -> None:
        try:
            tokenizer = _local.parse_tokenizer(state["tokenizer"], "its stored tokenizer")
            vocabulary, pad = int(state["vocab_size"]), int(state["pad_id"])
        except (KeyError, TypeError, ValueError, PolymodalError) as exc:
            raise ConfigError(f"the model file's tokenizer is unreadable ({exc})",
                              option="tokenizer") from None
        if tokenizer.get_vocab_size() != vocabulary or not 0 <= pad < vocabulary:
            raise ConfigError("the model file's tokenizer disagrees with its stated vocabulary",
                              option="tokenizer")

    def encode(self, table: Table, state: State, issues: RowIssues) -> dict[str, torch.Tensor]:
        config = self.config
        texts = [self._text(table, position, value, issues)
                 for position, value in enumerate(table.columns[self.column()])]
        text = state["tokenizer"]
        tokenizer = _tokenizer(text, config.max_length if config.truncation else None)
        encoded = [e.ids for e in tokenizer.encode_batch(texts)] if texts else []
        for position, ids in enumerate(encoded):
            if len(ids) > config.max_length:
                issues.bad_row(position, self.column(), f"the text has {len(ids)} tokens, more than"
                               f" {self.where}.max_length ({config.max_length}); raise it, or set"
                               f" {self.where}.truncation: true to cut such texts")
        longest = max((min(len(ids), config.max_length) for ids in encoded), default=1)
        length = config.max_length if config.padding == "max_length" else max(longest, 1)
        ids_out = np.full((len(encoded), length), int(state["pad_id"]), dtype=np.int64)
        mask = np.zeros((len(encoded), length), dtype=np.int64)
        for row, ids in enumerate(encoded):
            kept = ids[:length]
            ids_out[row, :len(kept)] = kept
            mask[row, :len(kept)] = 1
        return {"input_ids": torch.from_numpy(ids_out), "attention_mask": torch.from_numpy(mask)}

    def _text(self, table: Table, position: int, value: Any, issues: RowIssues) -> str:
        if isinstance(value, (np.ndarray, list, dict)):
            issues.bad_row(position, self.column(), f"holds a {type(value).__name__}, not text")
            return ""
        if is_missing(value):
            # Only where the model takes no absent text: the row cannot be used.
            issues.bad_row(position, self.column(), "no text (empty)")
            return ""
        return str(value)[:self.config.max_length * CHARACTERS_PER_TOKEN]

    def _from_folder(self) -> State:
        """The tokenizer named by the spec, read once, as the state the model file keeps."""
        if self._read is None:
            try:
                text = _local.tokenizer_json(self.config.tokenizer)
                self._read = _state(text, self.config.pad_token)
            except PolymodalError as exc:
                option = exc.option if isinstance(exc, ConfigError) and exc.option else "tokenizer"
                raise SpecError([(f"{self.where}.{option}", str(exc))]) from None
        return self._read


def _state(text: str, pad_token: str | None) -> State:
    tokenizer = _local.parse_tokenizer(text, "the tokenizer")
    vocabulary = int(tokenizer.get_vocab_size())
    if vocabulary > MAX_VOCABULARY:
        raise PolymodalError(f"the tokenizer has {vocabulary} tokens; at most {MAX_VOCABULARY}")
    candidates = (pad_token,) if pad_token else PAD_TOKENS
    pad = next((tokenizer.token_to_id(t) for t in candidates if tokenizer.token_to_id(t) is not None),
               None)
    if pad is None:
        named = f"has no token {pad_token!r}" if pad_token else \
            f"has none of the padding tokens {', '.join(PAD_TOKENS)}; set pad_token"
        raise ConfigError(f"the tokenizer {named}", option="pad_token" if pad_token else None)
    return {"tokenizer": text, "vocab_size": vocabulary, "pad_id": int(pad)}

"""The ``transformers`` backbone: an encoder of the transformers library over the text adapter's
token ids, giving its tokens or one pooled vector."""

from __future__ import annotations

import functools
import json
from typing import Any, Literal

import torch
from pydantic import Field, model_validator
from torch import nn

from polymodal.plugin import (
    Backbone,
    BackboneConfig,
    ConnectionMismatch,
    DataError,
    Freeze,
    PolymodalError,
    Sequence,
    Signal,
    Tokens,
    Vector,
)

from . import _local


@functools.lru_cache(maxsize=16)
def _hf_config(text: str) -> Any:
    """The transformers config of a stored config dict (as JSON text, so that it caches)."""
    from transformers import AutoConfig

    data = dict(json.loads(text))
    model_type = data.pop("model_type", None)
    if not isinstance(model_type, str):
        raise PolymodalError("names no model_type (bert, roberta, distilbert, deberta-v2, ...)")
    try:
        return AutoConfig.for_model(model_type, **data)
    except Exception as exc:  # noqa: BLE001 - transformers raises ValueError, TypeError, ...
        raise PolymodalError(f"transformers cannot make a {model_type!r} config of it"
                             f" ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})"
                             ) from None


def _hidden(config: dict[str, Any]) -> tuple[int, int]:
    """The encoder's width and layer count."""
    hf = _hf_config(json.dumps(config, sort_keys=True))
    return int(hf.hidden_size), int(hf.num_hidden_layers)


def _layers(model: nn.Module, count: int) -> str:
    """The name of the encoder's list of layers (``encoder.layer`` of BERT,
    ``transformer.layer`` of DistilBERT...): the module list with one entry a hidden layer."""
    found = [name for name, m in model.named_modules()
             if isinstance(m, nn.ModuleList) and len(m) == count]
    if not found:
        raise PolymodalError(f"{type(model).__name__} has no list of its {count} layers; it is not"
                             " an encoder this backbone knows")
    return found[0]


def _positions(model: nn.Module, hf: Any) -> int:
    """The most tokens the encoder takes: its position embeddings, less those a RoBERTa-like
    model reserves before the first position (its padding index and below)."""
    limit = int(getattr(hf, "max_position_embeddings", 0) or 2**31)
    table = getattr(getattr(model, "embeddings", None), "position_embeddings", None)
    reserved = getattr(table, "padding_idx", None)
    return limit - (reserved + 1) if isinstance(reserved, int) else limit


class TransformersBackbone(Backbone):
    """A transformers encoder (BERT-, RoBERTa-, DistilBERT-, DeBERTa-like) over the text adapter.

    ``model`` is a local folder a model was saved to, or a hub name already in the local
    Hugging Face cache (nothing is downloaded). Its ``config.json`` is kept in the spec (option
    ``config``), so a model file rebuilds the encoder with nothing else present; a spec may also
    give ``config`` alone, with ``pretrained: false``, for an encoder trained from scratch.
    ``pretrained: true`` loads the model's weights; ``false`` initialises it randomly.

    ``output: tokens`` gives the last hidden states ``[B, L, hidden]`` (padding positions set
    to zero), for the attention fusion; ``vector`` one vector a text: the first token's state
    (``pooling: cls``) or the mean over its tokens (``mean``). Stages are the embeddings and
    then each layer, so ``freeze: {train_last: N}`` trains the last N layers.
    """

    class Config(BackboneConfig):
        type: Literal["transformers"] = "transformers"
        model: str | None = Field(
            None, description="The encoder: a local folder (config.json and weights), or a hub"
            " name already in the local Hugging Face cache (bert-base-uncased).", min_length=1)
        config: dict[str, Any] | None = Field(
            None, description="The transformers config (config.json's contents, model_type"
            " included); filled from model when not given, and kept in the model file.")
        pretrained: bool = Field(True, description="Load model's weights; false: initialise"
                                 " randomly from the config.")
        output: Literal["tokens", "vector"] = Field(
            "tokens", description="Every token's hidden state, or one pooled vector a text.")
        pooling: Literal["cls", "mean"] = Field(
            "cls", description="output: vector: the first ([CLS]) token's state, or the mean"
            " of the text's tokens.")
        freeze: Freeze = Field("none", description="`none`; `all` (nothing trains); or"
                               " `{train_last: N}` (only the last N layers train).")

        @model_validator(mode="before")
        @classmethod
        def _read_config(cls, data: Any) -> Any:
            # The model's config.json is read once, when the spec is first read, and kept.
            if isinstance(data, dict) and data.get("config") is None and isinstance(
                    data.get("model"), str):
                try:
                    return {**data, "config": _local.model_config(data["model"])}
                except PolymodalError as exc:
                    raise ValueError(str(exc)) from None
            return data

        @model_validator(mode="after")
        def _check(self):
            if self.config is None:
                raise ValueError("give model (a folder, or a hub name in the local cache), or"
                                 " config with pretrained: false")
            if self.pretrained and self.model is None:
                raise ValueError("pretrained: true loads the weights of model; name it, or set"
                                 " pretrained: false")
            try:
                _, layers = _hidden(self.config)
            except PolymodalError as exc:
                raise ValueError(f"config: {exc}") from None
            last = getattr(self.freeze, "train_last", None)
            if last is not None and last > 1 + layers:
                raise ValueError(f"freeze.train_last: {last}, but the encoder has {1 + layers}"
                                 f" stages (its embeddings and {layers} layers)")
            return self

        def describe(self) -> str:
            named = self.model or str((self.config or {}).get("model_type"))
            return f"transformers {named}"

        def diagram_settings(self) -> list[str]:
            shown = [f"output: {self.output}"] + ([f"pooling: {self.pooling}"]
                                                  if self.output == "vector" else [])
            shown += [] if self.pretrained else ["random init"]
            return shown + ([f"frozen: {self.freeze}"] if self.freeze != "none" else [])

        def _width(self) -> tuple[int, int]:
            assert self.config is not None, "the validator requires a config"
            return _hidden(self.config)

        def gives(self, takes: Signal) -> Signal:
            if not (isinstance(takes, Sequence) and takes.channels == 2):
                raise ConnectionMismatch(
                    f"takes the token ids and attention mask of the text adapter ([B, 2, L]),"
                    f" not {takes.describe()}", wanted=Sequence(2))
            hidden, _ = self._width()
            return Tokens(hidden) if self.output == "tokens" else Vector(hidden)

        def stages(self, takes: Signal) -> tuple[Signal, ...]:
            hidden, layers = self._width()
            return (Tokens(hidden),) * (1 + layers)

    config: Config

    example_options = {"config": {"model_type": "bert", "vocab_size": 64, "hidden_size": 16,
                                  "num_hidden_layers": 2, "num_attention_heads": 2,
                                  "intermediate_size": 32, "max_position_embeddings": 128},
                       "pretrained": False}
    exportable = True
    discrete_input = True  # token ids: no gradient flows back to them
    example_takes = Sequence(2)  # what the text adapter gives

    def __init__(self, config: Config, takes: Signal):
        super().__init__(config, takes)
        from transformers import AutoModel

        assert config.config is not None, "the validator requires a config"
        hf = _hf_config(json.dumps(config.config, sort_keys=True))
        self.vocabulary = int(hf.vocab_size)
        self.model = AutoModel.from_config(hf)
        if getattr(self.model, "pooler", None) is not None:
            self.model.pooler = None  # unused: this backbone pools itself
        # By name: a second reference to the layers would save each weight twice.
        self.layer_list = _layers(self.model, int(hf.num_hidden_layers))
        self.positions = _positions(self.model, hf)
        self.freeze(config.freeze)

    def stage_modules(self) -> list[nn.Module]:
        embeddings = getattr(self.model, "embeddings", None) or self.model.get_input_embeddings()
        return [embeddings, *self.model.get_submodule(self.layer_list)]

    def load_pretrained(self) -> None:
        if not self.config.pretrained or self.config.model is None:
            return
        from transformers import AutoModel

        where = _local.folder(self.config.model, "model")
        try:
            source = AutoModel.from_pretrained(str(where), local_files_only=True)
        except Exception as exc:  # noqa: BLE001 - transformers raises many kinds for a bad folder
            raise PolymodalError(f"model {self.config.model!r}: transformers cannot load its"
                                 f" weights from {where} ({type(exc).__name__}:"
                                 f" {_local.first_line(exc)})") from None
        state = {k: v for k, v in source.state_dict().items() if not k.startswith("pooler.")}
        missing, unexpected = self.model.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise PolymodalError(f"model {self.config.model!r}: its weights do not fit its config"
                                 f" (missing {missing[:3]}, unexpected {unexpected[:3]})")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[2] > self.positions:
            raise DataError(f"texts of {x.shape[2]} tokens, but the encoder takes at most"
                            f" {self.positions}: lower the text adapter's max_length")
        ids = x[:, 0].round().long().clamp_min(0)
        # Position 0 always attends, so a text with no token (an absent one) stays finite.
        mask = torch.cat([torch.ones_like(x[:, 1, :1]), x[:, 1, 1:]], dim=1) > 0.5
        if not torch.compiler.is_exporting() and ids.numel() and int(ids.max()) >= self.vocabulary:
            raise DataError(f"token id {int(ids.max())} is beyond the encoder's vocabulary of"
                            f" {self.vocabulary}: the text adapter's tokenizer is not this"
                            " model's")
        hidden = self.model(input_ids=ids, attention_mask=mask.long()).last_hidden_state
        weights = mask.unsqueeze(2).to(hidden.dtype)
        hidden = hidden * weights
        if self.config.output == "tokens":
            return hidden
        if self.config.pooling == "cls":
            return hidden[:, 0]
        return hidden.sum(dim=1) / weights.sum(dim=1).clamp_min(1.0)

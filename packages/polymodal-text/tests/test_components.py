"""The text adapter and the transformers backbone: conformance, export, tokenizing a column,
and finding a model or tokenizer offline (a folder, the local hub cache, neither)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from polymodal.plugin import (
    ConfigError,
    PolymodalError,
    RowIssues,
    Sequence,
    SpecError,
    Table,
    check_component,
    check_export,
)
from polymodal_text.adapter import TextAdapter
from polymodal_text.backbone import TransformersBackbone

from .conftest import HUB_NAME

TINY = TransformersBackbone.example_options


# -- conformance ---------------------------------------------------------------------------------


def test_the_text_adapter_conforms_and_exports():
    report = check_component(TextAdapter, bad_options=[
        {"max_length": 1}, {"padding": "none"}, {"tokenizer": ""}, {"pad_token": ""}])
    assert report.output_shape == (2, 2, 16)
    assert set(check_export(TextAdapter)) == {"torch-export", "onnx"}


@pytest.mark.parametrize("options", [
    {},
    {"output": "vector", "pooling": "mean"},
    {"output": "vector", "freeze": {"train_last": 1}},
    {"output": "vector", "freeze": "all"},
], ids=["tokens", "mean-vector", "train-last", "frozen"])
def test_the_transformers_backbone_conforms(options):
    report = check_component(TransformersBackbone, {**TINY, **options},
                             bad_options=[{"pretrained": True}, {"config": {"model_type": "nope"}},
                                          {"output": "map"}, {"freeze": {"train_last": 4}},
                                          {"config": None}])
    assert report.output_shape == ((2, 64, 16) if not options else (2, 16))


def test_the_transformers_backbone_exports():
    found = check_export(TransformersBackbone)
    assert found["onnx"] is not None and found["onnx"] <= 1e-4


def test_the_backbone_takes_only_the_text_adapters_ids():
    config = TransformersBackbone.Config.model_validate({**TINY, "type": "transformers"})
    with pytest.raises(PolymodalError, match=r"token ids and attention mask of the text adapter"):
        config.gives(Sequence(3))


def test_train_last_trains_only_the_last_layers():
    config = TransformersBackbone.Config.model_validate(
        {**TINY, "type": "transformers", "freeze": {"train_last": 1}})
    backbone = TransformersBackbone(config, Sequence(2))
    trained = {n.split(".")[3] for n, p in backbone.named_parameters()
               if p.requires_grad and n.startswith("model.encoder.layer.")}
    assert trained == {"1"}
    assert not any(p.requires_grad for p in backbone.model.embeddings.parameters())


def test_texts_longer_than_the_encoder_takes_are_named():
    config = TransformersBackbone.Config.model_validate({**TINY, "type": "transformers"})
    backbone = TransformersBackbone(config, Sequence(2))
    with pytest.raises(PolymodalError, match=r"texts of 200 tokens, but the encoder takes at most"
                                             r" 128: lower the text adapter's max_length"):
        backbone(torch.zeros(1, 2, 200))


# -- the codec -----------------------------------------------------------------------------------


def _codec(tokenizer: Path, **options):
    config = TextAdapter.Config.model_validate({"type": "text", "tokenizer": str(tokenizer),
                                                **options})
    return config.codec("note", "inputs.note.adapter")


def _table(texts):
    column = np.empty(len(texts), dtype=object)
    column[:] = texts
    return Table.from_columns({"note": column}, source="notes.csv")


def test_texts_are_tokenized_truncated_and_padded(tokenizer_dir):
    codec = _codec(tokenizer_dir, max_length=8)
    table = _table(["water damage in the basement", "invoice requested. " * 20])
    state = codec.fit(table)
    encoded = codec.encode(table, state, RowIssues(table))
    ids, mask = encoded["input_ids"], encoded["attention_mask"]
    assert ids.shape == mask.shape == (2, 8) and ids.dtype == torch.int64
    assert mask[1].tolist() == [1] * 8 and 0 < int(mask[0].sum()) < 8
    assert (ids[0][mask[0] == 0] == state["pad_id"]).all()
    short = codec.encode(_table(["invoice requested"]), state, RowIssues(table))
    assert short["input_ids"].shape[1] < 8  # padding: longest
    fixed = _codec(tokenizer_dir, max_length=8, padding="max_length")
    assert fixed.encode(_table(["invoice"]), state, RowIssues(table))["input_ids"].shape == (1, 8)
    assert codec.encode(_table([]), state, RowIssues(table))["input_ids"].shape[0] == 0


def test_a_text_too_long_without_truncation_is_a_bad_row(tokenizer_dir):
    codec = _codec(tokenizer_dir, max_length=8, truncation=False)
    table = _table(["invoice requested", "invoice requested. " * 20])
    issues = RowIssues(table)
    codec.check(table, issues, None)
    assert list(issues.bad) == [1]
    assert "more than inputs.note.adapter.max_length (8)" in issues.bad[1]


def test_empty_and_na_texts_are_absent_and_other_values_are_text(tokenizer_dir):
    codec = _codec(tokenizer_dir)
    table = _table(["", "NA", None, float("nan"), "  ", "a note", 42])
    assert codec.absent(table).tolist() == [True, True, True, True, True, False, False]
    issues = RowIssues(table)
    codec.check(table, issues, codec.fit(table))
    assert sorted(issues.bad) == [0, 1, 2, 3, 4]


def test_a_cell_holding_an_array_is_a_bad_row(tokenizer_dir):
    codec = _codec(tokenizer_dir)
    table = _table(["a note", np.zeros(3)])
    issues = RowIssues(table)
    codec.check(table, issues, None)
    assert issues.bad == {1: "notes.csv row 2, column 'note': holds a ndarray, not text"}


def test_the_state_holds_the_tokenizer_and_a_broken_one_is_refused(tokenizer_dir):
    codec = _codec(tokenizer_dir)
    state = codec.fit(_table(["x"]))
    assert json.loads(state["tokenizer"])["model"]["type"] == "WordPiece"
    codec.check_state(state)
    for broken in ({**state, "tokenizer": "{}"}, {**state, "pad_id": -1}, {"vocab_size": 3}):
        with pytest.raises(ConfigError, match="tokenizer"):
            codec.check_state(broken)


def test_a_tokenizer_without_padding_token_asks_for_pad_token(tmp_path, make_notes):
    folder = make_notes.train_tokenizer(["a b c"], tmp_path / "tok", vocab_size=50)
    text = (folder / "tokenizer.json").read_text()
    (folder / "tokenizer.json").write_text(text.replace("[PAD]", "[NOPE]"))
    with pytest.raises(SpecError, match="none of the padding tokens.*set pad_token"):
        _codec(folder).fit(_table(["x"]))
    assert _codec(folder, pad_token="[NOPE]").fit(_table(["x"]))["pad_id"] == 0
    with pytest.raises(SpecError) as named:  # a pad_token the tokenizer lacks: at that option
        _codec(folder, pad_token="[PAD]").fit(_table(["x"]))
    assert named.value.problems[0][0].endswith(".pad_token")


def test_a_folder_of_an_older_tokenizer_is_converted(tmp_path, model_dir):
    """A BERT folder with vocab.txt but no tokenizer.json, read through transformers."""
    from tokenizers import Tokenizer

    folder = tmp_path / "old"
    folder.mkdir()
    vocab = Tokenizer.from_file(str(model_dir / "tokenizer.json")).get_vocab()
    (folder / "vocab.txt").write_text("\n".join(sorted(vocab, key=vocab.get)) + "\n")
    (folder / "config.json").write_text((model_dir / "config.json").read_text())
    codec = _codec(folder, max_length=16)
    state = codec.fit(_table(["x"]))
    ids = codec.encode(_table(["water damage"]), state, RowIssues(_table(["x"])))["input_ids"][0]
    assert ids[0] == vocab["[CLS]"] and vocab["[SEP]"] in ids.tolist()


# -- finding models and tokenizers offline --------------------------------------------------------


def test_a_hub_name_is_read_from_the_local_cache(in_cache, model_dir):
    config = TransformersBackbone.Config.model_validate({"type": "transformers", "model": HUB_NAME})
    assert config.config is not None and config.config["hidden_size"] == 32
    backbone = TransformersBackbone(config, Sequence(2))
    backbone.load_pretrained()
    from transformers import BertModel

    saved = BertModel.from_pretrained(str(model_dir)).embeddings.word_embeddings.weight
    assert torch.equal(backbone.model.embeddings.word_embeddings.weight, saved)
    state = _codec(Path(HUB_NAME)).fit(_table(["x"]))
    assert state["tokenizer"] == (model_dir / "tokenizer.json").read_text()


def test_pretrained_false_initialises_randomly(model_dir):
    config = TransformersBackbone.Config.model_validate(
        {"type": "transformers", "model": str(model_dir), "pretrained": False})
    backbone = TransformersBackbone(config, Sequence(2))
    backbone.load_pretrained()
    from transformers import BertModel

    saved = BertModel.from_pretrained(str(model_dir)).embeddings.word_embeddings.weight
    assert not torch.equal(backbone.model.embeddings.word_embeddings.weight, saved)


def test_a_name_in_no_cache_says_how_to_fetch_it(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty"))
    with pytest.raises(ValueError, match=r"'acme/absent' is neither a folder \(none at /.*acme/absent\)"
                       r" nor in the local Hugging Face cache .*nothing is downloaded.*"
                       r"`hf download acme/absent`"):
        TransformersBackbone.Config.model_validate({"type": "transformers", "model": "acme/absent"})
    with pytest.raises(SpecError, match=r"inputs.note.adapter.tokenizer: tokenizer 'acme/absent'"
                       r" is neither a folder \(none at .*\) nor in the local Hugging Face cache"):
        _codec(Path("acme/absent")).fit(_table(["x"]))


def test_validate_names_a_missing_model_at_its_spec_path_and_exits_1(tmp_path, monkeypatch,
                                                                     tokenizer_dir):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty"))
    spec = tmp_path / "spec.yaml"
    spec.write_text(
        "name: notes\n"
        "inputs:\n"
        "  note:\n"
        f"    adapter: {{type: text, tokenizer: {tokenizer_dir}}}\n"
        "    backbone: {type: transformers, model: acme/absent, output: vector}\n"
        "heads:\n"
        "  decision: {type: classification, classes: 2}\n")
    run = subprocess.run([sys.executable, "-m", "polymodal", "validate", str(spec)],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 1, run.stderr
    assert "inputs.note.backbone" in run.stderr and "hf download acme/absent" in run.stderr
    assert "Traceback" not in run.stderr


def test_a_model_folder_without_a_config_is_named(tmp_path):
    (tmp_path / "empty-model").mkdir()
    with pytest.raises(ValueError, match="has no config.json"):
        TransformersBackbone.Config.model_validate(
            {"type": "transformers", "model": str(tmp_path / "empty-model")})

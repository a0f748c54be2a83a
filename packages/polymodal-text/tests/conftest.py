"""Fixtures: a tiny BERT encoder and a WordPiece tokenizer made here, saved to folders and read
through the plugin's real loading path; a fake local Hugging Face cache; the notes demo table.
Nothing is downloaded. Each is made once per test session (transformers costs seconds)."""

from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path
from types import ModuleType

import pytest

# A hub download attempt fails at once instead of reaching for the network.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
#: The fake cache's commit: any 40 hex digits.
COMMIT = "0123456789abcdef0123456789abcdef01234567"
HUB_NAME = "acme/tiny-bert"


def _make_notes() -> ModuleType:
    loader = importlib.util.spec_from_file_location("make_notes", EXAMPLES / "make_notes.py")
    assert loader is not None and loader.loader is not None
    module = importlib.util.module_from_spec(loader)
    loader.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def make_notes() -> ModuleType:
    return _make_notes()


@pytest.fixture(scope="session")
def notes_table(tmp_path_factory, make_notes) -> Path:
    """The demo table, 48 rows: photo, record, note and decision."""
    return make_notes.generate(tmp_path_factory.mktemp("notes"), rows=48, seed=1)


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory, make_notes, notes_table) -> Path:
    """A WordPiece tokenizer trained with `tokenizers` on generated notes."""
    folder = tmp_path_factory.mktemp("tokenizer")
    return make_notes.train_tokenizer(make_notes.notes_of(notes_table), folder, vocab_size=200)


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory, tokenizer_dir) -> Path:
    """A tiny BERT encoder (2 layers, hidden 32) saved with `save_pretrained`, with the
    tokenizer beside it as a hub repository holds them."""
    import torch
    from tokenizers import Tokenizer
    from transformers import BertConfig, BertModel

    vocabulary = Tokenizer.from_file(str(tokenizer_dir / "tokenizer.json")).get_vocab_size()
    torch.manual_seed(0)
    config = BertConfig(vocab_size=vocabulary, hidden_size=32, num_hidden_layers=2,
                        num_attention_heads=2, intermediate_size=64, max_position_embeddings=64)
    folder = tmp_path_factory.mktemp("tiny-bert")
    BertModel(config).save_pretrained(folder)
    shutil.copy(tokenizer_dir / "tokenizer.json", folder / "tokenizer.json")
    return folder


@pytest.fixture(scope="session")
def hub_cache(tmp_path_factory, model_dir) -> Path:
    """A local Hugging Face cache holding ``acme/tiny-bert`` as the hub library lays it out."""
    cache = tmp_path_factory.mktemp("hf-cache")
    repo = cache / f"models--{HUB_NAME.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(COMMIT)
    shutil.copytree(model_dir, repo / "snapshots" / COMMIT)
    return cache


@pytest.fixture
def in_cache(monkeypatch, hub_cache) -> Path:
    monkeypatch.setenv("HF_HUB_CACHE", str(hub_cache))
    return hub_cache

"""Finding a model or tokenizer on this machine, never on the network.

A name is a local folder (``models/my-bert``), or a Hugging Face hub name (``bert-base-uncased``,
``org/name``) whose files are already in the local Hugging Face cache. Nothing is downloaded:
a name found neither way is an error saying how to fill the cache on a machine with access.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from polymodal.plugin import PolymodalError

#: Largest tokenizer.json or config.json read (a real tokenizer's is 0.5-20 MiB).
MAX_JSON_BYTES = 64 * 2**20


def hub_cache() -> Path:
    """The local Hugging Face hub cache, as the hub library finds it (read at each call, so the
    environment of the moment counts)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]) / "hub"
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "huggingface" / "hub"


def folder(name: str, what: str) -> Path:
    """The local folder holding ``name``'s files: the folder itself, or its snapshot in the
    local Hugging Face cache. ``what`` names it in messages (``tokenizer``)."""
    path = Path(name).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise PolymodalError(f"{what} {name!r} is a file; give the folder that holds it")
    from huggingface_hub import snapshot_download

    cache = hub_cache()
    try:
        return Path(snapshot_download(name, cache_dir=cache, local_files_only=True))
    except Exception:  # noqa: BLE001 - not cached, or not a valid hub name: the same answer
        raise PolymodalError(
            f"{what} {name!r} is neither a folder (none at {path.absolute()}) nor in the local"
            f" Hugging Face cache ({cache});"
            " nothing is downloaded at run time. On a machine with network access, fetch it"
            f" with `hf download {name}` (or `python -c \"import huggingface_hub;"
            f" huggingface_hub.snapshot_download('{name}')\"`) and copy its cache folder"
            f" (models--{name.replace('/', '--')}) into {cache}, or save it to a folder"
            " (`save_pretrained`) and give that folder's path") from None


def read_json(path: Path, what: str) -> str:
    """The text of a JSON file of at most :data:`MAX_JSON_BYTES`, checked to be JSON."""
    try:
        size = path.stat().st_size
        if size > MAX_JSON_BYTES:
            raise PolymodalError(f"{what} {path} is {size / 2**20:.0f} MiB; at most"
                                 f" {MAX_JSON_BYTES // 2**20} MiB is read")
        text = path.read_text(encoding="utf-8")
        json.loads(text)
    except PolymodalError:
        raise
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise PolymodalError(f"{what} {path} is not readable JSON ({exc})") from None
    return text


def model_config(name: str) -> dict[str, Any]:
    """The ``config.json`` of the model ``name`` (a folder, or a hub name in the local cache)."""
    where = folder(name, "model")
    file = where / "config.json"
    if not file.is_file():
        raise PolymodalError(f"model {name!r}: {where} has no config.json; give the folder a"
                             " transformers model was saved to (`save_pretrained`)")
    data = json.loads(read_json(file, "model config"))
    if not isinstance(data, dict) or not isinstance(data.get("model_type"), str):
        raise PolymodalError(f"model {name!r}: {file} names no model_type; it is not the config"
                             " of a transformers model")
    return data


def tokenizer_json(name: str) -> str:
    """The fast tokenizer of ``name`` (a folder, or a hub name in the local cache) as the JSON
    text the ``tokenizers`` library reads: its ``tokenizer.json``, or, for a folder of an older
    tokenizer (``vocab.txt``, ``merges.txt``...), that tokenizer converted by transformers."""
    where = folder(name, "tokenizer")
    file = where / "tokenizer.json"
    if file.is_file():
        text = read_json(file, "tokenizer")
        _parse(text, str(file))
        return text
    try:
        from transformers import AutoTokenizer

        converted = AutoTokenizer.from_pretrained(str(where), local_files_only=True)
    except Exception as exc:  # noqa: BLE001 - transformers raises many kinds for a bad folder
        raise PolymodalError(f"tokenizer {name!r}: {where} has no tokenizer.json, and"
                             f" transformers cannot read a tokenizer there"
                             f" ({type(exc).__name__}: {first_line(exc)})") from None
    backend = getattr(converted, "backend_tokenizer", None)
    if backend is None:
        raise PolymodalError(f"tokenizer {name!r}: transformers has no fast (tokenizers) version of"
                             f" {type(converted).__name__}; only fast tokenizers are supported")
    return str(backend.to_str())


def parse_tokenizer(text: str, source: str) -> Any:
    """A ``tokenizers.Tokenizer`` from its JSON text; a clear error when it is not one."""
    return _parse(text, source)


def _parse(text: str, source: str) -> Any:
    from tokenizers import Tokenizer

    try:
        return Tokenizer.from_str(text)
    except Exception as exc:  # noqa: BLE001 - the Rust library raises plain Exceptions
        raise PolymodalError(f"{source}: not a tokenizer the tokenizers library reads"
                             f" ({first_line(exc)})") from None


def first_line(exc: BaseException) -> str:
    """The first non-blank line of an exception's message (its type's name when it has none)."""
    lines = [line for line in str(exc).splitlines() if line.strip()]
    return lines[0].strip() if lines else type(exc).__name__

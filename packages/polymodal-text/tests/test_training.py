"""Training on a table with a text column, predicting from the model file and its ONNX export
with nothing else present, every built-in fusion taking the text, absent notes."""

from __future__ import annotations

import copy
import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import polymodal

RECORD = {"type": "tabular", "numerical": ["amount", "age"], "categorical": {"region": "auto"}}


def _spec(tokenizer: Path, model: Path, fusion: dict, *, output: str = "vector",
          inputs: tuple[str, ...] = ("photo", "record", "note"), epochs: int = 2) -> dict:
    every = {
        "photo": {"adapter": {"type": "image", "channels": 3},
                  "backbone": {"type": "timm", "model": "resnet10t"}},
        "record": {"adapter": RECORD},
        "note": {"adapter": {"type": "text", "tokenizer": str(tokenizer), "max_length": 24},
                 "backbone": {"type": "transformers", "model": str(model), "output": output,
                              "pooling": "mean"}},
    }
    spec = {"name": "notes", "inputs": {n: every[n] for n in inputs},
            "heads": {"decision": {"type": "classification", "classes": ["approve", "review"]}},
            "training": {"epochs": epochs, "batch_size": 16, "lr": 0.003, "seed": 0}}
    if fusion:
        spec["fusion"] = fusion
    return spec


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tokenizer_dir, model_dir, notes_table):
    """A photo + record + note model trained from folders that are then moved away, so what
    follows has the model file alone."""
    work = tmp_path_factory.mktemp("trained")
    tokenizer, model = work / "tok", work / "enc"
    shutil.copytree(tokenizer_dir, tokenizer)
    shutil.copytree(model_dir, model)
    path = work / "notes.safetensors"
    polymodal.train(_spec(tokenizer, model, {"type": "concat", "hidden": [16]}), notes_table,
                    path, progress=False)
    shutil.rmtree(tokenizer)
    shutil.rmtree(model)
    return path


def test_a_model_file_predicts_from_raw_text_with_nothing_else_present(trained, notes_table):
    result = polymodal.predict(trained, notes_table)
    decisions = result["columns"]["decision"]
    assert len(decisions) == 48 and set(decisions) <= {"approve", "review"}
    spec = json.loads(polymodal.load(trained).spec.model_dump_json())
    stored = spec["inputs"]["note"]["backbone"]["config"]
    assert stored["model_type"] == "bert" and stored["hidden_size"] == 32


def test_the_onnx_export_takes_ids_and_masks_and_tokenizes_with_tokenizers_alone(
        trained, notes_table, tmp_path):
    import onnx

    onnx_path = tmp_path / "notes.onnx"
    result = polymodal.export(trained, onnx_path)
    assert result.difference is not None and result.difference <= 1e-4
    graph = onnx.load(str(onnx_path))
    names = [i.name for i in graph.graph.input]
    assert "note.input_ids" in names and "note.attention_mask" in names
    metadata = {p.key: p.value for p in graph.metadata_props}
    state = json.loads(metadata["polymodal.state"])
    assert '"WordPiece"' in state["inputs"]["note"]["tokenizer"]
    from_model = polymodal.predict(trained, notes_table)["columns"]
    from_onnx = polymodal.predict(onnx_path, notes_table)["columns"]
    assert from_onnx["decision"] == from_model["decision"]
    compared = [key for key in from_model if key.startswith("decision_prob_")]
    assert len(compared) == 2
    for key in compared:
        difference = np.abs(np.asarray(from_model[key], float) - np.asarray(from_onnx[key], float))
        assert difference.max() <= 1e-4, key


@pytest.mark.parametrize("fusion, output", [
    ({"type": "attention", "dim": 32, "heads": 2}, "tokens"),
    ({"type": "gated", "dim": 16}, "vector"),
    ({"type": "film", "target": "photo", "stages": [3, 4]}, "vector"),
], ids=["attention-over-tokens", "gated-on-the-vector", "film-conditioning-the-photo"])
def test_every_builtin_fusion_takes_the_text(tokenizer_dir, model_dir, notes_table, tmp_path,
                                             fusion, output):
    path = tmp_path / "model.safetensors"
    spec = _spec(tokenizer_dir, model_dir, fusion, output=output, epochs=1)
    polymodal.train(spec, notes_table, path, progress=False)
    assert len(polymodal.predict(path, notes_table)["columns"]["decision"]) == 48


def _with_empty_notes(table: Path, folder: Path, every: int = 3) -> Path:
    with table.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    for i, row in enumerate(rows):
        if i % every == 0:
            row["note"] = "" if i % 2 else "NA"
    folder.mkdir(exist_ok=True)
    out = folder / "notes.csv"
    with out.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    shutil.copytree(table.parent / "photos", folder / "photos", dirs_exist_ok=True)
    return out


def test_an_empty_note_is_an_absent_input_beside_others(tokenizer_dir, model_dir, notes_table,
                                                        tmp_path):
    table = _with_empty_notes(notes_table, tmp_path / "data")
    path = tmp_path / "model.safetensors"
    spec = _spec(tokenizer_dir, model_dir, {"type": "concat"}, inputs=("record", "note"), epochs=1)
    polymodal.train(spec, table, path, progress=False)
    model = polymodal.load(path).eval()
    predicted = polymodal.predict(path, table)["columns"]
    assert len(predicted["decision"]) == 48
    # An absent note changes nothing, whatever its encoded placeholder holds.
    record = {"amount": torch.tensor([900.0, 900.0]), "age": torch.tensor([3.0, 3.0]),
              "region": torch.tensor([0, 0])}
    ids = torch.tensor([[2, 10, 11, 3], [2, 30, 31, 3]])
    note = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    with torch.no_grad():
        out = model({"record": record, "note": note},
                    {"note": torch.tensor([False, False])})["decision"]
    assert torch.allclose(out[0], out[1])


def test_an_empty_note_where_the_text_is_the_only_input_is_a_bad_row(
        tokenizer_dir, model_dir, notes_table, tmp_path):
    table = _with_empty_notes(notes_table, tmp_path / "data")
    spec = _spec(tokenizer_dir, model_dir, {}, inputs=("note",), epochs=1)
    wanted = r"row 1, column 'note': no text \(empty\) \(input 'note' cannot be absent"
    with pytest.raises(polymodal.PolymodalError, match=wanted):
        polymodal.train(spec, table, tmp_path / "m.safetensors", progress=False)


def test_a_tokenizer_of_another_vocabulary_is_named(tokenizer_dir, model_dir, notes_table,
                                                     tmp_path, make_notes):
    bigger = make_notes.train_tokenizer(
        make_notes.notes_of(notes_table) + [f"word{i} token{i}" for i in range(400)],
        tmp_path / "bigger", vocab_size=600)
    spec = _spec(bigger, model_dir, {}, inputs=("note",), epochs=1)
    with pytest.raises(polymodal.PolymodalError, match="beyond the encoder's vocabulary"):
        polymodal.train(spec, notes_table, tmp_path / "m.safetensors", progress=False)


def test_random_initialisation_keeps_its_config_in_the_model_file(tokenizer_dir, notes_table,
                                                                 tmp_path):
    config = {"model_type": "distilbert", "vocab_size": 200, "dim": 16, "n_layers": 1,
              "n_heads": 2, "hidden_dim": 32, "max_position_embeddings": 32}
    spec = _spec(tokenizer_dir, Path("unused"), {}, inputs=("note",), epochs=1)
    spec["inputs"]["note"]["backbone"] = {"type": "transformers", "config": copy.deepcopy(config),
                                          "pretrained": False, "output": "vector"}
    path = tmp_path / "m.safetensors"
    polymodal.train(spec, notes_table, path, progress=False)
    backbone = polymodal.load(path).spec.inputs["note"].backbone
    assert backbone.config["model_type"] == "distilbert" and backbone.config["dim"] == 16


STANDALONE = """
import json, sys
for blocked in ("torch", "transformers", "polymodal", "polymodal_text"):
    sys.modules[blocked] = None  # importing any of them fails
import numpy as np, onnxruntime, tokenizers

path, table = sys.argv[1], sys.argv[2]
session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
state = json.loads(session.get_modelmeta().custom_metadata_map["polymodal.state"])
note = state["inputs"]["note"]
tokenizer = tokenizers.Tokenizer.from_str(note["tokenizer"])
length = next(i.shape[1] for i in session.get_inputs() if i.name == "note.input_ids")
tokenizer.enable_truncation(length)
tokenizer.enable_padding(length=length, pad_id=note["pad_id"])
import csv
texts = [row["note"] for row in csv.DictReader(open(table, newline="", encoding="utf-8"))]
encoded = tokenizer.encode_batch(texts)
feeds = {"note.input_ids": np.array([e.ids for e in encoded], dtype=np.int64),
         "note.attention_mask": np.array([e.attention_mask for e in encoded], dtype=np.int64)}
print(json.dumps(session.run(None, feeds)[0].tolist()))
"""


def test_a_program_with_tokenizers_and_onnxruntime_alone_predicts_from_the_export(
        tokenizer_dir, model_dir, notes_table, tmp_path):
    import subprocess
    import sys

    path, onnx_path = tmp_path / "note.safetensors", tmp_path / "note.onnx"
    polymodal.train(_spec(tokenizer_dir, model_dir, {}, inputs=("note",), epochs=1), notes_table,
                    path, progress=False)
    polymodal.export(path, onnx_path)
    run = subprocess.run([sys.executable, "-c", STANDALONE, str(onnx_path), str(notes_table)],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    logits = torch.tensor(json.loads(run.stdout))
    predicted = polymodal.predict(path, notes_table)["columns"]
    expected = torch.tensor([predicted["decision_prob_approve"], predicted["decision_prob_review"]]).T
    assert torch.allclose(logits.softmax(dim=1), expected.float(), atol=1e-4)


def test_train_names_a_missing_tokenizer_at_its_spec_path_and_exits_1(model_dir, notes_table,
                                                                     tmp_path, monkeypatch):
    import subprocess
    import sys

    import yaml

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    spec = _spec(tmp_path / "no-such-tokenizer", model_dir, {}, inputs=("note",), epochs=1)
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec))
    run = subprocess.run([sys.executable, "-m", "polymodal", "train", str(tmp_path / "spec.yaml"),
                          "--data", str(notes_table), "-o", str(tmp_path / "m.safetensors")],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 1 and "Traceback" not in run.stderr
    assert "inputs.note.adapter.tokenizer: tokenizer" in run.stderr
    assert "is neither a folder (none at " in run.stderr and "nor in the local Hugging Face cache" \
        in run.stderr
    assert not (tmp_path / "m.safetensors").exists()

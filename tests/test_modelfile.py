"""The model file: save -> load round trip, and refusal of every bad file."""

from __future__ import annotations

import json
import pickle

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import polymodal
from polymodal._errors import ModelFileError
from polymodal._modelfile import FORMAT_VERSION, KEY_FORMAT, KEY_SPEC, KEY_VERSIONS


@pytest.fixture
def saved(multimodal_spec, model_path):
    torch.manual_seed(0)
    model = polymodal.build(multimodal_spec).eval()
    polymodal.save(model, model_path)
    return model, model_path


def rewrite(path, *, metadata_update=None, tensors_update=None, drop=()):
    """Rewrite a model file with changed metadata or tensors (what a tampered file looks like)."""
    with safe_open(str(path), framework="pt") as handle:
        metadata = dict(handle.metadata())
    tensors = load_file(str(path))
    metadata.update(metadata_update or {})
    tensors.update(tensors_update or {})
    for key in drop:
        tensors.pop(key)
    save_file(tensors, str(path), metadata=metadata)


def test_save_load_gives_identical_outputs(saved, multimodal_spec, batch_for):
    model, path = saved
    batch = batch_for(multimodal_spec)
    loaded = polymodal.load(path)
    assert not loaded.training
    with torch.no_grad():
        expected, got = model(batch), loaded(batch)
    assert set(got) == {"fraud", "cost"}
    for head in expected:
        assert torch.equal(expected[head], got[head])
    assert loaded.spec.to_dict() == model.spec.to_dict()
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key


def test_file_metadata(saved):
    _, path = saved
    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata()
    assert metadata[KEY_FORMAT] == str(FORMAT_VERSION)
    spec = json.loads(metadata[KEY_SPEC])
    assert spec["backbones"]["vision"]["type"] == "polymodal:timm"
    versions = json.loads(metadata[KEY_VERSIONS])
    assert set(versions) >= {"polymodal", "torch"}


def test_trained_buffers_round_trip(multimodal_spec, model_path, batch_for):
    model = polymodal.build(multimodal_spec).train()
    for _ in range(2):  # moves BatchNorm running statistics away from their defaults
        model(batch_for(multimodal_spec, size=4))
    model.eval()
    polymodal.save(model, model_path)
    loaded = polymodal.load(model_path)
    running = "backbones.vision.model.bn1.running_mean"
    assert torch.equal(loaded.state_dict()[running], model.state_dict()[running])
    assert not torch.equal(model.state_dict()[running], torch.zeros_like(model.state_dict()[running]))


def test_save_is_atomic_and_leaves_no_temporary_file(saved, monkeypatch):
    model, path = saved
    before = path.read_bytes()

    def explode(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr("polymodal._modelfile.save_model", explode)
    with pytest.raises(RuntimeError, match="disk full"):
        polymodal.save(model, path)
    assert path.read_bytes() == before  # the old file is untouched
    assert [p.name for p in path.parent.iterdir()] == [path.name]


# -- files that must be refused --------------------------------------------------------------


def load_error(path) -> str:
    with pytest.raises(ModelFileError) as info:
        polymodal.load(path)
    return str(info.value)


def test_missing_file(tmp_path):
    assert "no such model file" in load_error(tmp_path / "absent.safetensors")


def test_truncated_file(saved):
    _, path = saved
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    message = load_error(path)
    assert str(path) in message and "truncated" in message


def test_truncated_header(saved):
    _, path = saved
    path.write_bytes(path.read_bytes()[:20])
    assert "not a valid safetensors model file" in load_error(path)


def test_random_bytes_file(tmp_path):
    path = tmp_path / "random.safetensors"
    path.write_bytes(torch.randint(0, 256, (4096,), generator=torch.Generator().manual_seed(1),
                                   dtype=torch.uint8).numpy().tobytes())
    assert "not a valid safetensors model file" in load_error(path)


def test_empty_file(tmp_path):
    path = tmp_path / "empty.safetensors"
    path.write_bytes(b"")
    assert "not a valid safetensors model file" in load_error(path)


def test_a_spec_given_for_a_model_file_says_what_reads_it(tmp_path):
    path = tmp_path / "claims.yaml"
    path.write_text("inputs: {}\n")
    assert "this is a spec, not a model file: `polymodal validate` checks a spec" in load_error(path)


def test_pickle_renamed_safetensors_is_refused_not_executed(tmp_path, code_trap):
    marker = tmp_path / "executed"
    path = tmp_path / "model.safetensors"
    path.write_bytes(pickle.dumps({"weights": code_trap(marker)}))
    # Sanity check that the trap works when unpickled, elsewhere.
    pickle.loads(pickle.dumps(code_trap(tmp_path / "armed")))
    assert (tmp_path / "armed").exists()

    message = load_error(path)
    assert "not a valid safetensors model file" in message and "pickle" in message
    assert not marker.exists()


def test_torch_save_renamed_safetensors_is_refused_not_executed(tmp_path, code_trap):
    marker = tmp_path / "executed"
    path = tmp_path / "model.safetensors"
    torch.save({"trap": code_trap(marker)}, path)
    assert "not a valid safetensors model file" in load_error(path)
    assert not marker.exists()


def test_plain_safetensors_that_is_not_a_polymodal_model(tmp_path):
    path = tmp_path / "weights.safetensors"
    save_file({"w": torch.zeros(2)}, str(path))
    assert "not a polymodal model" in load_error(path)


def test_tensors_that_do_not_match_the_spec(saved):
    _, path = saved
    with safe_open(str(path), framework="pt") as handle:
        spec = json.loads(handle.metadata()[KEY_SPEC])
    spec["inputs"]["report"]["backbone"]["hidden"] = [32, 8]  # the file holds [16, 8]
    rewrite(path, metadata_update={KEY_SPEC: json.dumps(spec)})
    message = load_error(path)
    assert "its tensors do not match its spec" in message
    assert "input_backbones.report.layers.0.linear.weight (16, 11) (spec gives (32, 11))" in message


def test_missing_and_unexpected_tensors(saved):
    _, path = saved
    rewrite(path, tensors_update={"heads.extra.weight": torch.zeros(1)},
            drop=["heads.fraud.linear.bias"])
    message = load_error(path)
    assert "missing 1 tensor(s): heads.fraud.linear.bias" in message
    assert "1 unexpected tensor(s): heads.extra.weight" in message


def test_embedded_spec_that_is_invalid(saved):
    _, path = saved
    rewrite(path, metadata_update={KEY_SPEC: "{not json"})
    assert "embedded spec is not JSON" in load_error(path)


def test_a_model_loads_whatever_its_early_stopping_metric_was_called(saved):
    """Training options do not matter to a trained model: a head's metrics may since have been
    renamed, and the file must still load."""
    _, path = saved
    with safe_open(str(path), framework="pt") as handle:
        spec = json.loads(handle.metadata()[KEY_SPEC])
    head = next(iter(spec["heads"]))
    spec["training"] = {"early_stopping": {"metric": f"{head}.retired_metric"}}
    rewrite(path, metadata_update={KEY_SPEC: json.dumps(spec)})
    assert polymodal.load(path).spec.training.early_stopping.metric == f"{head}.retired_metric"
    with pytest.raises(polymodal.SpecError, match="has no metric 'retired_metric'"):
        polymodal.load_spec(spec)


def test_file_from_a_newer_format(saved):
    _, path = saved
    rewrite(path, metadata_update={KEY_FORMAT: str(FORMAT_VERSION + 1),
                                   KEY_VERSIONS: json.dumps({"polymodal": "9.0.0"})})
    message = load_error(path)
    assert f"format {FORMAT_VERSION + 1}" in message and "9.0.0" in message
    assert "pip install -U polymodal" in message


def test_file_needing_a_missing_plugin_names_the_package(saved):
    _, path = saved
    with safe_open(str(path), framework="pt") as handle:
        spec = json.loads(handle.metadata()[KEY_SPEC])
    spec["inputs"]["report"]["backbone"]["type"] = "polymodal-tabnet:tabnet"
    versions = {"polymodal": "0.1.0", "polymodal-tabnet": "1.4.0"}
    rewrite(path, metadata_update={KEY_SPEC: json.dumps(spec), KEY_VERSIONS: json.dumps(versions)})
    message = load_error(path)
    assert "inputs.report.backbone.type" in message
    assert "polymodal-tabnet 1.4.0" in message
    assert "pip install polymodal-tabnet" not in message  # named by an untrusted file
    assert "not a package polymodal's catalog knows" in message


def test_save_refuses_a_foreign_module(model_path):
    with pytest.raises(TypeError, match="a model built by polymodal"):
        polymodal.save(torch.nn.Linear(2, 2), model_path)

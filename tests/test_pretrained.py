"""``pretrained: path`` loads local weights through the real path; ``pretrained: true`` offline
fails at once with a clear message."""

from __future__ import annotations

import pickle
import urllib.error

import pytest
import torch
from safetensors.torch import save_file

import polymodal
from polymodal._errors import SpecError


def spec_with(backbone: dict, channels: int = 3) -> dict:
    adapter = {"type": "image", "channels": channels}
    if channels != 3 and backbone.get("in_chans", 3) == 3:
        adapter["project_to"] = 3
    return {
        "inputs": {"photo": {"adapter": adapter, "backbone": "vision"}},
        "backbones": {"vision": backbone},
        "heads": {"label": {"type": "classification", "classes": 2}},
    }


def known_weights(net: torch.nn.Module, seed: int) -> dict[str, torch.Tensor]:
    """A state dict unlike any fresh initialisation: seeded values in every float tensor."""
    generator = torch.Generator().manual_seed(seed)
    return {
        k: torch.randn(v.shape, generator=generator) if v.is_floating_point() else v.clone()
        for k, v in net.state_dict().items()
    }


def write(state: dict[str, torch.Tensor], path) -> None:
    if str(path).endswith(".safetensors"):
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    else:
        torch.save(state, path)


def timm_source():
    import timm

    return timm.create_model("resnet10t", num_classes=5)  # with a classifier the backbone drops


def torchvision_source():
    import torchvision

    return torchvision.models.resnet18(weights=None, num_classes=5)


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
@pytest.mark.parametrize(
    ("library", "model", "source", "stem"),
    [("timm", "resnet10t", timm_source, "conv1.0.weight"),
     ("torchvision", "resnet18", torchvision_source, "conv1.weight")],
)
def test_local_weights_arrive(tmp_path, suffix, library, model, source, stem):
    state = known_weights(source(), seed=3)
    path = tmp_path / f"weights{suffix}"
    write(state, path)
    built = polymodal.build(spec_with({"type": library, "model": model, "pretrained": str(path)}))
    loaded = built.backbones["vision"].model.state_dict()
    assert "fc.weight" in state and "fc.weight" not in loaded  # classifier dropped
    for key, value in loaded.items():
        assert torch.equal(value, state[key]), key
    # Without pretrained the same spec gets fresh weights.
    fresh = polymodal.build(spec_with({"type": library, "model": model}))
    assert not torch.equal(fresh.backbones["vision"].model.state_dict()[stem], state[stem])


def test_checkpoint_wrapping_a_state_dict(tmp_path):
    state = known_weights(torchvision_source(), seed=4)
    path = tmp_path / "checkpoint.pth"
    torch.save({"state_dict": state, "epoch": 3}, path)
    built = polymodal.build(spec_with({"type": "torchvision", "model": "resnet18",
                                       "pretrained": str(path)}))
    assert torch.equal(built.backbones["vision"].model.conv1.weight, state["conv1.weight"])


def test_pretrained_stem_adapted_to_other_channel_counts(tmp_path):
    state = known_weights(torchvision_source(), seed=5)
    path = tmp_path / "weights.safetensors"
    write(state, path)
    built = polymodal.build(spec_with(
        {"type": "torchvision", "model": "resnet18", "pretrained": str(path), "in_chans": 1},
        channels=1))
    stem = built.backbones["vision"].model.conv1.weight
    assert stem.shape == (64, 1, 7, 7)
    assert torch.allclose(stem, state["conv1.weight"].sum(dim=1, keepdim=True))
    assert torch.equal(built.backbones["vision"].model.layer1[0].conv1.weight,
                       state["layer1.0.conv1.weight"])


def test_pretrained_weights_are_kept_through_save_and_load(tmp_path):
    state = known_weights(timm_source(), seed=6)
    weights = tmp_path / "weights.safetensors"
    write(state, weights)
    model = polymodal.build(spec_with({"type": "timm", "model": "resnet10t",
                                       "pretrained": str(weights)}))
    polymodal.save(model, tmp_path / "model.safetensors")
    weights.unlink()  # loading a model file never reads the pretrained file again
    loaded = polymodal.load(tmp_path / "model.safetensors")
    assert torch.equal(loaded.backbones["vision"].model.conv1[0].weight, state["conv1.0.weight"])


def test_missing_pretrained_file(tmp_path):
    missing = tmp_path / "nowhere.safetensors"
    with pytest.raises(SpecError) as info:
        polymodal.build(spec_with({"type": "timm", "model": "resnet10t",
                                   "pretrained": str(missing)}))
    assert str(info.value) == f"backbones.vision: pretrained weights file not found: {missing}"



def test_a_relative_weights_path_is_read_beside_the_spec_file(tmp_path, monkeypatch):
    import yaml

    project = tmp_path / "project"
    project.mkdir()
    state = known_weights(timm_source(), seed=3)
    write(state, project / "rgb.safetensors")
    spec = spec_with({"type": "timm", "model": "resnet10t", "pretrained": "rgb.safetensors"})
    (project / "spec.yaml").write_text(yaml.safe_dump(spec))
    monkeypatch.chdir(tmp_path)  # elsewhere: the path still means the file beside the spec
    model = polymodal.build("project/spec.yaml")
    loaded = model.backbones["vision"].model.state_dict()
    assert torch.equal(loaded["conv1.0.weight"], state["conv1.0.weight"])

    (project / "spec.yaml").write_text(yaml.safe_dump(spec).replace("rgb.", "gone."))
    with pytest.raises(SpecError) as info:
        polymodal.build("project/spec.yaml")
    # Reading the spec file checks the weights file is there, before any weight exists.
    assert str(info.value) == (
        "project/spec.yaml: backbones.vision.pretrained: pretrained weights file not found:"
        f" {project / 'gone.safetensors'} (a relative path is read from the spec file's folder)")


def test_validate_refuses_a_pretrained_path_that_build_would_refuse(tmp_path):
    import yaml

    from polymodal._cli import main

    (tmp_path / "weights.txt").write_text("not weights")
    for pretrained, expected in (("nowhere.safetensors", "weights file not found"),
                                 ("weights.txt", "unknown type '.txt'"),
                                 ("/dev/zero", "is not a regular file")):
        spec = spec_with({"type": "timm", "model": "resnet10t", "pretrained": pretrained})
        path = tmp_path / "spec.yaml"
        path.write_text(yaml.safe_dump(spec))
        with pytest.raises(SpecError) as info:
            polymodal.load_spec(path)
        assert "backbones.vision.pretrained: pretrained wei" in str(info.value)
        assert expected in str(info.value)
        assert main(["validate", str(path)]) == 1

def test_weights_of_another_architecture(tmp_path):
    path = tmp_path / "weights.safetensors"
    write(known_weights(timm_source(), seed=1), path)
    with pytest.raises(SpecError) as info:
        polymodal.build(spec_with({"type": "torchvision", "model": "resnet18",
                                   "pretrained": str(path)}))
    message = str(info.value)
    assert message.startswith("backbones.vision: pretrained weights")
    assert "do not fit" in message and "missing" in message


def test_pth_with_code_is_refused_not_executed(tmp_path, code_trap):
    marker = tmp_path / "executed"
    path = tmp_path / "weights.pth"
    with open(path, "wb") as handle:
        torch.save({"conv1.weight": code_trap(marker)}, handle, pickle_module=pickle)
    with pytest.raises(SpecError, match="cannot read pretrained weights"):
        polymodal.build(spec_with({"type": "torchvision", "model": "resnet18",
                                   "pretrained": str(path)}))
    assert not marker.exists()


def test_unknown_weights_suffix(tmp_path):
    path = tmp_path / "weights.npz"
    path.write_bytes(b"\0" * 16)
    with pytest.raises(SpecError, match=r"unknown type '\.npz'; use \.safetensors"):
        polymodal.build(spec_with({"type": "timm", "model": "resnet10t",
                                   "pretrained": str(path)}))


def test_pretrained_true_offline_timm_fails_clearly(hub_cache):
    # conftest sets HF_HUB_OFFLINE=1 before the hub library is imported, so this cannot wait on
    # network retries (about 45 s without it, on a machine with no network).
    from huggingface_hub import constants

    assert constants.HF_HUB_OFFLINE, "the hub library was imported before conftest set offline"
    with pytest.raises(SpecError) as info:
        polymodal.build(spec_with({"type": "timm", "model": "resnet10t", "pretrained": True}))
    message = str(info.value)
    assert message.startswith("backbones.vision: pretrained: true could not fetch the weights of"
                              " timm 'resnet10t'")
    assert f"the library's local cache ({hub_cache / 'huggingface' / 'hub'}," in message
    assert "pretrained: path/to/weights.safetensors" in message


def test_pretrained_true_offline_torchvision_fails_clearly(monkeypatch, tmp_path):
    import torch.hub

    def offline(*args, **kwargs):
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # no cached download can answer
    monkeypatch.setattr(torch.hub, "urlopen", offline)
    with pytest.raises(SpecError) as info:
        polymodal.build(spec_with({"type": "torchvision", "model": "resnet18", "pretrained": True}))
    message = str(info.value)
    assert "could not fetch the weights of torchvision 'resnet18'" in message
    assert "URLError" in message and "pretrained: path/to/weights.safetensors" in message


def test_build_without_pretrained_skips_the_file(tmp_path):
    spec = spec_with({"type": "timm", "model": "resnet10t",
                      "pretrained": str(tmp_path / "absent.safetensors")})
    model = polymodal.build(spec, pretrained=False)
    assert "vision" in model.backbones


# --- pretrained: true from the libraries' own caches, as a download left them -----------------

COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    """Empty Hugging Face hub and torch hub caches (the hub library read its cache folder from
    the environment when imported: point it here too)."""
    from huggingface_hub import constants

    hub = tmp_path / "huggingface" / "hub"
    hub.mkdir(parents=True)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "huggingface"))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(hub))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    return tmp_path


def put_in_hub_cache(root, repo_id: str, files: dict) -> None:
    """Files of a hub repository laid out as the hub library caches a download."""
    folder = root / "huggingface" / "hub" / f"models--{repo_id.replace('/', '--')}"
    snapshot = folder / "snapshots" / COMMIT
    snapshot.mkdir(parents=True)
    (folder / "refs").mkdir()
    (folder / "refs" / "main").write_text(COMMIT)
    for name, content in files.items():
        if name.endswith(".safetensors"):
            write(content, snapshot / name)
        else:
            (snapshot / name).write_text(content)


def published_timm(seed: int) -> dict[str, torch.Tensor]:
    """resnet10t weights as timm publishes them: with the 1000-class classifier."""
    import timm

    return known_weights(timm.create_model("resnet10t"), seed)


def timm_config(name: str) -> str:
    import json

    import timm

    cfg = timm.get_pretrained_cfg(name).to_dict()
    return json.dumps({"architecture": name.split(".")[0], "num_classes": 1000,
                       "pretrained_cfg": cfg})


@pytest.mark.parametrize("model", ["resnet10t", "resnet10t.c3_in1k",
                                   "hf-hub:timm/resnet10t.c3_in1k"])
def test_timm_weights_come_from_the_hub_cache(hub_cache, model):
    state = published_timm(seed=7)
    put_in_hub_cache(hub_cache, "timm/resnet10t.c3_in1k",
                     {"model.safetensors": state, "config.json": timm_config("resnet10t.c3_in1k")})
    built = polymodal.build(spec_with({"type": "timm", "model": model, "pretrained": True,
                                       "in_chans": 1}, channels=1))
    loaded = built.backbones["vision"].model.state_dict()
    assert "fc.weight" not in loaded  # the classifier is dropped
    stem = "conv1.0.weight"
    assert torch.allclose(loaded[stem], state[stem].sum(dim=1, keepdim=True))
    for key, value in loaded.items():
        if key != stem:
            assert torch.equal(value, state[key]), key


def test_an_uncached_hub_model_name_says_where_it_looked(hub_cache):
    with pytest.raises(SpecError) as info:
        polymodal.plan(polymodal.load_spec(spec_with(
            {"type": "timm", "model": "hf-hub:timm/resnet18.a1_in1k"})))
    message = str(info.value)
    assert message.startswith("backbones.vision: timm 'hf-hub:timm/resnet18.a1_in1k': cannot read"
                              " its config.json from the Hugging Face hub or its local cache (")
    assert str(hub_cache / "huggingface" / "hub") in message


def test_an_unknown_pretrained_tag_names_the_known_ones():
    with pytest.raises(SpecError) as info:
        polymodal.plan(polymodal.load_spec(spec_with({"type": "timm", "model": "resnet10t.c3"})))
    assert str(info.value) == (
        "backbones.vision: timm resnet10t has no pretrained tag 'c3'. Did you mean"
        " 'resnet10t.c3_in1k'? Its tags: resnet10t.c3_in1k.")


def test_torchvision_weights_come_from_the_torch_hub_cache(hub_cache):
    import torchvision

    state = known_weights(torchvision.models.resnet18(), seed=8)
    url = torchvision.models.ResNet18_Weights.DEFAULT.url
    checkpoints = hub_cache / "torch" / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    torch.save(state, checkpoints / url.rsplit("/", 1)[1])
    built = polymodal.build(spec_with({"type": "torchvision", "model": "resnet18",
                                       "pretrained": True}))
    loaded = built.backbones["vision"].model.state_dict()
    assert loaded.keys() == state.keys() - {"fc.weight", "fc.bias"}
    assert all(torch.equal(value, state[key]) for key, value in loaded.items())


def test_the_command_line_reads_the_cache_the_environment_names(hub_cache, tmp_path):
    import json
    import os
    import subprocess
    import sys

    state = published_timm(seed=9)
    put_in_hub_cache(hub_cache, "timm/resnet10t.c3_in1k", {"model.safetensors": state})
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps(spec_with({"type": "timm", "model": "resnet10t.c3_in1k",
                                          "pretrained": True})))
    env = {**os.environ, "HF_HOME": str(hub_cache / "huggingface"), "HF_HUB_OFFLINE": "1"}
    env.pop("HF_HUB_CACHE", None)
    out = tmp_path / "model.safetensors"
    result = subprocess.run([sys.executable, "-m", "polymodal", "build", str(spec), "-o", str(out)],
                            env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    model = polymodal.load(out)
    assert torch.equal(model.backbones["vision"].model.layer1[0].conv1.weight,
                       state["layer1.0.conv1.weight"])

"""The `timm`, `torchvision` and `mlp` backbones: outputs, pretrained weights, stems, freezing."""

from __future__ import annotations

import json

import pytest
import torch
from builtin_helpers import spec_error
from click.testing import CliRunner
from safetensors.torch import save_file

import polymodal
from polymodal._cli import cli
from polymodal.imagekit import adapt_stem

BACKBONES = {
    "timm": {"type": "timm", "model": "resnet10t"},
    "torchvision": {"type": "torchvision", "model": "resnet18"},
}


def image_spec(backbone: dict, channels: int = 3, **adapter) -> dict:
    return {"inputs": {"photo": {"adapter": {"type": "image", "channels": channels, **adapter},
                                 "backbone": "vision"}},
            "backbones": {"vision": backbone},
            "heads": {"y": {"type": "regression"}}}


def stem_of(model) -> torch.nn.Conv2d:
    net = model.backbones["vision"].model
    return net.conv1[0] if isinstance(net.conv1, torch.nn.Sequential) else net.conv1


@pytest.mark.parametrize("library", list(BACKBONES))
@pytest.mark.parametrize("output", ["vector", "feature_map", "tokens"])
def test_outputs_have_the_width_the_config_states(library, output):
    spec = image_spec({**BACKBONES[library], "output": output})
    spec["fusion"] = {"type": "attention", "dim": 16, "heads": 2}  # heads take vectors
    plan = polymodal.plan(polymodal.load_spec(spec))
    width = plan.features["photo"].width
    backbone = polymodal.build(spec).backbones["vision"]
    out = backbone(torch.randn(2, 3, 64, 64))
    expected = {"vector": (2, width), "feature_map": (2, width, 2, 2),
                "tokens": (2, 4, width)}[output]
    assert tuple(out.shape) == expected


@pytest.mark.parametrize("library, typo, match", [
    ("timm", "resnet181", "resnet18"), ("torchvision", "resnet5", "resnet50")])
def test_unknown_model_names_get_close_matches(library, typo, match):
    message = spec_error(image_spec({"type": library, "model": typo}))
    assert message.startswith("backbones.vision:") and f"Did you mean '{match}'" in message


def test_a_shared_backbone_that_cannot_be_made_is_one_problem():
    spec = {"inputs": {"rgb": {"adapter": {"type": "image", "channels": 3}, "backbone": "shared"},
                       "ms": {"adapter": {"type": "image", "channels": 10, "project_to": 3},
                              "backbone": "shared"}},
            "backbones": {"shared": {"type": "timm", "model": "resnet10x"}},
            "fusion": {"type": "concat"},
            "heads": {"crop": {"type": "classification", "classes": 3}}}
    with pytest.raises(polymodal.SpecError) as raised:
        polymodal.plan(polymodal.load_spec(spec))
    assert [where for where, _ in raised.value.problems] == ["backbones.shared"]


def reference_net(library: str, seed: int = 1) -> torch.nn.Module:
    """The network a local weights file is made from (with its classifier, as published)."""
    torch.manual_seed(seed)
    if library == "timm":
        import timm

        return timm.create_model("resnet10t", num_classes=10)
    import torchvision

    return torchvision.models.resnet18(num_classes=10)


@pytest.mark.parametrize("library", list(BACKBONES))
@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_local_pretrained_weights_arrive(library, suffix, tmp_path):
    reference = reference_net(library)
    path = tmp_path / f"weights{suffix}"
    state = {k: v.contiguous() for k, v in reference.state_dict().items()}
    save_file(state, str(path)) if suffix == ".safetensors" else torch.save(state, path)
    model = polymodal.build(image_spec({**BACKBONES[library], "pretrained": str(path)}))
    loaded = model.backbones["vision"].model.state_dict()
    for key, value in loaded.items():
        assert torch.equal(value, state[key]), key
    fresh = polymodal.build(image_spec(BACKBONES[library])).backbones["vision"].model
    assert not torch.equal(fresh.state_dict()["layer1.0.conv1.weight"],
                           state["layer1.0.conv1.weight"])


@pytest.mark.parametrize("library", list(BACKBONES))
def test_n_channel_stem_is_adapted_from_pretrained_rgb(library, tmp_path):
    from timm.models import adapt_input_conv

    reference = reference_net(library)
    path = tmp_path / "weights.safetensors"
    save_file({k: v.contiguous() for k, v in reference.state_dict().items()}, str(path))
    rgb = stem_of_net(reference).weight.detach()
    model = polymodal.build(image_spec(
        {**BACKBONES[library], "pretrained": str(path), "in_chans": 5}, channels=5))
    assert torch.allclose(stem_of(model).weight, adapt_input_conv(5, rgb.clone()))
    one = polymodal.build(image_spec(
        {**BACKBONES[library], "pretrained": str(path), "in_chans": 1}, channels=1))
    assert torch.allclose(stem_of(one).weight, rgb.sum(dim=1, keepdim=True))
    # Everything after the stem is the pretrained network unchanged.
    assert torch.equal(model.backbones["vision"].model.layer1[0].conv1.weight,
                       reference.layer1[0].conv1.weight)


def stem_of_net(net) -> torch.nn.Conv2d:
    return net.conv1[0] if isinstance(net.conv1, torch.nn.Sequential) else net.conv1


@pytest.mark.parametrize("library", list(BACKBONES))
def test_named_bands_keep_rgb_filters_where_they_apply(library, tmp_path):
    reference = reference_net(library)
    path = tmp_path / "weights.safetensors"
    save_file({k: v.contiguous() for k, v in reference.state_dict().items()}, str(path))
    rgb = stem_of_net(reference).weight.detach()
    bands = ["nir", "Blue", "red", "swir1", "green"]
    model = polymodal.build(image_spec(
        {**BACKBONES[library], "pretrained": str(path), "in_chans": 5}, channels=5, bands=bands))
    stem = stem_of(model).weight
    scale = 3 / 5
    assert torch.allclose(stem[:, 1], rgb[:, 2] * scale)  # blue
    assert torch.allclose(stem[:, 2], rgb[:, 0] * scale)  # red
    assert torch.allclose(stem[:, 4], rgb[:, 1] * scale)  # green
    assert torch.allclose(stem[:, 0], rgb.mean(dim=1) * scale)  # nir: the filters' mean
    assert torch.allclose(stem[:, 3], rgb.mean(dim=1) * scale)
    # A uniform input gets the stem response it had in RGB.
    assert torch.allclose(stem.sum(dim=1), rgb.sum(dim=1), atol=1e-5)


def test_rgb_bands_in_another_order_are_reordered():
    weight = torch.randn(4, 3, 3, 3)
    adapted = adapt_stem(weight, 3, ["blue", "green", "red"])
    assert torch.equal(adapted, weight.flip(1))



def test_bands_named_without_red_green_or_blue_are_flagged():
    weight = torch.randn(4, 3, 3, 3)
    with pytest.warns(UserWarning, match=r"no band of \['B04', 'B03', 'B02', 'B08'\] is named"
                      " red, green, blue"):
        adapted = adapt_stem(weight, 4, ["B04", "B03", "B02", "B08"])
    assert torch.allclose(adapted, weight.mean(dim=1, keepdim=True).expand(4, 4, 3, 3) * 0.75)

def test_weights_that_do_not_fit_name_the_backbone(tmp_path):
    import timm

    path = tmp_path / "resnet18.safetensors"
    save_file(timm.create_model("resnet18").state_dict(), str(path))
    message = spec_error(image_spec({**BACKBONES["timm"], "pretrained": str(path)}))
    assert message.startswith("backbones.vision: pretrained weights") and "do not fit" in message
    message = spec_error(image_spec({**BACKBONES["timm"], "pretrained": str(tmp_path / "no.pth")}))
    assert "backbones.vision: pretrained weights file not found" in message


def test_pretrained_true_offline_says_what_to_do(monkeypatch):
    import timm

    real = timm.create_model

    def offline(*args, pretrained=False, **kwargs):
        if pretrained:
            raise OSError("could not resolve host")
        return real(*args, **kwargs)

    monkeypatch.setattr(timm, "create_model", offline)
    message = spec_error(image_spec({**BACKBONES["timm"], "pretrained": True}))
    assert message.startswith("backbones.vision: pretrained: true could not fetch")
    assert "pretrained: path/to/weights.safetensors" in message

    def no_network(*args, **kwargs):
        raise OSError("network unreachable")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_network)
    message = spec_error(image_spec({**BACKBONES["torchvision"], "pretrained": True}))
    assert "torchvision 'resnet18'" in message and "Offline?" in message


def train_step(model, batch):
    model.train()
    model(batch)["y"].sum().backward()


@pytest.mark.parametrize("library", list(BACKBONES))
def test_freeze_all_gives_no_gradients_and_fixed_statistics(library):
    model = polymodal.build(image_spec({**BACKBONES[library], "freeze": "all"}))
    backbone = model.backbones["vision"]
    stats = backbone.model.layer1[0].bn1.running_mean.clone()
    train_step(model, {"photo": torch.randn(4, 3, 32, 32) * 3 + 1})
    assert all(p.grad is None and not p.requires_grad for p in backbone.parameters())
    assert torch.equal(backbone.model.layer1[0].bn1.running_mean, stats)
    assert model.heads["y"].linear.weight.grad is not None


@pytest.mark.parametrize("library", list(BACKBONES))
def test_train_last_stages(library):
    model = polymodal.build(image_spec({**BACKBONES[library], "freeze": {"train_last": 2}}))
    net = model.backbones["vision"].model
    before = {n: net.get_submodule(n).running_mean.clone()
              for n in ("layer2.0.bn1", "layer3.0.bn1")}
    train_step(model, {"photo": torch.randn(4, 3, 32, 32) * 3 + 1})
    for name, p in net.named_parameters():
        trains = name.startswith(("layer3", "layer4"))
        assert p.requires_grad == trains, name
        assert (p.grad is not None) == trains, name
    assert torch.equal(net.layer2[0].bn1.running_mean, before["layer2.0.bn1"])
    assert not torch.equal(net.layer3[0].bn1.running_mean, before["layer3.0.bn1"])


def test_freeze_batchnorm_keeps_statistics_but_trains_weights():
    model = polymodal.build(image_spec({**BACKBONES["timm"], "freeze": "batchnorm"}))
    net = model.backbones["vision"].model
    stats = net.layer4[0].bn1.running_var.clone()
    train_step(model, {"photo": torch.randn(4, 3, 32, 32) * 3 + 1})
    assert all(p.requires_grad and p.grad is not None for p in net.parameters())
    assert torch.equal(net.layer4[0].bn1.running_var, stats)
    assert not net.layer4[0].bn1.training and model.training


def test_train_last_with_batchnorm_fixes_all_statistics():
    model = polymodal.build(image_spec(
        {**BACKBONES["timm"], "freeze": {"train_last": 1, "batchnorm": True}}))
    net = model.backbones["vision"].model
    stats = net.layer4[0].bn1.running_mean.clone()
    train_step(model, {"photo": torch.randn(4, 3, 32, 32) * 3 + 1})
    assert net.layer4[0].conv1.weight.grad is not None
    assert net.layer3[0].conv1.weight.grad is None
    assert torch.equal(net.layer4[0].bn1.running_mean, stats)


@pytest.mark.parametrize("freeze, words", [
    ({"train_last": 9}, "freeze.train_last: 9, but timm resnet10t has 5 stages"),
    ("some", "backbones.vision.freeze"),
    ({"train_last": 0}, "backbones.vision.freeze"),
    ({"train_last": 1, "bn": True}, "backbones.vision.freeze"),
])
def test_bad_freeze_options(freeze, words):
    assert words in spec_error(image_spec({**BACKBONES["timm"], "freeze": freeze}))


def test_inspect_reports_frozen_parameters(tmp_path):
    spec = image_spec({**BACKBONES["timm"], "freeze": {"train_last": 1}})
    model = polymodal.build(spec)
    path = polymodal.save(model, tmp_path / "m.safetensors")
    result = CliRunner().invoke(cli, ["inspect", str(path), "--json"])
    assert result.exit_code == 0, result.output
    part = json.loads(result.output)["parameters"]["parts"]["backbones.vision"]
    layer4 = sum(p.numel() for p in model.backbones["vision"].model.layer4.parameters())
    assert part["trainable"] == layer4 < part["total"]
    text = CliRunner().invoke(cli, ["inspect", str(path)]).output
    assert f"({part['total'] - layer4:,} frozen)" in text


@pytest.mark.parametrize("library", list(BACKBONES))
@pytest.mark.parametrize("output", ["vector", "feature_map"])
def test_save_load_gives_the_same_outputs(library, output, roundtrip):
    spec = image_spec({**BACKBONES[library], "output": output, "freeze": "batchnorm"})
    if output == "feature_map":
        spec["fusion"] = {"type": "attention", "dim": 16, "heads": 2}
    model = polymodal.build(spec).eval()
    loaded = roundtrip(model)
    x = {"photo": torch.randn(2, 3, 32, 32)}
    assert torch.allclose(model(x)["y"], loaded(x)["y"], atol=1e-6)
    assert loaded.backbones["vision"].model.layer1[0].bn1.training is False


def table_spec(**mlp) -> dict:
    return {"inputs": {"t": {"adapter": {"type": "tabular", "numerical": ["a", "b", "c", "d"],
                                         "missing_indicators": False},
                             "backbone": {"type": "mlp", **mlp}}},
            "heads": {"y": {"type": "regression"}}}


def test_mlp_matches_a_hand_written_stack():
    model = polymodal.build(table_spec(hidden=[4, 4, 3], activation="gelu", norm="layer",
                                       residual=True, final_activation=False)).eval()
    layers = model.input_backbones["t"].layers
    x = torch.randn(5, 4)

    def block(i, h, last=False):
        y = layers[i].linear(h)
        if not last:
            y = torch.nn.functional.gelu(layers[i].norm(y))
        return y

    h1 = x + block(0, x)  # widths match: residual
    h2 = h1 + block(1, h1)
    expected = block(2, h2, last=True)  # 4 -> 3: no residual, linear
    assert torch.allclose(model.input_backbones["t"](x), expected, atol=1e-6)


def test_mlp_dropout_and_batch_norm_in_training():
    model = polymodal.build(table_spec(hidden=[64], norm="batch", dropout=0.5))
    layer = model.input_backbones["t"].layers[0]
    assert isinstance(layer.norm, torch.nn.BatchNorm1d)
    x = torch.randn(8, 4)
    model.train()
    out = model.input_backbones["t"](x)
    assert (out == 0).float().mean() > 0.3  # relu + dropout zero many features
    model.eval()
    assert torch.equal(model.input_backbones["t"](x), model.input_backbones["t"](x))


@pytest.mark.parametrize("option, where", [
    ({"hidden": []}, "inputs.t.backbone.hidden"),
    ({"hidden": [4], "activation": "swish"}, "inputs.t.backbone.activation"),
    ({"hidden": [4], "dropout": 1.0}, "inputs.t.backbone.dropout"),
])
def test_mlp_bad_options(option, where):
    assert spec_error(table_spec(**option)).startswith(where + ":")


def test_mlp_takes_only_vectors():
    spec = table_spec(hidden=[4])
    spec["inputs"]["t"]["adapter"]["output"] = "tokens"
    assert "inputs.t.adapter: gives tokens of 32 but backbone (mlp [4]) takes" in spec_error(spec)


def test_validate_of_googlenet_prints_no_torchvision_notice(tmp_path):
    import subprocess
    import sys

    path = tmp_path / "gn.yaml"
    path.write_text("name: gn\ninputs:\n  photo: {adapter: {type: image, channels: 3},"
                    " backbone: {type: torchvision, model: googlenet}}\n"
                    "heads:\n  y: {type: classification, classes: 2}\n")
    done = subprocess.run([sys.executable, "-W", "default", "-m", "polymodal", "validate",
                           str(path)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "Warning" not in done.stderr


# --- every output kind of a representative model per family: what validate says, the model gives

#: One model per family whose widths, layout, stages or build needed a fix (small, 5 bands):
#: a head convolution after pooling (timm's head_hidden_size), channels-last maps (MambaOut),
#: tokens only (ViT, built for one size), feature_info naming modules the model lacks (HRNet),
#: a constructor the meta device cannot run (RegNet), auxiliary outputs in training
#: (GoogLeNet), a version check on load (MNASNet), a convolutional classifier (SqueezeNet).
REPRESENTATIVES = [
    ("timm", "mobilenetv3_small_050", 32),
    ("timm", "test_mambaout", 32),
    ("timm", "test_vit", 32),
    ("timm", "hrnet_w18_small", 32),
    ("torchvision", "regnet_x_400mf", 32),
    ("torchvision", "googlenet", 32),
    ("torchvision", "mnasnet0_5", 32),
    ("torchvision", "squeezenet1_1", 32),
]
OUTPUT_KINDS = {"vector": 2, "feature_map": 4, "tokens": 3}


def five_band_spec(library: str, model: str, size: int, output: str, route: str) -> dict:
    adapter = {"type": "image", "channels": 5, "size": size}
    backbone = {"type": library, "model": model, "output": output}
    if route == "project_to":
        adapter["project_to"] = 3
    else:
        backbone["in_chans"] = 5
    fusion = ({"type": "concat"} if output == "vector"
              else {"type": "attention", "dim": 16, "heads": 2})
    return {"inputs": {"scan": {"adapter": adapter, "backbone": "vision"},
                       "table": {"adapter": {"type": "tabular", "numerical": ["a"]},
                                 "backbone": {"type": "mlp", "hidden": [4]}}},
            "backbones": {"vision": backbone}, "fusion": fusion,
            "heads": {"y": {"type": "classification", "classes": 2}}}


@pytest.mark.parametrize("library, model, size", REPRESENTATIVES,
                         ids=[m for _, m, _ in REPRESENTATIVES])
def test_each_output_is_what_validate_states(library, model, size):
    for output, dims in OUTPUT_KINDS.items():
        route = "in_chans" if output == "tokens" else "project_to"
        spec = five_band_spec(library, model, size, output, route)
        try:
            stated = polymodal.plan(polymodal.load_spec(spec)).features["scan"]
        except polymodal.SpecError as refused:  # only a ViT has no feature map
            assert (model, output) == ("test_vit", "feature_map"), str(refused)
            assert "gives tokens, not a feature map; use output: tokens" in str(refused)
            continue
        built = polymodal.build(spec)
        backbone = built.backbones["vision"]
        channels = 5 if route == "in_chans" else 3
        batch = {"scan": torch.randn(2, 5, size, size), "table": {"a": torch.randn(2)}}
        for training in (False, True):
            built.train(training)
            out = backbone(torch.randn(2, channels, size, size))
            assert out.dim() == dims and out.shape[1 if dims == 4 else -1] == stated.width, (
                output, training, tuple(out.shape), stated)
        built(batch)["y"].sum().backward()  # a training step reaches the backbone's stem
        assert next(p for p in backbone.parameters()).grad is not None


def test_a_head_convolution_after_pooling_widens_the_vector():
    import timm

    spec = five_band_spec("timm", "mobilenetv3_small_050", 32, "vector", "project_to")
    stated = polymodal.plan(polymodal.load_spec(spec)).features["scan"]
    net = timm.create_model("mobilenetv3_small_050", num_classes=0)
    assert stated.width == net.head_hidden_size != net.num_features


def test_channels_last_stages_are_modulated_channels_first():
    spec = five_band_spec("timm", "swin_tiny_patch4_window7_224", 32, "feature_map", "project_to")
    backbone = polymodal.build(spec).backbones["vision"]
    stages = polymodal.plan(polymodal.load_spec(spec))
    seen = []

    def modulate(stage, output):
        seen.append((stage, tuple(output.shape)))
        return output * 2

    out = backbone.modulated(torch.randn(2, 3, 32, 32), modulate, [0, 3])
    widths = [s.width for s in backbone.config.stages(backbone.takes)]
    assert [(stage, shape[1]) for stage, shape in seen] == [(0, widths[0]), (3, widths[3])]
    assert out.shape[1] == widths[3] and stages.features["scan"].width == widths[3]


def test_a_model_whose_feature_info_names_missing_modules_has_no_stages():
    spec = five_band_spec("timm", "hrnet_w18_small", 32, "vector", "project_to")
    spec["backbones"]["vision"]["freeze"] = {"train_last": 1}
    message = spec_error(spec)
    assert message == ("backbones.vision: freeze.train_last: timm hrnet_w18_small exposes no"
                       " stages; use freeze: all")


@pytest.mark.parametrize("library, model", [("timm", "levit_128s"),
                                            ("torchvision", "vit_b_32")])
def test_a_model_of_one_input_size_needs_the_adapter_size(library, model):
    spec = five_band_spec(library, model, 32, "vector", "project_to")
    del spec["inputs"]["scan"]["adapter"]["size"]
    message = spec_error(spec)
    assert message.startswith(f"backbones.vision: {library} {model} takes")
    assert message.endswith("set the image adapter's size: 224 (it resizes the images)")


def test_too_small_images_are_refused_with_the_smallest_size():
    spec = five_band_spec("torchvision", "squeezenet1_1", 8, "vector", "project_to")
    message = spec_error(spec)
    assert message.startswith("backbones.vision: torchvision squeezenet1_1 cannot take 8x8 images (")
    assert message.endswith("the smallest square size it takes is 32: set the image adapter's"
                            " size: 32")


def test_auxiliary_classifiers_are_removed(roundtrip):
    spec = five_band_spec("torchvision", "googlenet", 32, "vector", "project_to")
    model = polymodal.build(spec)
    net = model.backbones["vision"].model
    assert net.aux1 is None and net.aux2 is None and not net.aux_logits
    model.train()
    assert model.backbones["vision"](torch.randn(2, 3, 32, 32)).shape == (2, 1024)
    loaded = roundtrip(model.eval())  # MNASNet-style version checks aside, files load strictly
    x = {"scan": torch.randn(2, 5, 32, 32), "table": {"a": torch.randn(2)}}
    assert torch.allclose(model(x)["y"], loaded(x)["y"], atol=1e-6)


def test_a_model_file_of_a_version_checking_model_loads(roundtrip):
    model = polymodal.build(five_band_spec("torchvision", "mnasnet0_5", 32, "vector", "in_chans"))
    loaded = roundtrip(model.eval())
    x = {"scan": torch.randn(2, 5, 32, 32), "table": {"a": torch.randn(2)}}
    assert torch.allclose(model(x)["y"], loaded(x)["y"], atol=1e-6)


# --- a constructor that reads tensor values (RegNet), built where polymodal builds weightless

@pytest.mark.parametrize("route", ["in_chans", "project_to"])
def test_a_model_file_of_a_constructor_reading_tensor_values_loads(route, roundtrip):
    # A model file's load builds on the meta device, where RegNet's constructor cannot read
    # back the stage widths it computes with tensors.
    model = polymodal.build(five_band_spec("torchvision", "regnet_x_400mf", 32, "vector", route))
    loaded = roundtrip(model.eval())
    x = {"scan": torch.randn(2, 5, 32, 32), "table": {"a": torch.randn(2)}}
    assert torch.allclose(model(x)["y"], loaded(x)["y"], atol=1e-6)


def test_meta_builds_then_a_regnet_build_leave_the_process_as_they_found_it():
    from torch._C import _len_torch_function_stack

    from polymodal._assembly import measured
    from polymodal._footprint import Footprint

    def process_state():
        return _len_torch_function_stack(), torch.get_default_device(), torch.get_default_dtype()

    before = process_state()
    for library, model in (("timm", "resnet10t"), ("torchvision", "mnasnet0_5"),
                           ("torchvision", "regnet_x_400mf")):
        spec = five_band_spec(library, model, 32, "vector", "in_chans")
        with torch.device("meta"):  # as a model file's load builds
            weightless = polymodal.build(spec, pretrained=False)
        assert all(p.is_meta for p in weightless.parameters()), model
        assert isinstance(measured(polymodal.load_spec(spec)), Footprint), model  # validate's size
        assert process_state() == before, model
    built = polymodal.build(five_band_spec("torchvision", "regnet_x_400mf", 32, "vector", "in_chans"))
    assert not any(p.is_meta for p in built.parameters())
    assert process_state() == before

"""The `image` adapter: channels, normalisation, projection, named bands."""

from __future__ import annotations

import pytest
import torch

import polymodal
from builtin_helpers import TINY_TIMM, spec_error


def image_spec(adapter: dict, backbone: dict | None = None) -> dict:
    return {"inputs": {"scan": {"adapter": {"type": "image", **adapter},
                                "backbone": backbone or dict(TINY_TIMM)}},
            "heads": {"y": {"type": "regression"}}}


def test_mean_std_normalise_each_channel_and_travel_in_the_model_file(roundtrip):
    spec = image_spec({"channels": 2, "mean": [1.0, 2.0], "std": [2.0, 4.0], "project_to": 3})
    model = polymodal.build(spec).eval()
    adapter = model.adapters["scan"]
    x = torch.full((1, 2, 8, 8), 5.0)
    with torch.no_grad():
        conv = adapter.projection[0]
        expected = conv(torch.tensor([2.0, 0.75]).view(1, 2, 1, 1).expand(1, 2, 8, 8))
        assert torch.allclose(adapter(x), expected)
    loaded = roundtrip(model)
    assert torch.equal(loaded.adapters["scan"].mean, adapter.mean)
    assert torch.equal(loaded.adapters["scan"].std, adapter.std)


def test_imagenet_preset_uses_imagenet_statistics():
    model = polymodal.build(image_spec({"channels": 3, "normalize": "imagenet"}))
    adapter = model.adapters["scan"]
    assert adapter.mean.flatten().tolist() == pytest.approx([0.485, 0.456, 0.406])
    assert adapter.std.flatten().tolist() == pytest.approx([0.229, 0.224, 0.225])
    out = adapter(torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1).expand(1, 3, 4, 4))
    assert torch.allclose(out, torch.zeros(1, 3, 4, 4), atol=1e-6)


def test_imagenet_preset_follows_named_band_order():
    model = polymodal.build(image_spec({"channels": 3, "normalize": "imagenet",
                                        "bands": ["Blue", "green", "red"]}))
    assert model.adapters["scan"].mean.flatten().tolist() == pytest.approx([0.406, 0.456, 0.485])
    message = spec_error(image_spec({"channels": 3, "normalize": "imagenet",
                                     "bands": ["red", "green", "nir"]}, {**TINY_TIMM}))
    assert "inputs.scan.adapter: " in message and "(red, green, nir)" in message


@pytest.mark.parametrize("adapter, where, words", [
    ({"channels": 4, "normalize": "imagenet"}, "inputs.scan.adapter", "3 channels"),
    ({"channels": 2, "mean": [0.0]}, "inputs.scan.adapter", "mean has 1 values"),
    ({"channels": 2, "std": [1.0, 0.0]}, "inputs.scan.adapter", "std values must be > 0"),
    ({"channels": 2, "bands": ["red"]}, "inputs.scan.adapter", "bands has 1 names"),
    ({"channels": 2, "bands": ["nir", "NIR"]}, "inputs.scan.adapter", "nir more than once"),
    ({"channels": 0}, "inputs.scan.adapter.channels", "greater than 0"),
    ({"channels": 3, "projection_nrom": True}, "inputs.scan.adapter.projection_nrom",
     "projection_norm"),
    ({"augment": {"crop_padding": -1}}, "inputs.scan.adapter.augment.crop_padding",
     "greater than or equal to 0"),
    ({"augment": {"hflp": True}}, "inputs.scan.adapter.augment.hflp", "Did you mean 'hflip'"),
    ({"augment": {"noise_std": -0.1}}, "inputs.scan.adapter.augment.noise_std",
     "greater than or equal to 0"),
])
def test_bad_options_name_their_place(adapter, where, words):
    message = spec_error(image_spec(adapter))
    assert message.startswith(where + ":") and words in message


def test_channel_mismatch_offers_both_routes():
    message = spec_error(image_spec({"channels": 5}))
    assert "inputs.scan.adapter: gives a feature map of 5 channels" in message
    assert "set project_to: 3" in message and "in_chans: 5" in message


def test_projection_gives_backbone_channels_and_optional_norm():
    spec = image_spec({"channels": 12, "project_to": 3, "projection_norm": True})
    model = polymodal.build(spec)
    projection = model.adapters["scan"].projection
    assert isinstance(projection[1], torch.nn.BatchNorm2d)
    assert model({"scan": torch.randn(2, 12, 32, 32)})["y"].shape == (2, 1)
    plain = polymodal.build(image_spec({"channels": 12, "project_to": 3}))
    assert len(plain.adapters["scan"].projection) == 1  # no norm unless asked


def test_stem_route_takes_n_channels_without_projection():
    spec = image_spec({"channels": 7}, {**TINY_TIMM, "in_chans": 7})
    model = polymodal.build(spec)
    assert isinstance(model.adapters["scan"].projection, torch.nn.Identity)
    stem = model.input_backbones["scan"].model.conv1[0]
    assert stem.in_channels == 7
    assert model({"scan": torch.randn(2, 7, 32, 32)})["y"].shape == (2, 1)


def test_band_names_travel_in_the_model_file(roundtrip):
    bands = ["red", "green", "blue", "nir", "swir1"]
    spec = image_spec({"channels": 5, "bands": bands}, {**TINY_TIMM, "in_chans": 5})
    loaded = roundtrip(polymodal.build(spec))
    assert loaded.spec.inputs["scan"].adapter.bands == bands
    assert loaded.input_backbones["scan"].takes.bands == tuple(bands)


def test_bad_image_tensor_is_a_data_error():
    model = polymodal.build(image_spec({"channels": 3}))
    with pytest.raises(polymodal.DataError, match=r"expected a \[batch, 3, height, width\]"):
        model({"scan": torch.randn(2, 4, 32, 32)})


def test_inputs_with_different_channel_counts_share_one_backbone():
    spec = {
        "inputs": {
            "mri": {"adapter": {"type": "image", "channels": 1, "project_to": 3}, "backbone": "base"},
            "ct": {"adapter": {"type": "image", "channels": 2, "project_to": 3}, "backbone": "base"},
            "rgb": {"adapter": {"type": "image", "channels": 3}, "backbone": "base"},
        },
        "backbones": {"base": dict(TINY_TIMM)},
        "heads": {"mri_y": {"type": "classification", "classes": 2, "inputs": ["mri"]},
                  "ct_y": {"type": "classification", "classes": 4, "inputs": ["ct"]},
                  "rgb_y": {"type": "classification", "classes": 3, "inputs": ["rgb"]}},
    }
    model = polymodal.build(spec)
    assert len(model.backbones) == 1
    out = model({"mri": torch.randn(2, 1, 32, 32), "ct": torch.randn(2, 2, 32, 32)})
    assert set(out) == {"mri_y", "ct_y"}  # rgb absent: its head is skipped
    assert out["ct_y"].shape == (2, 4)
    loss = out["mri_y"].sum() + out["ct_y"].sum()
    loss.backward()
    shared = next(model.backbones["base"].parameters())
    assert shared.grad is not None
    assert model.adapters["mri"].projection[0].weight.grad is not None
    assert model.backbones["base"].model.conv1[0].in_channels == 3


def _codec(adapter: dict, backbone: dict):
    from polymodal._data.binding import Binding
    from polymodal._spec import load_spec

    return Binding(load_spec(image_spec(adapter, backbone))).input_codec("scan")


def test_what_the_adapter_expects_of_a_row_is_told_to_clients():
    bands = ["red", "green", "blue", "nir", "swir1"]
    fixed = _codec({"channels": 5, "bands": bands}, {**TINY_TIMM, "in_chans": 5})
    # no size option: every image must have the size the training images had
    assert fixed.expects({"shape": [24, 32]}) == {
        "channels": 5, "bands": bands, "height": 24, "width": 32, "resized": False}
    resized = _codec({"channels": 3, "size": [16, 20]}, TINY_TIMM)
    assert resized.expects({"shape": [16, 20]}) == {
        "channels": 3, "height": 16, "width": 20, "resized": True}


def test_images_of_one_shape_are_resized_together_exactly_as_one_by_one():
    import numpy as np

    from polymodal_plugins.image import _scaled

    codec = _codec({"channels": 3, "size": 16}, TINY_TIMM)
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (3, 32, 32), dtype=np.uint8) for _ in range(5)]
    images += [rng.integers(0, 256, (3, 40, 24), dtype=np.uint8), None,
               rng.integers(0, 256, (3, 16, 16), dtype=np.uint8)]
    resized = codec._resized(images)
    for image, got in zip(images, resized):
        if image is None:
            assert got is None
            continue
        alone = torch.from_numpy(image)
        if image.shape[1:] != (16, 16):
            alone = torch.nn.functional.interpolate(_scaled(alone)[None], size=(16, 16),
                                                    mode="bilinear", antialias=True,
                                                    align_corners=False)[0]
        assert torch.equal(got, alone)

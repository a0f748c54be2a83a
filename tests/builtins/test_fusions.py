"""Fusions: concat, attention, gated, film; presence masks and modality dropout."""

from __future__ import annotations

import copy

import pytest
import torch

import polymodal
from builtin_helpers import TINY_TIMM, photo_and_table, photo_and_table_batch, randomize, spec_error

FUSIONS = {
    "concat": {"type": "concat", "hidden": [16]},
    "attention": {"type": "attention", "dim": 16, "heads": 2},
    "attention_mean": {"type": "attention", "dim": 16, "heads": 2, "pooling": "mean",
                       "layers": 2},
    "gated": {"type": "gated", "dim": 16},
    "film": {"type": "film", "target": "photo", "stages": [2, 4]},
}


def build(fusion: dict, **photo_backbone):
    torch.manual_seed(0)
    model = polymodal.build(photo_and_table(fusion, **photo_backbone))
    randomize(model.fusions)  # zero-initialised parts (film, placeholders) would hide effects
    return model.eval()


@pytest.mark.parametrize("name", list(FUSIONS))
def test_shapes_and_gradient_flow_into_every_input(name):
    model = build(FUSIONS[name], output="feature_map")
    model.train()
    out = model(photo_and_table_batch(4))["label"]
    assert out.shape == (4, 3)
    out.sum().backward()
    assert model.input_backbones["photo"].model.conv1[0].weight.grad.abs().sum() > 0
    assert model.adapters["table"].embeddings["make"].weight.grad.abs().sum() > 0
    # Placeholders stand in for absent inputs only, and none is absent here.
    assert all(p.grad is not None for n, p in model.fusions.named_parameters()
               if "placeholder" not in n)



def test_a_batch_without_any_heads_inputs_says_how_to_mark_them_absent():
    model = build(FUSIONS["concat"])
    batch = photo_and_table_batch(2)
    del batch["photo"]
    with pytest.raises(polymodal.DataError, match="no head can be computed from the batch's"
                       " input\\(s\\) 'table': label needs photo, table. .* present="):
        model(batch)

@pytest.mark.parametrize("name", list(FUSIONS))
@pytest.mark.parametrize("absent", ["photo", "table"])
def test_an_absent_input_has_no_influence(name, absent):
    model = build(FUSIONS[name], output="feature_map")
    batch = photo_and_table_batch(3)
    other = photo_and_table_batch(3, seed=7)
    changed = dict(batch)
    changed[absent] = other[absent]
    if absent == "photo":
        changed["photo"] = other["photo"] * 5 + 2
    present = {absent: torch.tensor([False, True, False])}
    with torch.no_grad():
        a = model(batch, present=present)["label"]
        b = model(changed, present=present)["label"]
        # NaN in an absent image must not leak either.
        if absent == "photo":
            poisoned = dict(batch, photo=torch.full_like(batch["photo"], float("nan")))
            assert torch.allclose(model(poisoned, present=present)["label"][[0, 2]], a[[0, 2]],
                                  atol=1e-6)
    assert torch.allclose(a[[0, 2]], b[[0, 2]], atol=1e-6)
    assert (a[1] - b[1]).abs().max() > 1e-4  # the present row does see the change


@pytest.mark.parametrize("name", ["concat", "attention_mean", "gated"])
def test_a_sample_with_nothing_present_still_gets_a_finite_prediction(name):
    model = build(FUSIONS[name])
    present = {"photo": torch.tensor([False, True]), "table": torch.tensor([False, True])}
    out = model(photo_and_table_batch(2), present=present)["label"]
    assert torch.isfinite(out).all()


def test_concat_puts_the_learned_placeholder_in_place_of_an_absent_input():
    model = build({"type": "concat"})
    batch = photo_and_table_batch(2)
    with torch.no_grad():
        out = model(batch, present={"table": torch.tensor([False, True])})["label"]
        photo = model.encode(batch)["photo"]
        placeholder = model.fusions["photo+table"].placeholders["table"]
        fused = torch.cat([photo[0], placeholder])
        assert torch.allclose(out[0], model.heads["label"](fused[None])[0], atol=1e-5)


def test_concat_gives_the_sum_of_widths_or_its_mlp_width():
    plan = polymodal.plan(polymodal.load_spec(photo_and_table({"type": "concat"})))
    assert plan.fused[("photo", "table")] == polymodal.plugin.Vector(512 + 16)
    plan = polymodal.plan(polymodal.load_spec(photo_and_table(FUSIONS["concat"])))
    assert plan.fused[("photo", "table")] == polymodal.plugin.Vector(16)


def test_attention_takes_spatial_and_per_column_tokens():
    spec = photo_and_table(FUSIONS["attention"], output="tokens")
    spec["inputs"]["table"] = {"adapter": {"type": "tabular", "categorical": {"make": 5},
                                           "numerical": ["age"], "output": "tokens",
                                           "token_dim": 8}}
    model = polymodal.build(spec).eval()
    fusion = model.fusions["photo+table"]
    seen = {}
    fusion.encoder.register_forward_hook(lambda m, args, out: seen.setdefault("x", out))
    model(photo_and_table_batch(2))
    # 1 summary token + 2x2 positions of the 64 px photo + 2 table columns, projected to 16
    batch = photo_and_table_batch(2)
    batch["photo"] = torch.randn(2, 3, 64, 64)
    seen.clear()
    model(batch)
    assert seen["x"].shape == (2, 1 + 4 + 2, 16)


def test_attention_heads_must_divide_dim():
    spec = photo_and_table({"type": "attention", "dim": 10, "heads": 3})
    assert spec_error(spec).startswith("fusion: ") and "heads (3) must divide dim (10)" in spec_error(spec)


def test_gated_weights_are_a_softmax_over_present_inputs():
    model = build(FUSIONS["gated"])
    fusion = model.fusions["photo+table"]
    features = {"photo": torch.randn(2, 512), "table": torch.randn(2, 16)}
    only_photo = fusion(features, {"table": torch.tensor([False, False])})
    expected = torch.tanh(fusion.transforms["photo"](features["photo"]))
    assert torch.allclose(only_photo, expected, atol=1e-6)  # all weight on the one present input
    both = fusion(features)
    h_photo = torch.tanh(fusion.transforms["photo"](features["photo"]))
    h_table = torch.tanh(fusion.transforms["table"](features["table"]))
    low = torch.minimum(h_photo, h_table) - 1e-6
    high = torch.maximum(h_photo, h_table) + 1e-6
    assert ((both >= low) & (both <= high)).all()  # a convex combination, per feature


def test_film_conditioning_changes_the_image_path():
    model = build(FUSIONS["film"], output="feature_map")
    batch = photo_and_table_batch(2)
    other = dict(batch, table=photo_and_table_batch(2, seed=3)["table"])
    # combine: target, so the table reaches the output only through the image backbone
    target_only = build({**FUSIONS["film"], "combine": "target"}, output="feature_map")
    with torch.no_grad():
        a, b = model(batch)["label"], model(other)["label"]
        ta, tb = target_only(batch)["label"], target_only(other)["label"]
        assert torch.equal(target_only.encode(batch)["photo"], target_only.encode(other)["photo"])
    assert not torch.allclose(a, b, atol=1e-4)
    assert not torch.allclose(ta, tb, atol=1e-4)


def test_film_starts_as_identity_on_the_backbone():
    spec = photo_and_table({**FUSIONS["film"], "combine": "target"})
    model = polymodal.build(spec).eval()
    batch = photo_and_table_batch(2)
    with torch.no_grad():
        plain = model.encode(batch)["photo"]
        fused = model.fusions["photo+table"]
        assert torch.allclose(model(batch)["label"], model.heads["label"](plain), atol=1e-6)
    assert fused.generators["2"][-1].linear.weight.abs().sum() == 0


def test_film_modulates_exactly_the_declared_stages():
    model = build(FUSIONS["film"])
    backbone = model.input_backbones["photo"]
    called = []
    fusion = model.fusions["photo+table"]
    original = fusion.modulate

    def spy(target, stage, output, features, present=None):
        called.append((target, stage, tuple(output.shape)))
        return original(target, stage, output, features, present)

    fusion.modulate = spy
    model(photo_and_table_batch(2))
    assert called == [("photo", 2, (2, 128, 4, 4)), ("photo", 4, (2, 512, 1, 1))]
    assert not backbone.stage_modules()[2]._forward_hooks  # hooks removed afterwards


@pytest.mark.parametrize("fusion, words", [
    ({"type": "film", "target": "photo", "stages": [5]},
     "fusion: for inputs photo, table: stage(s) 5 of input 'photo' do not exist"),
    ({"type": "film", "target": "table", "stages": [1]},
     "its backbone (mlp [16]) exposes no stages"),
    ({"type": "film", "target": "scan", "stages": [1]}, "target 'scan' is not among these"),
    ({"type": "film", "target": "photo", "stages": []}, "fusion.stages:"),
    ({"type": "film", "target": "photo", "stages": [1, 1]}, "a stage is listed twice"),
])
def test_film_bad_options(fusion, words):
    assert words in spec_error(photo_and_table(fusion))


def test_film_on_torchvision_stages():
    spec = photo_and_table(FUSIONS["film"])
    spec["inputs"]["photo"]["backbone"] = {"type": "torchvision", "model": "resnet18"}
    model = polymodal.build(spec)
    randomize(model.fusions)
    batch = photo_and_table_batch(2)
    other = dict(batch, table=photo_and_table_batch(2, seed=3)["table"])
    model.eval()
    with torch.no_grad():
        assert not torch.allclose(model(batch)["label"], model(other)["label"], atol=1e-4)


def test_modality_dropout_drops_inputs_in_training_only():
    model = build({"type": "concat", "modality_dropout": 0.5})
    fusion = model.fusions["photo+table"]
    fusion.train()
    torch.manual_seed(0)
    masks = fusion.presence(["photo", "table"], None, 1000)
    kept = torch.stack([masks["photo"], masks["table"]], dim=1)
    assert kept.any(dim=1).all()  # never everything
    assert 0.2 < (~kept[:, 0]).float().mean() < 0.45
    given = {"photo": torch.zeros(1000, dtype=torch.bool)}
    masks = fusion.presence(["photo", "table"], given, 1000)
    assert not masks["photo"].any() and masks["table"].all()  # the only present input stays
    fusion.eval()
    assert fusion.presence(["photo", "table"], None, 1000) is None


def test_modality_dropout_changes_training_outputs_not_eval_outputs():
    spec = photo_and_table({"type": "concat", "modality_dropout": 0.9})
    spec["inputs"]["photo"]["backbone"]["freeze"] = "batchnorm"  # batch statistics aside
    model = polymodal.build(spec)
    randomize(model.fusions)
    batch = photo_and_table_batch(8)
    model.eval()
    with torch.no_grad():
        reference = model(batch)["label"]
        model.train()
        torch.manual_seed(1)
        dropped = model(batch)["label"]
    assert not torch.allclose(dropped, reference)
    model.eval()
    assert torch.allclose(model(batch)["label"], reference)


def test_present_masks_are_checked():
    model = build({"type": "concat"})
    with pytest.raises(polymodal.DataError, match="present names unknown input"):
        model(photo_and_table_batch(2), present={"scan": torch.tensor([True, True])})
    with pytest.raises(polymodal.DataError, match=r"present\['table'\] has 3 values"):
        model(photo_and_table_batch(2), present={"table": torch.tensor([True, True, False])})


def test_modality_dropout_is_an_option_of_every_fusion():
    for fusion in FUSIONS.values():
        bad = {**fusion, "modality_dropout": 1.5}
        assert spec_error(photo_and_table(bad)).startswith("fusion.modality_dropout:")


def test_heads_over_different_inputs_get_their_own_fusion_and_run_when_theirs_are_present():
    spec = photo_and_table(FUSIONS["attention"])
    spec["heads"] = {"both": {"type": "classification", "classes": 3},
                     "photo_only": {"type": "regression", "inputs": ["photo"]},
                     "table_only": {"type": "multilabel", "labels": 4, "inputs": ["table"]}}
    model = polymodal.build(spec).eval()
    assert set(model.fusions) == {"photo+table", "photo", "table"}
    batch = photo_and_table_batch(2)
    assert set(model(batch)) == {"both", "photo_only", "table_only"}
    assert set(model({"table": batch["table"]})) == {"table_only"}


@pytest.mark.parametrize("name", list(FUSIONS))
def test_save_load_gives_the_same_outputs(name, roundtrip):
    model = build(copy.deepcopy(FUSIONS[name]), output="feature_map")
    loaded = roundtrip(model)
    batch = photo_and_table_batch(2)
    present = {"table": torch.tensor([True, False])}
    with torch.no_grad():
        assert torch.allclose(model(batch, present=present)["label"],
                              loaded(batch, present=present)["label"], atol=1e-5)

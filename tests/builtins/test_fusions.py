"""Fusions: concat, attention, gated, film; every signal kind, presence masks and modality
dropout."""

from __future__ import annotations

import copy

import pytest
import torch

import polymodal
from polymodal.plugin import ComponentError, FeatureMap, FusionInputs, Sequence, Tokens, Vector
from polymodal_plugins.attention import AttentionFusion
from polymodal_plugins.concat import ConcatFusion
from polymodal_plugins.film import FiLMFusion
from polymodal_plugins.gated import GatedFusion
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


# -- every signal kind: fusions pool and tokenise each input as its signal says -------------

MODULES = {
    "concat": (ConcatFusion, {"hidden": [8]}),
    "attention": (AttentionFusion, {"dim": 8, "heads": 2}),
    "attention_mean": (AttentionFusion, {"dim": 8, "heads": 2, "pooling": "mean"}),
    "gated": (GatedFusion, {"dim": 8}),
    "film": (FiLMFusion, {"target": "photo", "stages": [1]}),
}
#: Every kind at once; film conditions ``photo`` on the others.
MIX = {"photo": FeatureMap(4), "table": Vector(5), "notes": Tokens(6), "ecg": Sequence(3)}
#: Inputs of one kind only, each beside the photo film needs as its target.
ONE_KIND = {
    "sequences": {"ecg": Sequence(3), "eeg": Sequence(2)},
    "tokens": {"notes": Tokens(6), "words": Tokens(4)},
    "one_sequence": {"ecg": Sequence(3)},
}
#: Positions along each free axis (none equal to a width, so a wrong axis shows).
SHAPES = {FeatureMap: lambda n, w: (n, w, 3, 5), Vector: lambda n, w: (n, w),
          Tokens: lambda n, w: (n, 7, w), Sequence: lambda n, w: (n, w, 11)}


def takes_for(name: str, takes: dict) -> dict:
    return {"photo": FeatureMap(4), **takes} if name == "film" else takes


def fusion_module(name: str, takes: dict, seed: int = 0):
    cls, options = MODULES[name]
    config = cls.Config(**options)
    stages = {"photo": (FeatureMap(4), FeatureMap(4))} if name == "film" else {}
    torch.manual_seed(seed)
    module = cls(config, FusionInputs(takes, stages))
    randomize(module, seed)
    return module.eval(), config.gives(FusionInputs(takes, stages))


def features_for(takes: dict, n: int = 3, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {name: torch.randn(SHAPES[type(s)](n, s.width), generator=g) for name, s in takes.items()}


@pytest.mark.parametrize("inputs", ["mix", *ONE_KIND])
@pytest.mark.parametrize("name", list(MODULES))
def test_every_fusion_takes_every_signal_kind_and_gradients_reach_each_input(name, inputs):
    takes = takes_for(name, MIX if inputs == "mix" else ONE_KIND[inputs])
    module, gives = fusion_module(name, takes)
    module.train()
    features = {k: v.requires_grad_() for k, v in features_for(takes).items()}
    out = module(features)
    assert out.shape == (3, gives.width) and torch.isfinite(out).all()
    out.pow(2).sum().backward()
    for input_name, x in features.items():
        if name == "film" and input_name == "photo":
            continue  # film's target reaches the output through its backbone, not this call
        assert x.grad is not None and x.grad.abs().sum() > 0, input_name


@pytest.mark.parametrize("absent", list(MIX))
@pytest.mark.parametrize("name", list(MODULES))
def test_an_absent_input_of_any_kind_has_no_influence(name, absent):
    module, _ = fusion_module(name, MIX)
    batch = features_for(MIX)
    changed = dict(batch, **{absent: batch[absent] * 5 + 2})
    poisoned = dict(batch, **{absent: torch.full_like(batch[absent], float("nan"))})
    present = {absent: torch.tensor([False, True, False]),
               "table" if absent != "table" else "ecg": torch.tensor([True, True, False])}
    with torch.no_grad():
        a, b, c = (module(x, present) for x in (batch, changed, poisoned))
    assert torch.isfinite(a).all()
    assert torch.allclose(a[[0, 2]], b[[0, 2]], atol=1e-6)
    assert torch.allclose(a[[0, 2]], c[[0, 2]], atol=1e-6)
    assert (a[1] - b[1]).abs().max() > 1e-4  # the present row does see the change


@pytest.mark.parametrize("name", ["concat", "attention_mean", "gated", "film"])
def test_a_sample_with_no_input_of_any_kind_present_gets_a_finite_output(name):
    module, _ = fusion_module(name, MIX)
    absent = {n: torch.tensor([False, True, True]) for n in MIX}
    with torch.no_grad():
        assert torch.isfinite(module(features_for(MIX), absent)).all()


@pytest.mark.parametrize("name", list(MODULES))
def test_a_sequence_is_its_time_steps_and_a_map_its_positions_as_tokens(name):
    # The same weights given the same values as Tokens give the same output: each fusion treats
    # a sequence [B, C, T] as T tokens of C, a map [B, C, H, W] as H*W tokens of C.
    as_kinds = takes_for(name, {"ecg": Sequence(3), "scan": FeatureMap(2), "table": Vector(5)})
    as_tokens = takes_for(name, {"ecg": Tokens(3), "scan": Tokens(2), "table": Vector(5)})
    module, _ = fusion_module(name, as_kinds)
    reference, _ = fusion_module(name, as_tokens, seed=1)
    reference.load_state_dict(module.state_dict())
    x = features_for(as_kinds)
    tokens = dict(x, ecg=x["ecg"].transpose(1, 2), scan=x["scan"].flatten(2).transpose(1, 2))
    present = {"ecg": torch.tensor([True, False, True])}
    with torch.no_grad():
        assert torch.allclose(module(x, present), reference(tokens, present), atol=1e-5)


def test_concat_pools_each_kind_over_its_positions():
    module = ConcatFusion(ConcatFusion.Config(), FusionInputs(MIX)).eval()
    x = features_for(MIX)
    expected = torch.cat([x["photo"].mean(dim=(2, 3)), x["table"], x["notes"].mean(dim=1),
                          x["ecg"].mean(dim=2)], dim=1)
    with torch.no_grad():
        assert torch.allclose(module(x), expected, atol=1e-6)


def test_attention_gives_one_token_per_position_of_each_kind():
    module, _ = fusion_module("attention", MIX)
    seen = {}
    module.encoder.register_forward_hook(lambda m, args, out: seen.setdefault("x", out))
    with torch.no_grad():
        module(features_for(MIX))
    # summary + 3x5 map positions + 1 vector + 7 tokens + 11 time steps
    assert seen["x"].shape == (3, 1 + 15 + 1 + 7 + 11, 8)


def test_gated_with_only_a_sequence_present_gives_its_time_mean_transformed():
    takes = {"ecg": Sequence(3), "table": Vector(5)}
    module, _ = fusion_module("gated", takes)
    x = features_for(takes)
    with torch.no_grad():
        out = module(x, {"table": torch.tensor([False, False, False])})
        expected = torch.tanh(module.transforms["ecg"](x["ecg"].mean(dim=2)))
    assert torch.allclose(out, expected, atol=1e-6)


@pytest.mark.parametrize("source", [Sequence(3), Tokens(6), Vector(5), FeatureMap(2)],
                         ids=lambda s: type(s).__name__)
def test_film_is_conditioned_by_a_source_of_any_kind(source):
    takes = {"photo": FeatureMap(4), "source": source}
    module, _ = fusion_module("film", takes)
    x = features_for(takes)
    other = features_for(takes, seed=5)
    stage = torch.randn(3, 4, 6, 6)
    with torch.no_grad():
        a = module.modulate("photo", 1, stage, x)
        b = module.modulate("photo", 1, stage, dict(x, source=other["source"]))
        absent = {"source": torch.tensor([False, True, True])}
        kept = module.modulate("photo", 1, stage, x, absent)
        fused = module(x)
    assert not torch.allclose(a, b, atol=1e-4)  # the source changes the image's stage
    assert torch.equal(kept[0], stage[0])  # an absent source leaves it unchanged
    expected = torch.cat([x["photo"].mean(dim=(2, 3)), module.takes["source"].pool(x["source"])], 1)
    assert torch.allclose(fused, expected, atol=1e-6)


@pytest.mark.parametrize("stage_signal, output_shape, per_channel", [
    (FeatureMap(4), (3, 4, 5, 6), lambda v: v[:, :, None, None]),
    (Tokens(4), (3, 9, 4), lambda v: v[:, None, :]),
    (Sequence(4), (3, 4, 10), lambda v: v[:, :, None]),
    (Vector(4), (3, 4), lambda v: v),
], ids=["feature_map", "tokens", "sequence", "vector"])
def test_film_scales_and_shifts_each_channel_of_a_stage_of_any_kind(stage_signal, output_shape,
                                                                     per_channel):
    takes = {"photo": FeatureMap(4), "ecg": Sequence(3)}
    config = FiLMFusion.Config(target="photo", stages=[0])
    module = FiLMFusion(config, FusionInputs(takes, {"photo": (stage_signal,)})).eval()
    randomize(module)
    x = features_for(takes)
    output = torch.randn(output_shape)
    with torch.no_grad():
        scale, shift = module.generators["0"](x["ecg"].mean(dim=2)).chunk(2, dim=1)
        expected = output * (1 + per_channel(scale)) + per_channel(shift)
        assert torch.allclose(module.modulate("photo", 0, output, x), expected, atol=1e-6)


def test_film_names_a_stage_that_does_not_give_what_its_backbone_declares():
    takes = {"photo": FeatureMap(4), "ecg": Sequence(3)}
    module = FiLMFusion(FiLMFusion.Config(target="photo", stages=[0]),
                        FusionInputs(takes, {"photo": (FeatureMap(4),)}))
    tokens = torch.randn(2, 9, 4)  # a transformer stage declared as a feature map
    with pytest.raises(ComponentError, match=r"film: stage 0 of input 'photo' does not give what"
                       r" its backbone declares for it: expected a feature map of 4 channels"
                       r" \(\[B, 4, H, W\]\), got a tensor of shape \[2, 9, 4\]"):
        module.modulate("photo", 0, tokens, features_for(takes, n=2))


def test_film_conditions_an_image_on_a_table_given_as_tokens():
    spec = photo_and_table(FUSIONS["film"], output="feature_map")
    spec["inputs"]["table"] = {"adapter": {"type": "tabular", "categorical": {"make": 5},
                                           "numerical": ["age"], "output": "tokens",
                                           "token_dim": 8}}
    model = polymodal.build(spec)
    randomize(model.fusions)
    model.eval()
    fusion = model.fusions["photo+table"]
    assert fusion.takes["table"] == Tokens(8)
    batch = photo_and_table_batch(2)
    other = dict(batch, table=photo_and_table_batch(2, seed=3)["table"])
    with torch.no_grad():
        a, b = model(batch)["label"], model(other)["label"]
    assert a.shape == (2, 3) and not torch.allclose(a, b, atol=1e-4)

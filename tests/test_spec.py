"""Reading and validating specs: formats, and one clear error per bad input."""

from __future__ import annotations

import json
from typing import Literal

import pytest
import torch
from pydantic import field_validator

import polymodal
from polymodal._errors import SpecError


def error_of(spec) -> str:
    with pytest.raises(SpecError) as info:
        polymodal.build(spec)
    return str(info.value)


# -- the same model from YAML, TOML and JSON -------------------------------------------------


def test_yaml_toml_json_give_the_same_model(multimodal_spec, spec_file, batch_for):
    batch = batch_for(multimodal_spec)
    results = {}
    for fmt in ("yaml", "toml", "json"):
        path = spec_file(multimodal_spec, fmt)
        spec = polymodal.load_spec(path)
        torch.manual_seed(7)
        model = polymodal.build(spec).eval()
        with torch.no_grad():
            results[fmt] = (
                {k: tuple(v.shape) for k, v in model.state_dict().items()},
                model(batch),
                spec.to_dict(),
            )
    shapes, outputs, data = results["yaml"]
    for fmt in ("toml", "json"):
        assert results[fmt][0] == shapes
        assert results[fmt][2] == data
        for head, value in outputs.items():
            assert torch.equal(results[fmt][1][head], value), (fmt, head)


def test_spec_from_dict_and_file_agree(image_spec, spec_file):
    from_dict = polymodal.load_spec(image_spec)
    from_file = polymodal.load_spec(spec_file(image_spec, "json"))
    assert from_dict.to_dict() == from_file.to_dict()
    assert from_dict.to_dict()["inputs"]["photo"]["adapter"]["type"] == "polymodal:image"


def test_canonical_type_ids_are_accepted(image_spec):
    image_spec["inputs"]["photo"]["adapter"]["type"] = "polymodal:image"
    spec = polymodal.load_spec(image_spec)
    assert spec.inputs["photo"].adapter.type == "image"


def test_input_without_backbone_feeds_fusion_directly():
    spec = {
        "inputs": {
            "row": {"adapter": {"type": "tabular", "numerical": ["a", "b", "c"],
                                "missing_indicators": False}},
        },
        "heads": {"y": {"type": "regression"}},
    }
    model = polymodal.build(spec)
    out = model({"row": {c: torch.randn(5) for c in "abc"}})
    assert out["y"].shape == (5, 1)
    assert sum(p.numel() for p in model.parameters()) == 3 + 1  # Linear(3, 1)


# -- bad specs: the location, what is wrong, and the fix -------------------------------------


def test_unknown_type_suggests_close_match(image_spec):
    image_spec["inputs"]["photo"]["adapter"]["type"] = "imag"
    message = error_of(image_spec)
    assert "inputs.photo.adapter.type" in message
    assert "unknown adapter type 'imag'" in message
    assert "'image'" in message


def test_unknown_type_known_to_the_catalog_names_the_package(image_spec):
    image_spec["inputs"]["photo"]["adapter"]["type"] = "signal"
    message = error_of(image_spec)
    assert "pip install" in message and "polymodal-signal" in message
    # the package named in the type and known to the catalog: one install line, not two
    image_spec["inputs"]["photo"]["adapter"]["type"] = "polymodal-signal:signal"
    message = error_of(image_spec)
    assert "It is provided by the plugin package polymodal-signal" in message
    assert "is not installed" not in message


def test_unknown_key_suggests_close_match(image_spec):
    image_spec["inputs"]["photo"]["adapter"]["chanels"] = 3
    message = error_of(image_spec)
    assert "inputs.photo.adapter.chanels: unknown key" in message
    assert "Did you mean 'channels'" in message



def test_a_misspelt_required_key_is_one_problem_not_two(image_spec):
    image_spec["inputs"]["photo"]["backbone"] = {"type": "mlp", "hiden": [16]}
    message = error_of(image_spec)
    assert "inputs.photo.backbone.hiden: unknown key. Did you mean 'hidden'?" in message
    assert "Field required" not in message
    image_spec["inputs"]["photo"]["backbone"] = {"type": "mlp", "layers": [16]}
    message = error_of(image_spec)  # nothing like it: the missing key is said too
    assert "inputs.photo.backbone.hidden: Field required" in message

def test_unknown_top_level_key(image_spec):
    image_spec["head"] = {}
    message = error_of(image_spec)
    assert "head: unknown key" in message and "'heads'" in message


def test_unknown_input_key(image_spec):
    image_spec["inputs"]["photo"]["backbon"] = "vision"
    message = error_of(image_spec)
    assert "inputs.photo.backbon: unknown key" in message and "'backbone'" in message


def test_channel_mismatch_says_set_project_to(image_spec):
    image_spec["inputs"]["photo"]["adapter"]["channels"] = 5
    message = error_of(image_spec)
    assert message.startswith("inputs.photo.adapter: gives a feature map of 5 channels")
    assert "backbone 'vision' (timm resnet10t) takes a feature map of 3 channels" in message
    assert "; set project_to: 3" in message
    image_spec["inputs"]["photo"]["adapter"]["project_to"] = 3
    polymodal.build(image_spec)  # the suggested fix works


@pytest.mark.parametrize(
    ("path", "value", "location"),
    [
        (("inputs", "photo", "adapter", "channels"), 0, "inputs.photo.adapter.channels"),
        (("inputs", "photo", "adapter", "project_to"), -3, "inputs.photo.adapter.project_to"),
        (("heads", "label", "classes"), 1, "heads.label.classes"),
        (("heads", "label", "classes"), -2, "heads.label.classes"),
    ],
)
def test_non_positive_sizes(image_spec, path, value, location):
    node = image_spec
    for part in path[:-1]:
        node = node[part]
    node[path[-1]] = value
    message = error_of(image_spec)
    assert message.startswith(f"{location}: ")
    assert "greater than" in message and f"(got {value})" in message


def test_non_positive_sizes_in_lists_and_mappings(multimodal_spec):
    multimodal_spec["inputs"]["report"]["backbone"]["hidden"] = [16, 0]
    multimodal_spec["inputs"]["report"]["adapter"]["categorical"]["make"] = 0
    multimodal_spec["fusion"]["hidden"] = [-1]
    message = error_of(multimodal_spec)
    assert "3 problems" in message
    assert "inputs.report.backbone.hidden[1]: Input should be greater than 0" in message
    # One message for the column, not one per member of the option's union (int or "auto").
    assert ("inputs.report.adapter.categorical.make: Input should be greater than 0"
            " or be 'auto' (got 0)") in message
    assert "fusion.hidden[0]: Input should be greater than 0" in message


def test_head_naming_unknown_input(multimodal_spec):
    multimodal_spec["heads"]["cost"]["inputs"] = ["reprot"]
    message = error_of(multimodal_spec)
    assert "heads.cost.inputs[0]: unknown input 'reprot'" in message
    assert "'report'" in message


def test_unknown_backbone_reference(image_spec):
    image_spec["inputs"]["photo"]["backbone"] = "visoin"
    message = error_of(image_spec)
    assert "inputs.photo.backbone: unknown backbone 'visoin'" in message
    assert "'vision'" in message and "Named backbones: vision" in message


@pytest.mark.parametrize(
    ("backbone", "wrong", "close"),
    [("timm", "resnet181", "'resnet18'"), ("torchvision", "resnet19", "'resnet18'")],
)
def test_unknown_model_name_gives_close_matches(image_spec, backbone, wrong, close):
    image_spec["backbones"]["vision"] = {"type": backbone, "model": wrong}
    message = error_of(image_spec)
    assert message.startswith("backbones.vision: unknown")
    assert f"model {wrong!r}" in message and close in message


def test_missing_fusion_for_a_head_over_two_inputs(multimodal_spec):
    del multimodal_spec["fusion"]
    message = error_of(multimodal_spec)
    assert "fusion: missing: head 'fraud' uses 2 inputs" in message
    assert "concat" in message


def test_every_problem_is_reported_at_once(image_spec):
    image_spec["inputs"]["photo"]["adapter"]["chanels"] = 3
    image_spec["heads"]["label"]["classes"] = 0
    image_spec["backbones"]["vision"]["pretrained"] = "yes please"
    del image_spec["backbones"]["vision"]["model"]
    message = error_of(image_spec)
    assert "problems in the spec" in message
    for location in ("inputs.photo.adapter.chanels", "heads.label.classes",
                     "backbones.vision.model"):
        assert location in message


def test_invalid_names(image_spec):
    image_spec["heads"]["2nd-label"] = image_spec["heads"].pop("label")
    assert "heads.2nd-label: name '2nd-label' is not valid" in error_of(image_spec)


# -- spec files that cannot be read ----------------------------------------------------------


@pytest.mark.parametrize(
    ("suffix", "text", "expected"),
    [
        (".yaml", "", "the spec is empty"),
        (".yaml", "# only a comment\n", "the spec is empty"),
        (".json", "", "JSON syntax error at line 1, column 1"),
        (".toml", "", "the spec is empty"),
        (".json", "{}", "inputs: missing: a spec needs at least one entry"),
        (".yaml", "name: x\n", "inputs: missing: a spec needs at least one entry in `inputs`"),
        (".yaml", "inputs: [unclosed\n", "YAML syntax error at line 2"),
        (".yaml", "inputs: {}\ninputs: {}\n", "duplicate key 'inputs' (line 2)"),
        (".toml", "inputs = [", "TOML syntax error"),
        (".json", '{"inputs": {}', "JSON syntax error at line 1"),
        (".yaml", "just some words", "a spec is a mapping (inputs, heads, ...), not str"),
        (".json", "[1, 2]", "a spec is a mapping (inputs, heads, ...), not list"),
        (".yaml", "!!python/object/apply:os.system ['echo hi']", "YAML syntax error"),
        (".txt", "inputs: {}", "unknown spec file type '.txt'"),
    ],
)
def test_unreadable_spec_files(tmp_path, suffix, text, expected):
    path = tmp_path / f"spec{suffix}"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(SpecError) as info:
        polymodal.load_spec(path)
    message = str(info.value)
    assert message.startswith(f"{path}: ")
    assert expected in message


def test_binary_garbage_spec(tmp_path):
    path = tmp_path / "spec.yaml"
    path.write_bytes(bytes(range(256)) * 4)
    with pytest.raises(SpecError, match=r"spec\.yaml: cannot read"):
        polymodal.load_spec(path)


def test_missing_spec_file(tmp_path):
    with pytest.raises(SpecError, match="no such file"):
        polymodal.load_spec(tmp_path / "nowhere.yaml")


def test_yaml_never_executes_tags(tmp_path):
    marker = tmp_path / "marker"
    path = tmp_path / "spec.yaml"
    path.write_text(f"name: !!python/object/apply:pathlib.Path.touch ['{marker}']\n")
    with pytest.raises(SpecError):
        polymodal.load_spec(path)
    assert not marker.exists()


def test_json_schema_covers_installed_components():
    import jsonschema

    from polymodal._spec import spec_json_schema

    schema = spec_json_schema()
    text = json.dumps(schema)
    for type_name in ("image", "tabular", "timm", "torchvision", "mlp", "concat", "attention",
                      "classification", "regression"):
        assert f'"{type_name}"' in text
    good = {"inputs": {"photo": {"adapter": {"type": "image", "channels": 3}}},
            "heads": {"y": {"type": "classification", "classes": 2}}}
    jsonschema.validate(good, schema)
    bad = {"inputs": {"photo": {"adapter": {"type": "image", "chanels": 3}}},
           "heads": {"y": {"type": "classification", "classes": 2}}}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, schema)


def test_a_rule_across_options_reads_as_its_own_sentence(image_spec):
    image_spec["inputs"]["photo"]["adapter"].update(channels=5, bands=["red", "green", "blue", "nir"])
    message = error_of(image_spec)
    assert "inputs.photo.adapter: bands has 4 names but the input has 5 channels" in message
    assert "Value error" not in message and "(got {" not in message


# -- what a spec's values mean, and problems with huge or odd values -------------------------


def test_yaml_reads_numbers_and_booleans_as_editors_do(tmp_path):
    from polymodal._spec_files import parse_spec_text

    data = parse_spec_text("lr: 1e-3\nbig: 2.5E+3\nflag: yes\noff: off\nok: true\nword: e5\n"
                           "day: 2024-05-01\n", "yaml")
    assert data == {"lr": 0.001, "big": 2500.0, "flag": "yes", "off": "off", "ok": True,
                    "word": "e5", "day": "2024-05-01"}


def test_values_are_not_coerced(image_spec):
    image_spec["inputs"]["photo"]["adapter"]["channels"] = "3"
    assert "inputs.photo.adapter.channels: Input should be a valid integer (got '3')" \
        in error_of(image_spec)
    image_spec["inputs"]["photo"]["adapter"]["channels"] = 3.0  # a whole number, as in JSON
    image_spec["heads"]["label"]["classes"] = True
    assert error_of(image_spec).startswith("heads.label.classes: ")


def test_empty_sections_are_empty(tmp_path):
    path = tmp_path / "spec.yaml"
    path.write_text("inputs: {x: {adapter: {type: tabular, numerical: [a]}}}\n"
                    "heads: {y: {type: regression}}\nbackbones:\ntraining:\nfusion:\n")
    spec = polymodal.load_spec(path)
    assert spec.backbones == {} and spec.fusion is None and spec.training.epochs == 10


def test_an_alias_bomb_is_answered_at_once_with_a_short_message(tmp_path):
    import time

    lines = ["description:", "  a: &a [" + ", ".join(["lol"] * 9) + "]"]
    for before, name in zip("abcdefgh", "bcdefghi"):
        lines.append(f"  {name}: &{name} [" + ", ".join([f"*{before}"] * 9) + "]")
    lines += ["inputs: {x: {adapter: {type: tabular, numerical: *i}}}",
              "heads: {y: {type: regression, inputs: *i}}"]
    path = tmp_path / "bomb.yaml"
    path.write_text("\n".join(lines) + "\n")  # 9**9 strings, were the aliases expanded
    polymodal.load_spec({"inputs": {"x": {"adapter": {"type": "tabular", "numerical": ["a"]}}},
                         "heads": {"y": {"type": "regression"}}})  # plugins imported before
    started = time.perf_counter()
    with pytest.raises(SpecError, match="holds more than 100,000 values once its aliases are"
                                        " expanded"):
        polymodal.load_spec(path)
    assert time.perf_counter() - started < 10


def test_a_wrong_value_with_aliases_is_shown_as_an_excerpt(tmp_path):
    lines = ["description:", "  a: &a [" + ", ".join(["lol"] * 9) + "]"]
    for before, name in zip("abc", "bcd"):
        lines.append(f"  {name}: &{name} [" + ", ".join([f"*{before}"] * 9) + "]")
    lines += ["inputs: {x: {adapter: {type: tabular, numerical: *d}}}",
              "heads: {y: {type: regression, inputs: *d}}"]
    path = tmp_path / "aliases.yaml"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(SpecError) as info:
        polymodal.load_spec(path)
    message = str(info.value)
    assert len(message) < 5000
    assert "inputs.x.adapter.numerical[0]: Input should be a valid string (got [[[" in message
    assert "description: Input should be a valid string" in message


def test_values_json_has_no_form_for(tmp_path, image_spec):
    path = tmp_path / "spec.yaml"
    path.write_text("name: &me [*me]\ndescription: !!binary aGk=\ninputs: {}\n")
    with pytest.raises(SpecError) as info:
        polymodal.load_spec(path)
    assert "name[0]: this value contains itself" in str(info.value)
    assert "description: a spec holds text, numbers, true/false, lists and mappings, not bytes" \
        in str(info.value)
    import numpy as np

    image_spec["inputs"]["photo"]["adapter"]["mean"] = (0.5, 0.5, 0.5)  # a tuple is a list
    image_spec["heads"]["label"]["classes"] = np.int64(3)  # a NumPy number is a number
    image_spec["description"] = 2018
    assert error_of(image_spec) == "description: Input should be a valid string (got 2018)"


def test_a_long_list_of_problems_is_cut_short(image_spec):
    image_spec["inputs"]["photo"]["adapter"]["mean"] = ["x"] * 500
    message = error_of(image_spec)
    assert "30 problems" not in message and "31 problems in the spec" in message
    assert message.endswith("... and 470 more problems")


def test_a_huge_value_is_shown_as_an_excerpt(image_spec):
    image_spec["inputs"]["photo"]["adapter"]["channels"] = "x" * 1_000_000
    image_spec["heads"]["label"][f"colour{'r' * 1000}"] = 1
    message = error_of(image_spec)
    assert len(message) < 1000 and "xxx..." in message


@pytest.mark.parametrize(("suffix", "text", "expected"), [
    (".yaml", "classes: " + "1" * 5000, "cannot read a value"),
    (".json", '{"classes": ' + "1" * 5000 + "}", "cannot read a value"),
    (".json", "[" * 100_000 + "]" * 100_000, "nests deeper than 64 levels"),
    (".yaml", "[" * 100_000 + "]" * 100_000, "nests deeper than 64 levels"),
])
def test_values_no_reader_can_hold(tmp_path, suffix, text, expected):
    path = tmp_path / f"spec{suffix}"
    path.write_text(text)
    with pytest.raises(SpecError, match=expected):
        polymodal.load_spec(path)


# -- the spec model ----------------------------------------------------------------------------


def test_a_plugin_listed_by_a_manifest_is_imported_when_a_spec_names_it():
    import importlib.metadata as metadata

    from polymodal._registry import Registry

    points = [ep for ep in metadata.entry_points(group="polymodal")
              if ep.dist is not None and ep.dist.metadata["Name"] == "polymodal"]
    registry = Registry(entry_points=points)
    spec = {"inputs": {"x": {"adapter": {"type": "tabular", "numerical": ["a"]}}},
            "heads": {"y": {"type": "polymodal:regression"}}}
    polymodal.load_spec(spec, registry)
    loaded = {p.name for p in registry.plugins if p.status == "loaded"}
    assert loaded == {"tabular", "regression"}
    assert polymodal.load_spec(spec, registry).heads["y"].type == "regression"


def test_the_validated_spec_is_a_plain_model_spec(image_spec):
    import pickle

    spec = polymodal.load_spec(image_spec)
    assert type(spec) is polymodal.ModelSpec
    assert type(spec.inputs["photo"]).__name__ == "InputSpec"
    assert pickle.loads(pickle.dumps(spec)) == spec


def test_a_component_validator_that_crashes_is_located_and_names_its_plugin():
    from polymodal._registry import Registry
    from polymodal.plugin import Head, HeadConfig, hookimpl

    class Crashing(Head):
        """Its validator has a bug."""

        class Config(HeadConfig):
            type: Literal["crashing"] = "crashing"

            @field_validator("target")
            @classmethod
            def _bug(cls, value):
                return {value: 1}[None]  # KeyError, not a ValueError

    class Plugin:
        @hookimpl
        def polymodal_components(self):
            return [Crashing]

    registry = Registry(entry_points=[])
    registry.add_plugin(Plugin(), "buggy-heads", "0.3")
    spec = {"inputs": {"x": {"adapter": {"type": "tabular", "numerical": ["a"]}}},
            "heads": {"y": {"type": "crashing", "target": "t"}}}
    with pytest.raises(SpecError) as info:
        polymodal.load_spec(spec, registry)
    message = str(info.value)
    assert "heads.y: head 'buggy-heads:crashing' (buggy-heads 0.3) raised KeyError" in message
    assert "if the spec is right, this is a bug in buggy-heads" in message
    assert "inputs.x.adapter.type: unknown adapter type 'tabular'" in message


@pytest.mark.parametrize("value, expected", [
    (3, "size must be even, got 3"),  # the validator states the value
    (30, "size must be at most 10 (got 30)"),  # 30 is not the 10 it states
    (5, "size must be even (got 5)"),
])
def test_a_validator_s_message_gets_the_value_only_where_it_does_not_state_it(value, expected):
    from polymodal._registry import Registry
    from polymodal.plugin import Head, HeadConfig, hookimpl

    class Even(Head):
        """A head of an even size up to 10 (a test plugin)."""

        class Config(HeadConfig):
            type: Literal["even"] = "even"
            size: int = 2

            @field_validator("size")
            @classmethod
            def _even(cls, size):
                if size > 10:
                    raise ValueError("size must be at most 10")
                if size % 2:
                    raise ValueError(f"size must be even, got {size}" if size == 3
                                     else "size must be even")
                return size

    class Plugin:
        @hookimpl
        def polymodal_components(self):
            return [Even]

    registry = Registry(entry_points=[])
    registry.add_plugin(Plugin(), "even-heads", "1.0")
    spec = {"inputs": {"x": {"adapter": {"type": "tabular", "numerical": ["a"]}}},
            "heads": {"y": {"type": "even", "size": value}}}
    with pytest.raises(SpecError) as info:
        polymodal.load_spec(spec, registry)
    assert dict((where, message) for where, message, *_ in info.value.problems)[
        "heads.y.size"] == expected

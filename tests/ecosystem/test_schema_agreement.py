"""The spec's JSON Schema and validation agree.

A real JSON Schema validator (the `jsonschema` package, draft 2020-12) checks every example spec,
the specs of the docs and of the test fixtures, and variations of them, good and bad; each must
get the verdict `validate_spec_data` gives it, and for a bad one the schema's best match must point
at the place validation names. What a JSON Schema cannot say (references between parts, rules
a component checks in code, connections) is listed in BEYOND_THE_SCHEMA: there the schema must
accept and validation refuse, as docs/editor.md says.
"""

from __future__ import annotations

import copy
import re
import sys
from collections.abc import Callable
from typing import Any

import jsonschema
import pytest
from ecosystem_helpers import REPO, builtin_entry_points, entry_points_in, make_distribution

from polymodal._errors import SpecError
from polymodal._registry import Registry
from polymodal._spec import spec_json_schema, validate_spec_data
from polymodal._spec_files import parse_spec_text, read_spec_file
from polymodal._testing import minimal_spec

SIGNAL_PLUGIN = REPO / "examples" / "plugins" / "polymodal-signal"
EXAMPLES = sorted(p for p in (REPO / "examples").rglob("*.yaml") if "plugins" not in p.parts)
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md")), SIGNAL_PLUGIN / "README.md"]


@pytest.fixture(scope="module")
def entry_points(tmp_path_factory):
    """The built-ins and the example plugin polymodal-signal, installed from its source tree
    (metadata only, the way an editable install leaves it)."""
    site = tmp_path_factory.mktemp("site")
    make_distribution(site, "polymodal-signal", "0.1.0", {"signal": "polymodal_signal.plugin"})
    with pytest.MonkeyPatch.context() as patch:
        patch.syspath_prepend(str(SIGNAL_PLUGIN))
        patch.delenv("POLYMODAL_DISABLE_PLUGINS", raising=False)
        patch.delenv("POLYMODAL_PLUGINS", raising=False)
        yield builtin_entry_points() + entry_points_in(site)
    for name in [n for n in sys.modules if n.split(".")[0] == "polymodal_signal"]:
        del sys.modules[name]  # later tests import their own copy, or none


@pytest.fixture(scope="module")
def registry(entry_points):
    registry = Registry(entry_points=entry_points)
    registry.load_all()
    assert not registry.failures(), registry.failures()
    return registry


@pytest.fixture(scope="module")
def validator(registry):
    schema = spec_json_schema(registry)
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


# -- the specs -----------------------------------------------------------------------------


def _doc_specs() -> dict[str, str]:
    """Every YAML block of the docs that is a whole spec (it has inputs and heads)."""
    found = {}
    for path in DOCS:
        if path.name == "plugins.md":
            continue  # its spec uses the plugin the guide writes, which is not installed here
        blocks = re.findall(r"```yaml\n(.*?)```", path.read_text(encoding="utf-8"), re.S)
        for i, text in enumerate(blocks):
            if re.search(r"^inputs:", text, re.M) and re.search(r"^heads:", text, re.M):
                found[f"{path.relative_to(REPO)}[{i}]"] = text
    return found


DOC_SPECS = _doc_specs()


def _base(name: str) -> dict[str, Any]:
    return read_spec_file(REPO / "examples" / name)


def _changed(base: str, change: Callable[[dict[str, Any]], Any]) -> Callable[[], dict[str, Any]]:
    def make() -> dict[str, Any]:
        spec = copy.deepcopy(_base(base))
        change(spec)
        return spec
    return make


def _yaml(text: str) -> Callable[[], dict[str, Any]]:
    return lambda: parse_spec_text(text, "yaml")


TABLE_ONLY = """
inputs:
  row: {adapter: {type: tabular, numerical: [a, b]}}
heads:
  y: {type: regression}
"""


def _every_type_canonical(spec: dict[str, Any]) -> None:
    places = [i["adapter"] for i in spec["inputs"].values()]
    places += [i["backbone"] for i in spec["inputs"].values() if isinstance(i.get("backbone"), dict)]
    places += [*spec.get("backbones", {}).values(), *spec["heads"].values()]
    places += [spec["fusion"]] if spec.get("fusion") else []
    for place in places:
        place["type"] = f"polymodal:{place['type']}"


def _report(spec: dict[str, Any]) -> dict[str, Any]:
    return spec["inputs"]["report"]["adapter"]


#: Specs validation accepts, made from the examples.
GOOD: dict[str, Callable[[], dict[str, Any]]] = {
    "every type as its canonical id": _changed("claims.yaml", _every_type_canonical),
    "categorical as a list": _changed("claims.yaml", lambda s: _report(s).update(
        categorical=["make", "color"])),
    "categorical as a mapping with auto": _changed("claims.yaml", lambda s: _report(s).update(
        categorical={"make": "auto", "color": 12})),
    "categorical as an empty list": _changed("claims.yaml", lambda s: _report(s).update(
        categorical=[])),
    "an inline backbone instead of a shared one": _changed("claims.yaml", lambda s: s["inputs"][
        "photo"].update(backbone={"type": "torchvision", "model": "resnet18"})),
    "an input without backbone": _changed("claims.yaml", lambda s: s["inputs"]["report"].pop(
        "backbone")),
    "an empty backbones section": _yaml(TABLE_ONLY + "backbones:\n"),
    "an empty training section": _yaml(TABLE_ONLY + "training:\n"),
    "fusion null with one input": _yaml(TABLE_ONLY + "fusion: null\n"),
    "a description": _changed("claims.yaml", lambda s: s.update(description="Fraud.")),
    "training options": _changed("claims.yaml", lambda s: s.update(training={
        "epochs": 3, "lr": 0.01, "optimizer": "sgd",
        "early_stopping": {"metric": "fraud.balanced_accuracy", "patience": 2},
        "loss_weights": {"fraud": 2}})),
    "a learning rate in exponent notation": _yaml(TABLE_ONLY + "training: {lr: 1e-3}\n"),
    "a whole number written 2.0": _changed("claims.yaml", lambda s: s["heads"]["fraud"].update(
        classes=2.0)),
    "a float option given an integer": _changed("claims.yaml", lambda s: s["fusion"].update(
        dropout=0)),
    "freeze by stages": _changed("claims.yaml", lambda s: s["backbones"]["vision"].update(
        freeze={"train_last": 2, "batchnorm": True})),
    "classes learnt from the data": _changed("claims.yaml", lambda s: s["heads"]["fraud"].update(
        classes="auto")),
    "a head over some inputs": _changed("claims.yaml", lambda s: s["heads"].update(
        price={"type": "regression", "inputs": ["report"], "target": "price"})),
    "a fusion with modality dropout": _changed("claims.yaml", lambda s: s["fusion"].update(
        modality_dropout=0.3)),
    "names with digits and underscores": _changed("claims.yaml", lambda s: s["heads"].update(
        _fraud_2=s["heads"].pop("fraud"))),
    "the signal plugin's components by canonical id": _yaml("""
inputs:
  ecg:
    adapter: {type: "polymodal-signal:signal", channels: 12}
    backbone: {type: "polymodal-signal:tcn", channels: 16, levels: 3}
heads:
  rhythm: {type: classification, classes: 5}
"""),
}

#: Specs validation refuses for a reason the schema can state: (spec, the place named).
BAD: dict[str, tuple[Callable[[], dict[str, Any]], str]] = {
    "unknown top-level key": (_changed("claims.yaml", lambda s: s.update(fusions={})), "fusions"),
    "unknown input key": (_changed("claims.yaml", lambda s: s["inputs"]["photo"].update(
        backbon="vision")), "inputs.photo.backbon"),
    "unknown option": (_changed("claims.yaml", lambda s: s["heads"]["fraud"].update(
        colour="red")), "heads.fraud.colour"),
    "unknown training option": (_changed("claims.yaml", lambda s: s.update(training={
        "epoch": 3})), "training.epoch"),
    "unknown augmentation": (_changed("claims.yaml", lambda s: s["inputs"]["photo"][
        "adapter"].update(augment={"hflp": True})), "inputs.photo.adapter.augment.hflp"),
    "unknown adapter type": (_changed("claims.yaml", lambda s: s["inputs"]["photo"][
        "adapter"].update(type="imag")), "inputs.photo.adapter.type"),
    "unknown backbone type": (_changed("claims.yaml", lambda s: s["backbones"]["vision"].update(
        type="tim")), "backbones.vision.type"),
    "unknown fusion type": (_changed("claims.yaml", lambda s: s["fusion"].update(
        type="average")), "fusion.type"),
    "unknown head type": (_changed("claims.yaml", lambda s: s["heads"]["fraud"].update(
        type="classify")), "heads.fraud.type"),
    "unknown package in a canonical id": (_changed("claims.yaml", lambda s: s["fusion"].update(
        type="elsewhere:concat")), "fusion.type"),
    "the type of another kind": (_changed("claims.yaml", lambda s: s["fusion"].update(
        type="mlp")), "fusion.type"),
    "missing type": (_changed("claims.yaml", lambda s: s["fusion"].pop("type")), "fusion.type"),
    "a type that is not text": (_changed("claims.yaml", lambda s: s["heads"]["fraud"].update(
        type=3)), "heads.fraud.type"),
    "a word for a number": (_changed("claims.yaml", lambda s: s["heads"]["fraud"].update(
        classes="two")), "heads.fraud.classes"),
    "a number in quotes": (_changed("claims.yaml", lambda s: s["inputs"]["photo"][
        "adapter"].update(channels="3")), "inputs.photo.adapter.channels"),
    "a fraction for a whole number": (_changed("claims.yaml", lambda s: s["inputs"]["photo"][
        "adapter"].update(channels=2.5)), "inputs.photo.adapter.channels"),
    "true for a number": (_changed("claims.yaml", lambda s: s.update(training={
        "epochs": True})), "training.epochs"),
    "a number for true": (_changed("claims.yaml", lambda s: s["inputs"]["photo"][
        "adapter"].update(augment={"hflip": 1})), "inputs.photo.adapter.augment.hflip"),
    "too few classes": (_changed("claims.yaml", lambda s: s["heads"]["fraud"].update(
        classes=1)), "heads.fraud.classes"),
    "no channels": (_changed("claims.yaml", lambda s: s["inputs"]["photo"]["adapter"].update(
        channels=0)), "inputs.photo.adapter.channels"),
    "a zero in a list of sizes": (_changed("claims.yaml", lambda s: s["fusion"].update(
        hidden=[64, 0])), "fusion.hidden[1]"),
    "a zero cardinality": (_changed("claims.yaml", lambda s: _report(s).update(
        categorical={"make": 0})), "inputs.report.adapter.categorical.make"),
    "dropout of one": (_changed("claims.yaml", lambda s: s["fusion"].update(dropout=1.0)),
                       "fusion.dropout"),
    "a zero learning rate": (_changed("claims.yaml", lambda s: s.update(training={"lr": 0})),
                             "training.lr"),
    "a choice that is not offered": (_changed("claims.yaml", lambda s: s["fusion"].update(
        activation="swish")), "fusion.activation"),
    "an optimiser that is not offered": (_changed("claims.yaml", lambda s: s.update(training={
        "optimizer": "adam"})), "training.optimizer"),
    "a malformed early-stopping metric": (_changed("claims.yaml", lambda s: s.update(training={
        "early_stopping": {"metric": "balanced accuracy"}})), "training.early_stopping.metric"),
    "categorical as a list of numbers": (_changed("claims.yaml", lambda s: _report(s).update(
        categorical=[1, 2])), "inputs.report.adapter.categorical"),
    "categorical as text": (_changed("claims.yaml", lambda s: _report(s).update(
        categorical="make")), "inputs.report.adapter.categorical"),
    "numerical as text": (_changed("claims.yaml", lambda s: _report(s).update(
        numerical="age")), "inputs.report.adapter.numerical"),
    "a required option missing": (_changed("claims.yaml", lambda s: s["backbones"]["vision"].pop(
        "model")), "backbones.vision.model"),
    "an input without adapter": (_changed("claims.yaml", lambda s: s["inputs"]["photo"].pop(
        "adapter")), "inputs.photo.adapter"),
    "an input that is a word": (_changed("claims.yaml", lambda s: s["inputs"].update(
        photo="image")), "inputs.photo"),
    "an adapter that is a word": (_changed("claims.yaml", lambda s: s["inputs"]["photo"].update(
        adapter="image")), "inputs.photo.adapter"),
    "a backbone that is a number": (_changed("claims.yaml", lambda s: s["inputs"]["photo"].update(
        backbone=18)), "inputs.photo.backbone"),
    "no heads": (_changed("claims.yaml", lambda s: s.pop("heads")), "heads"),
    "no inputs": (_changed("claims.yaml", lambda s: s.pop("inputs")), "inputs"),
    "empty heads": (_changed("claims.yaml", lambda s: s.update(heads={})), "heads"),
    "heads as a list": (_changed("claims.yaml", lambda s: s.update(heads=["fraud"])), "heads"),
    "an input name starting with a digit": (_changed("claims.yaml", lambda s: s["inputs"].update(
        {"2photo": s["inputs"].pop("photo")})), "inputs.2photo"),
    "a head name with a dash": (_changed("claims.yaml", lambda s: s["heads"].update(
        {"fraud-flag": s["heads"].pop("fraud")})), "heads.fraud-flag"),
    "a backbone name with a space": (_changed("claims.yaml", lambda s: s["backbones"].update(
        {"big one": s["backbones"].pop("vision")})), "backbones.big one"),
    "a name that is a number": (_changed("claims.yaml", lambda s: s.update(name=5)), "name"),
    "yes for true (YAML 1.2, as editors read it)": (_yaml(TABLE_ONLY + "training:"
                                                          " {freeze_backbones: yes}\n"),
                                                    "training.freeze_backbones"),
    "training as a list": (_changed("claims.yaml", lambda s: s.update(training=[1])), "training"),
    "an option of a plugin's component": (_yaml("""
inputs:
  ecg:
    adapter: {type: signal, channels: 12}
    backbone: {type: tcn, levels: 99}
heads:
  rhythm: {type: classification, classes: 5}
"""), "inputs.ecg.backbone.levels"),
}

#: Specs validation refuses for a reason no JSON Schema can state; the schema accepts them.
#: These are the categories docs/editor.md lists as checked by `polymodal validate` only.
BEYOND_THE_SCHEMA: dict[str, tuple[Callable[[], dict[str, Any]], str]] = {
    # A reference to a name defined elsewhere in the spec.
    "an input naming an unknown backbone": (_changed("claims.yaml", lambda s: s["inputs"][
        "photo"].update(backbone="visoin")), "inputs.photo.backbone: unknown backbone 'visoin'"),
    "a head naming an unknown input": (_changed("claims.yaml", lambda s: s["heads"]["fraud"].update(
        inputs=["photos"])), "heads.fraud.inputs[0]: unknown input 'photos'"),
    "a loss weight for an unknown head": (_changed("claims.yaml", lambda s: s.update(training={
        "loss_weights": {"frud": 2}})), "training.loss_weights.frud: unknown head 'frud'"),
    # What the parts need of each other.
    "no fusion for a head over two inputs": (_changed("claims.yaml", lambda s: s.pop("fusion")),
                                             "fusion: missing: head 'fraud' uses 2 inputs"),
    # What a component knows in code: its metrics, rules across its options.
    "a metric the head does not compute": (_changed("claims.yaml", lambda s: s.update(training={
        "early_stopping": {"metric": "fraud.rmse"}})), "head 'fraud' has no metric 'rmse'"),
    "bands that do not match the channels": (_changed("claims.yaml", lambda s: s["inputs"][
        "photo"]["adapter"].update(bands=["red", "green"])),
        "inputs.photo.adapter: bands has 2 names but the input has 3 channels"),
    "a table input without columns": (_changed("claims.yaml", lambda s: _report(s).update(
        categorical={}, numerical=[])), "at least one categorical or numerical column"),
    "a rule across training options": (_changed("claims.yaml", lambda s: s.update(training={
        "unfreeze_at": 3})), "unfreeze_at needs freeze_backbones: true"),
}


def _examples() -> dict[str, Callable[[], dict[str, Any]]]:
    found: dict[str, Callable[[], dict[str, Any]]] = {
        str(p.relative_to(REPO)): (lambda p=p: read_spec_file(p)) for p in EXAMPLES}
    found.update({name: _yaml(text) for name, text in DOC_SPECS.items()})
    return found


SHIPPED = _examples()


def _verdicts(spec: Any, registry: Registry, validator) -> tuple[SpecError | None, list]:
    try:
        validate_spec_data(spec, registry)
        refused = None
    except SpecError as exc:
        refused = exc
    return refused, list(validator.iter_errors(spec))


def _path(error: jsonschema.ValidationError) -> str:
    out = ""
    for part in error.absolute_path:
        out += f"[{part}]" if isinstance(part, int) else ("." if out else "") + str(part)
    return out


def _within(one: str, other: str) -> bool:
    """Whether one spec path lies inside the other (or is it)."""
    short, long = sorted((one, other), key=len)
    return long == short or not short or long.startswith((short + ".", short + "["))


# -- the tests -----------------------------------------------------------------------------


def test_the_specs_cover_the_ground():
    assert {"examples/parts/fused.yaml", "examples/claims.yaml"} <= set(SHIPPED)
    assert any("polymodal-signal" in name for name in SHIPPED)
    assert len(SHIPPED) + len(GOOD) + len(BAD) + len(BEYOND_THE_SCHEMA) >= 40


@pytest.mark.parametrize("name", [*SHIPPED, *GOOD])
def test_a_spec_validation_accepts_is_valid_under_the_schema(registry, validator, name):
    spec = (SHIPPED | GOOD)[name]()
    refused, schema_errors = _verdicts(spec, registry, validator)
    assert refused is None, f"validation refuses {name}: {refused}"
    assert not schema_errors, [f"{_path(e)}: {e.message}" for e in schema_errors]


@pytest.mark.parametrize("fixture", ["image_spec", "multimodal_spec"])
def test_the_test_fixtures_agree(registry, validator, request, fixture):
    spec = request.getfixturevalue(fixture)
    refused, schema_errors = _verdicts(spec, registry, validator)
    assert refused is None and not schema_errors


def test_every_components_smallest_spec_agrees(entry_points):
    """The conformance kit's spec for each installed component (its example options), in a
    registry of its own: the kit adds its probe components to it."""
    registry = Registry(entry_points=entry_points)
    for record in registry.load_all():
        cls = registry.load(record)
        spec, probes = minimal_spec(cls, dict(cls.example_options), registry=registry)
        validator = jsonschema.Draft202012Validator(spec_json_schema(probes))
        refused, schema_errors = _verdicts(spec, probes, validator)
        assert refused is None and not schema_errors, (record.canonical, refused, schema_errors)


@pytest.mark.parametrize("name", BAD)
def test_a_spec_validation_refuses_is_invalid_under_the_schema(registry, validator, name):
    make, where = BAD[name]
    spec = make()
    refused, schema_errors = _verdicts(spec, registry, validator)
    assert refused is not None, f"validation accepts {name}"
    assert schema_errors, f"the schema accepts {name}, which validation refuses: {refused}"
    assert len(refused.problems) == 1, refused
    assert refused.problems[0][0] == where
    best = jsonschema.exceptions.best_match(schema_errors)
    assert _within(_path(best), where), (_path(best), best.message, where)


@pytest.mark.parametrize("name", BEYOND_THE_SCHEMA)
def test_what_only_validation_checks(registry, validator, name):
    make, words = BEYOND_THE_SCHEMA[name]
    spec = make()
    refused, schema_errors = _verdicts(spec, registry, validator)
    assert not schema_errors, [e.message for e in schema_errors]
    assert refused is not None and words in str(refused)


def test_the_editor_guide_lists_what_only_validation_checks():
    text = (REPO / "docs" / "editor.md").read_text(encoding="utf-8")
    section = text.split("## What only `polymodal validate` checks", 1)[1]
    for words in ("names another part", "fusion", "metric", "rule across", "connections",
                  "pretrained"):
        assert words in section, words


def _every_error(errors) -> list[jsonschema.ValidationError]:
    """Errors with the errors of every branch they were made of (what a client may pick)."""
    found = []
    for error in errors:
        found += [error, *_every_error(error.context or [])]
    return found


def test_a_wrong_option_is_the_only_problem_any_client_can_name(validator):
    """An undiscriminated union also fails every other branch ("'classes' was unexpected"),
    and a client's best match may pick one of those."""
    spec = GOOD["categorical as a list"]()
    spec["heads"]["fraud"]["classes"] = "two"
    errors = _every_error(validator.iter_errors(spec))
    assert errors and all(_path(e) == "heads.fraud.classes" for e in errors), \
        [(_path(e), e.message) for e in errors]


def test_a_wrong_type_is_answered_with_every_type_of_its_kind(registry, validator):
    spec = GOOD["categorical as a list"]()
    spec["fusion"]["type"] = "average"
    errors = validator.iter_errors(spec)
    (error,) = [e for e in _every_error(errors) if _path(e) == "fusion.type"]
    for record in registry.components("fusion"):
        assert repr(record.type) in error.message and repr(record.canonical) in error.message


def test_every_type_offers_its_summary(registry, validator):
    schema = validator.schema
    for kind in ("adapter", "backbone", "fusion", "head"):
        union = schema["$defs"][f"polymodal-{kind}"]
        offered = union["properties"]["type"]
        assert len(offered["enum"]) == len(offered["enumDescriptions"])
        for record in registry.components(kind):
            branch = next(b for b in union["allOf"]
                          if record.canonical in b["if"]["properties"]["type"]["enum"])
            config = schema["$defs"][branch["then"]["$ref"].rsplit("/", 1)[1]]
            assert config["description"] == record.summary
            assert config["properties"]["type"]["description"] == record.summary
            assert record.summary in offered["enumDescriptions"]

"""The generated component reference, the spec's JSON Schema, and Mermaid diagrams."""

from __future__ import annotations

import copy
import json

import jsonschema
import pytest
import yaml
from ecosystem_helpers import GOOD_HEAD, REPO, make_distribution, run_polymodal

import polymodal
from polymodal._docs import SLOTS, component_page, example_snippet, reference_pages
from polymodal._registry import Registry
from polymodal._spec import spec_json_schema, validate_spec_data
from polymodal._testing import minimal_spec

DOCS = REPO / "docs" / "components"
EXAMPLES = sorted((REPO / "examples").glob("*.yaml"))


@pytest.fixture(scope="module")
def registry():
    registry = Registry()
    registry.load_all()
    return registry


@pytest.fixture(scope="module")
def schema(registry):
    return spec_json_schema(registry)


def test_committed_reference_is_up_to_date(registry):
    pages = reference_pages(registry, packages={"polymodal"})
    committed = {p.name: p.read_text(encoding="utf-8") for p in DOCS.glob("*.md")}
    stale = sorted(n for n in set(pages) | set(committed) if pages.get(n) != committed.get(n))
    assert not stale, f"docs/components is stale ({', '.join(stale)}): run `make docs`"


def test_every_example_snippet_validates_in_a_spec(registry):
    for record in registry.components():
        cls = registry.load(record)
        config = yaml.safe_load(example_snippet(record, cls))
        for part in SLOTS[record.kind]:
            config = config[part]
        assert config.pop("type") == record.type
        spec, probes = minimal_spec(cls, config, registry=registry)
        polymodal.plan(validate_spec_data(spec, probes))


def test_pipes_in_option_text_are_escaped_in_tables(registry):
    record = registry.resolve("fusion", "concat")
    page = component_page(record, registry.load(record))
    table = [line for line in page.splitlines() if line.startswith("| `activation`")]
    assert table and '`"relu" \\| "gelu"' in table[0]
    for line in page.splitlines():
        if line.startswith("| `"):
            assert line.replace("\\|", "").count("|") == 6, line


def test_docs_command_documents_installed_third_party_components(tmp_path):
    plugin = REPO / "examples" / "plugins" / "polymodal-signal"
    out = tmp_path / "reference"
    (out).mkdir()
    (out / "adapter-gone.md").write_text("stale")
    # The example plugin's source tree is importable, but it is "installed" only with metadata:
    site = tmp_path / "site"
    info = site / "polymodal_signal-0.1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: polymodal-signal\nVersion: 0.1.0\n")
    (info / "entry_points.txt").write_text("[polymodal]\nsignal = polymodal_signal.plugin\n")
    result = run_polymodal("docs", "-o", str(out), env={"PYTHONPATH": f"{site}:{plugin}"})
    assert result.returncode == 0, result.stderr
    page = (out / "backbone-polymodal-signal-tcn.md").read_text()
    assert "- package: `polymodal-signal` 0.1.0" in page
    assert "- takes: sequences" in page
    assert "| `levels` | `integer` | `4` | <= 16, > 0 |" in page
    assert "backbones:\n  NAME: {type: \"tcn\", channels: 32, levels: 3}" in page
    assert "[`signal`](adapter-polymodal-signal-signal.md) | polymodal-signal 0.1.0" in (out / "index.md").read_text()
    assert not (out / "adapter-gone.md").exists()


# -- schema --------------------------------------------------------------------------------


def test_schema_covers_every_installed_component_with_descriptions(registry, schema):
    for record in registry.components():
        union = schema["$defs"][f"polymodal-{record.kind}"]
        (branch,) = [b for b in union["allOf"]
                     if b["if"]["properties"]["type"]["enum"] == [record.type, record.canonical]]
        variant = schema["$defs"][branch["then"]["$ref"].rsplit("/", 1)[1]]
        assert variant["description"] == record.summary
        assert variant["additionalProperties"] is False
        for option, prop in variant["properties"].items():
            assert prop.get("description"), f"{record.canonical}.{option} has no description"
    for key in ("inputs", "backbones", "fusion", "heads"):
        assert schema["properties"][key]["description"]


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_example_specs_validate_against_the_schema(schema, path):
    jsonschema.Draft202012Validator(schema).validate(yaml.safe_load(path.read_text()))


def _claims():
    return yaml.safe_load((REPO / "examples" / "claims.yaml").read_text())


def _edit(change):
    spec = copy.deepcopy(_claims())
    change(spec)
    return spec


BAD = {
    "unknown top-level key": lambda s: s.update(fusions={}),
    "unknown component type": lambda s: s["fusion"].update(type="average"),
    "unknown option": lambda s: s["heads"]["fraud"].update(colour="red"),
    "option of the wrong type": lambda s: s["heads"]["fraud"].update(classes="two"),
    "constraint": lambda s: s["heads"]["fraud"].update(classes=1),
    "missing type": lambda s: s["fusion"].pop("type"),
    "bad input name": lambda s: s["inputs"].update({"2photo": s["inputs"]["photo"]}),
    "no heads": lambda s: s.pop("heads"),
}


@pytest.mark.parametrize("problem", BAD)
def test_bad_specs_fail_the_schema(schema, problem):
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft202012Validator(schema).validate(_edit(BAD[problem]))


def test_canonical_type_names_are_accepted(schema):
    spec = _edit(lambda s: s["fusion"].update(type="polymodal:concat"))
    jsonschema.Draft202012Validator(schema).validate(spec)


def test_schema_command_writes_json(tmp_path):
    out = tmp_path / "spec.schema.json"
    result = run_polymodal("schema", "-o", str(out))
    assert result.returncode == 0, result.stderr
    assert json.loads(out.read_text())["title"] == "polymodal model spec"
    assert result.stderr == ""


def test_schema_command_says_which_plugins_it_could_not_cover(site):
    make_distribution(site, "broken-plugin", "0.9", {"main": "broken_plugin"},
                      {"broken_plugin.py": "raise ImportError('missing native library')\n"})
    make_distribution(site, "good-head", "1.0", {"twice": "good_head"},
                      {"good_head.py": GOOD_HEAD.format(type="twice")})
    result = run_polymodal("schema", pythonpath=site)
    assert result.returncode == 0, result.stderr
    assert "1 plugin(s) failed to load and are not in the schema" in result.stderr
    heads = json.loads(result.stdout)["$defs"]["polymodal-head"]["properties"]["type"]["enum"]
    assert "twice" in heads and "good-head:twice" in heads


# -- diagrams ------------------------------------------------------------------------------


def test_validate_diagram_draws_a_shared_backbone_once():
    result = run_polymodal("validate", "examples/shared_backbone.yaml", "--diagram")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "flowchart LR"
    assert sum(1 for line in lines if line.strip().startswith("backbone_shared[[")) == 1
    assert sum(1 for line in lines if "--> backbone_shared" in line) == 3
    assert '    backbone_shared -- "mri: a vector of 512" --> head_mri_grade' in lines


def test_a_shared_backbones_edges_into_a_fusion_name_their_input():
    from polymodal._diagram import mermaid

    spec = polymodal.load_spec({
        "inputs": {"rgb": {"adapter": {"type": "image", "channels": 3}, "backbone": "shared"},
                   "ms": {"adapter": {"type": "image", "channels": 10, "project_to": 3},
                          "backbone": "shared"}},
        "backbones": {"shared": {"type": "timm", "model": "resnet10t"}},
        "fusion": {"type": "concat"},
        "heads": {"crop": {"type": "classification", "classes": 3}}})
    lines = mermaid(spec).splitlines()
    assert '    adapter_ms["adapter: image, 10 channels, 1x1 projection to 3"]' in lines
    assert '    backbone_shared -- "rgb: a vector of 512" --> fusion_rgb_ms' in lines
    assert '    backbone_shared -- "ms: a vector of 512" --> fusion_rgb_ms' in lines


def test_inspect_diagram_of_a_saved_model_matches_its_spec(tmp_path):
    from polymodal._diagram import mermaid

    spec = {"inputs": {"photo": {"adapter": {"type": "image", "channels": 1, "project_to": 4}},
                       "report": {"adapter": {"type": "tabular", "numerical": ["age"]},
                                  "backbone": {"type": "mlp", "hidden": [8]}}},
            "fusion": {"type": "concat", "hidden": [6]},
            "heads": {"fraud": {"type": "classification", "classes": 2}}}
    model = polymodal.build(spec)
    path = tmp_path / "m.safetensors"
    polymodal.save(model, path)
    result = run_polymodal("inspect", str(path), "--diagram")
    assert result.returncode == 0, result.stderr
    assert result.stdout == mermaid(polymodal.load_spec(spec))
    assert result.stdout.splitlines()[1:] == [
        '    in_photo[/"photo"/]',
        '    adapter_photo["adapter: image, 1 channels, 1x1 projection to 4"]',
        '    in_report[/"report"/]',
        '    adapter_report["adapter: tabular, 0 categorical + 1 numerical"]',
        '    backbone_of_report["backbone: mlp [8]"]',
        '    fusion_photo_report{"fusion: concat + mlp [6]"}',
        '    head_fraud(["head fraud: classification, 2 classes"])',
        '    in_photo --> adapter_photo',
        '    in_report --> adapter_report',
        '    adapter_report -- "a vector of 2" --> backbone_of_report',
        '    adapter_photo -- "a feature map of 4 channels" --> fusion_photo_report',
        '    backbone_of_report -- "a vector of 8" --> fusion_photo_report',
        '    fusion_photo_report -- "a vector of 6" --> head_fraud',
    ]


def test_diagram_of_a_bad_spec_is_the_validation_error(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("inputs: {x: {adapter: {type: image, channels: 5}, backbone: {type: timm, model: resnet18}}}\n"
                   "heads: {y: {type: regression}}\n")
    result = run_polymodal("validate", str(bad), "--diagram")
    assert result.returncode == 1 and result.stdout == ""
    assert "set project_to: 3" in result.stderr and "Traceback" not in result.stderr


def test_mermaid_labels_cannot_break_out_of_their_quotes():
    from polymodal._diagram import _label

    assert _label('say "hi"') == '"say #quot;hi#quot;"'


def test_editor_guide_examples_are_valid(schema):
    import re

    text = (REPO / "docs" / "editor.md").read_text()
    blocks = dict((lang, body) for lang, body in re.findall(r"```(\w+)\n(.*?)```", text, re.S)
                  if lang in ("json", "yaml"))
    settings = json.loads(blocks["json"])
    assert "./polymodal.schema.json" in settings["yaml.schemas"]
    assert blocks["yaml"].startswith("# yaml-language-server: $schema=./polymodal.schema.json\n")
    jsonschema.Draft202012Validator(schema).validate(yaml.safe_load(blocks["yaml"]))
    assert "polymodal schema -o polymodal.schema.json" in text

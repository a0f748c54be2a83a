"""The generated component reference and the spec's JSON Schema (diagrams and the reference's
complete examples: test_diagrams_and_reference.py)."""

from __future__ import annotations

import copy
import importlib
import json
import re

import jsonschema
import pytest
import yaml
from ecosystem_helpers import GOOD_HEAD, REPO, make_distribution, run_polymodal

import polymodal
import polymodal.plugin
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


def test_the_training_guide_lists_every_training_option_as_the_model_says():
    from polymodal._docs import training_option_rows, with_training_options
    from polymodal._options import TrainingOptions

    guide = DOCS.parent / "training.md"
    text = guide.read_text(encoding="utf-8")
    assert with_training_options(text) == text, "docs/training.md is stale: run `make docs`"
    listed = {row.name.split(".")[0] for row in training_option_rows()}
    assert listed == set(TrainingOptions.model_fields)
    assert "| `early_stopping.patience` | `integer | null` | `null` |" in text.replace("\\|", "|")


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
    (out / "adapter-gone.md").write_text("# adapter `gone`\n\nA component no longer installed.\n")
    (out / "notes.md").write_text("the user's own notes\n")  # never removed
    (out / "adapter-ideas.md").write_text("# ideas for adapters\n")
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
    assert "| `levels` | `integer` | `4` | > 0, <= 16 |" in page
    assert "backbones:\n  NAME: {type: \"tcn\", channels: 32, levels: 3}" in page
    assert "[`signal`](adapter-polymodal-signal-signal.md) | polymodal-signal 0.1.0" in (out / "index.md").read_text()
    assert not (out / "adapter-gone.md").exists()
    assert (out / "notes.md").is_file() and (out / "adapter-ideas.md").is_file()


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


#: A cross-reference of a docstring to an object of polymodal (what ``help()`` shows).
DOCSTRING_REFERENCE = re.compile(r":(?:func|meth|class|data|mod|attr):`(polymodal[\w.]*)`")


def _resolves(dotted: str) -> bool:
    """Whether ``polymodal.x.y`` names something: its longest importable module, then
    attributes."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            found = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        try:
            for attribute in parts[cut:]:
                found = getattr(found, attribute)
        except AttributeError:
            return False
        return True
    return False


def test_every_docstring_reference_names_something_that_exists():
    sources = sorted((REPO / "core").rglob("*.py")) + sorted((REPO / "plugins").glob("*.py"))
    references = [(path.relative_to(REPO), match.group(1)) for path in sources
                  for match in DOCSTRING_REFERENCE.finditer(path.read_text(encoding="utf-8"))]
    assert len(references) > 5  # the pattern finds them
    assert [(str(path), name) for path, name in references if not _resolves(name)] == []
    assert "polymodal.plugin.Freeze" in polymodal.plugin.Backbone.freeze.__doc__


def test_a_third_party_pages_example_is_built_from_installed_components_own_examples(tmp_path):
    """The complete spec of a page puts the plugin's own parts first (the signal adapter with
    its tcn backbone), and pages generate with no built-in component installed."""
    plugin = REPO / "examples" / "plugins" / "polymodal-signal"
    site = tmp_path / "site"
    info = site / "polymodal_signal-0.1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: polymodal-signal\nVersion: 0.1.0\n")
    (info / "entry_points.txt").write_text("[polymodal]\nsignal = polymodal_signal.plugin\n")
    env = {"PYTHONPATH": f"{site}:{plugin}"}
    result = run_polymodal("docs", "-o", str(tmp_path / "with"), "--package", "polymodal-signal",
                           env=env)
    assert result.returncode == 0, result.stderr
    page = (tmp_path / "with" / "adapter-polymodal-signal-signal.md").read_text()
    example = yaml.safe_load(page.split("```yaml\n")[-1].split("```")[0])
    assert example["inputs"]["signal"]["backbone"]["type"] == "tcn"
    alone = run_polymodal("docs", "-o", str(tmp_path / "alone"),
                          env={**env, "POLYMODAL_DISABLE_PLUGINS": "polymodal"})
    assert alone.returncode == 0, alone.stderr
    assert (tmp_path / "alone" / "backbone-polymodal-signal-tcn.md").exists()
    assert not list((tmp_path / "alone").glob("*-image.md"))

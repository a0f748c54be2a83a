"""Mermaid diagrams of specs, and the complete example spec that ends each reference page."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from ecosystem_helpers import REPO, run_polymodal

import polymodal
from polymodal._diagram import _label, mermaid, node_id
from polymodal._docs import example_spec, reference_pages
from polymodal._registry import Registry

EXAMPLES = sorted((REPO / "examples").glob("*.yaml"))
DOCS = REPO / "docs" / "components"

NODE = re.compile(r'^    (\w+)(\[/|\[\[|\(\[|\[|\{)"((?:[^"])*)"(/\]|\]\]|\]\)|\]|\})$')
EDGE = re.compile(r'^    (\w+) (?:-->|-- "([^"]*)" -->|-\. "([^"]*)" \.->) (\w+)$')


@pytest.fixture(scope="module")
def registry():
    registry = Registry()
    registry.load_all()
    return registry


def structure(text: str) -> tuple[dict[str, str], list[tuple[str, str, str, bool]]]:
    """Nodes (id -> label) and edges (source, target, label, dotted) of a diagram, checking that
    every line is a node or an edge, no two nodes share an id, every edge joins declared nodes
    and no label holds a raw quote."""
    lines = text.splitlines()
    assert lines[0] == "flowchart LR" and text.endswith("\n")
    nodes: dict[str, str] = {}
    edges = []
    for line in lines[1:]:
        node, edge = NODE.match(line), EDGE.match(line)
        assert node or edge, f"neither a node nor an edge: {line!r}"
        if node:
            ident, opening, label, closing = node.groups()
            assert ident not in nodes, f"two nodes share the id {ident}"
            assert {"[/": "/]", "[[": "]]", "([": "])", "[": "]", "{": "}"}[opening] == closing, line
            nodes[ident] = label
        else:
            source, solid, dotted, target = edge.groups()
            edges.append((source, target, solid or dotted or "", dotted is not None))
    for source, target, _, _ in edges:
        assert source in nodes and target in nodes, f"edge {source} -> {target} names no node"
    return nodes, edges


def spec_of(data):
    return polymodal.load_spec(data)


def two_inputs(first: str, second: str) -> dict:
    table = {"adapter": {"type": "tabular", "numerical": ["v"]}}
    return {"inputs": {first: table, second: table}, "fusion": {"type": "concat"},
            "heads": {"h": {"type": "regression", "inputs": [first, second]},
                      "k": {"type": "regression"}}}


# -- ids -----------------------------------------------------------------------------------


def test_node_ids_read_back_to_their_kind_and_names():
    cases = [("fusion", ("a_b", "c")), ("fusion", ("a", "b_c")), ("fusion", ("a_", "b")),
             ("fusion", ("a", "_b")), ("fusion", ("a_0b",)), ("fusion", ("a", "0b")),
             ("backbone", ("of_b",)), ("backboneof", ("b",)), ("head", ("x",)), ("in", ("x",))]
    ids = [node_id(kind, *names) for kind, names in cases]
    assert len(set(ids)) == len(ids)
    assert all(re.fullmatch(r"[A-Za-z0-9_]+", i) for i in ids)
    assert node_id("fusion", "a_b", "c") == "fusion_a_0b_c"
    assert node_id("fusion", "a", "b_c") == "fusion_a_b_0c"
    with pytest.raises(ValueError):
        node_id("back_bone", "x")


def test_fusions_over_inputs_whose_names_join_alike_are_two_nodes():
    # Heads over (a_b, c) and (a, b_c) once drew as one fusion fed by four inputs.
    spec = {"inputs": {n: {"adapter": {"type": "tabular", "numerical": ["v"]}}
                       for n in ("a_b", "c", "a", "b_c")},
            "fusion": {"type": "concat"},
            "heads": {"left": {"type": "regression", "inputs": ["a_b", "c"]},
                      "right": {"type": "regression", "inputs": ["a", "b_c"]}}}
    nodes, edges = structure(mermaid(spec_of(spec)))
    fusions = [n for n in nodes if n.startswith("fusion_")]
    assert len(fusions) == 2
    for fusion in fusions:
        fed = sorted(s for s, t, _, _ in edges if t == fusion)
        assert len(fed) == 2, (fusion, fed)
    into = {t: sorted(s for s, tt, _, _ in edges if tt == t) for t in fusions}
    assert into[node_id("fusion", "a_b", "c")] == [node_id("adapter", "a_b"), node_id("adapter", "c")]
    assert into[node_id("fusion", "a", "b_c")] == [node_id("adapter", "a"), node_id("adapter", "b_c")]


def test_a_shared_backbone_named_like_an_inline_one_is_its_own_node():
    # A named backbone `of_b` once merged with input b's inline backbone.
    spec = {"inputs": {"a": {"adapter": {"type": "tabular", "numerical": ["v"]}, "backbone": "of_b"},
                       "b": {"adapter": {"type": "tabular", "numerical": ["v"]},
                             "backbone": {"type": "mlp", "hidden": [4]}}},
            "backbones": {"of_b": {"type": "mlp", "hidden": [8]}},
            "fusion": {"type": "concat"},
            "heads": {"h": {"type": "regression"}}}
    nodes, edges = structure(mermaid(spec_of(spec)))
    named, inline = node_id("backbone", "of_b"), node_id("backboneof", "b")
    assert named != inline
    assert nodes[named] == "backbone of_b: mlp [8]" and nodes[inline] == "backbone: mlp [4]"
    assert (node_id("adapter", "a"), named, "a vector of 2", False) in edges
    assert (node_id("adapter", "b"), inline, "a vector of 2", False) in edges
    assert (named, node_id("fusion", "a", "b"), "a: a vector of 8", False) in edges
    assert (inline, node_id("fusion", "a", "b"), "a vector of 4", False) in edges


# -- what the nodes and edges say ------------------------------------------------------------


def test_film_is_drawn_as_a_dotted_edge_into_the_conditioned_backbone():
    spec = yaml.safe_load((REPO / "examples" / "conditioning.yaml").read_text())
    spec["inputs"]["scan"]["backbone"]["pretrained"] = False
    nodes, edges = structure(mermaid(spec_of(spec)))
    fusion, backbone = node_id("fusion", "scan", "record"), node_id("backboneof", "scan")
    dotted = [e for e in edges if e[3]]
    assert dotted == [(fusion, backbone, "conditions scan from record<br>stage 3: a feature map"
                       " of 256 channels<br>stage 4: a feature map of 512 channels", True)]
    # The features still flow into the fusion, which still feeds both heads.
    assert (backbone, fusion, "a feature map of 512 channels", False) in edges
    assert {t for s, t, _, d in edges if s == fusion and not d} == {
        node_id("head", "diagnosis"), node_id("head", "severity")}


def test_plain_fusions_draw_no_conditioning():
    nodes, edges = structure(mermaid(spec_of(two_inputs("a", "b"))))
    assert not [e for e in edges if e[3]]


def test_nodes_show_the_settings_that_change_the_model():
    spec = {"inputs": {
        "tile": {"adapter": {"type": "image", "channels": 5,
                             "bands": ["red", "green", "blue", "nir", "swir"], "column": "path"},
                 "backbone": {"type": "timm", "model": "resnet18", "in_chans": 5,
                              "output": "feature_map", "freeze": {"train_last": 2}}},
        "row": {"adapter": {"type": "tabular", "numerical": ["age"], "output": "tokens"}}},
        "fusion": {"type": "attention", "dim": 32, "heads": 4, "modality_dropout": 0.2},
        "heads": {"grade": {"type": "classification", "classes": 3, "dropout": 0.1,
                            "target": "grade_col"},
                  "size": {"type": "regression", "outputs": 2, "loss": "huber"}}}
    nodes, _ = structure(mermaid(spec_of(spec)))
    assert nodes["adapter_tile"] == ("adapter: image, 5 channels<br>bands: [red, green, blue, nir,"
                                     " swir]")
    assert nodes["backboneof_tile"] == ("backbone: timm resnet18<br>in_chans: 5<br>output:"
                                        " feature_map<br>freeze: {train_last: 2, batchnorm: False}")
    assert nodes["adapter_row"] == "adapter: tabular, 0 categorical + 1 numerical<br>output: tokens"
    assert nodes["fusion_tile_row"] == "fusion: attention dim 32, 4 heads<br>modality_dropout: 0.2"
    assert nodes["head_grade"] == "head grade: classification, 3 classes<br>dropout: 0.1"
    assert nodes["head_size"] == "head size: regression, 2 outputs<br>loss: huber"


def test_singular_counts_are_worded_as_such():
    spec = {"inputs": {"scan": {"adapter": {"type": "image", "channels": 1},
                                "backbone": {"type": "timm", "model": "resnet18", "in_chans": 1}}},
            "heads": {"y": {"type": "regression"}}}
    text = mermaid(spec_of(spec))
    assert "1 channels" not in text and "output(s)" not in text
    nodes, edges = structure(text)
    assert nodes["adapter_scan"] == "adapter: image, 1 channel"
    assert nodes["head_y"] == "head y: regression, 1 output"
    assert ("adapter_scan", "backboneof_scan", "a feature map of 1 channel", False) in edges


def test_labels_cannot_break_out_of_their_quotes_or_open_html():
    assert _label('say "hi"') == '"say #quot;hi#quot;"'
    assert _label("<b>#1</b>") == '"#lt;b#gt;#35;1#lt;/b#gt;"'


def test_validate_diagram_draws_a_shared_backbone_once():
    result = run_polymodal("validate", "examples/shared_backbone.yaml", "--diagram")
    assert result.returncode == 0, result.stderr
    nodes, edges = structure(result.stdout)
    assert sum(1 for n in nodes if n == "backbone_shared") == 1
    assert sum(1 for e in edges if e[1] == "backbone_shared") == 3
    assert ("backbone_shared", node_id("head", "mri_grade"), "mri: a vector of 512", False) in edges
    assert "Warning" not in result.stderr


def test_a_shared_backbones_edges_into_a_fusion_name_their_input():
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
        '    adapter_photo["adapter: image, 1 channel, 1x1 projection to 4"]',
        '    in_report[/"report"/]',
        '    adapter_report["adapter: tabular, 0 categorical + 1 numerical"]',
        '    backboneof_report["backbone: mlp [8]"]',
        '    fusion_photo_report{"fusion: concat + mlp [6]"}',
        '    head_fraud(["head fraud: classification, 2 classes"])',
        '    in_photo --> adapter_photo',
        '    in_report --> adapter_report',
        '    adapter_report -- "a vector of 2" --> backboneof_report',
        '    adapter_photo -- "a feature map of 4 channels" --> fusion_photo_report',
        '    backboneof_report -- "a vector of 8" --> fusion_photo_report',
        '    fusion_photo_report -- "a vector of 6" --> head_fraud',
    ]


def test_diagram_of_a_bad_spec_is_the_validation_error(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("inputs: {x: {adapter: {type: image, channels: 5}, backbone: {type: timm, model: resnet18}}}\n"
                   "heads: {y: {type: regression}}\n")
    result = run_polymodal("validate", str(bad), "--diagram")
    assert result.returncode == 1 and result.stdout == ""
    assert "set project_to: 3" in result.stderr and "Traceback" not in result.stderr


# -- every example's diagram, structurally and with a real Mermaid parser ---------------------


def _example_diagrams(registry) -> dict[str, str]:
    diagrams = {path.name: mermaid(polymodal.load_spec(path, registry)) for path in EXAMPLES}
    for record in registry.components():
        spec = example_spec(record, registry.load(record), registry)
        if spec is not None:
            diagrams[f"reference {record.kind} {record.type}"] = mermaid(
                polymodal.load_spec(spec, registry))
    return diagrams


def test_every_example_diagram_is_well_formed(registry):
    diagrams = _example_diagrams(registry)
    assert len(diagrams) >= len(EXAMPLES) + 10
    for name, text in diagrams.items():
        nodes, edges = structure(text)
        assert edges, name


#: A folder holding the npm packages `mermaid` and `jsdom` (their node_modules), e.g. made by
#: `make mermaid-check`. Without it (or without node) the parser test is skipped.
MERMAID_MODULES = os.environ.get("POLYMODAL_MERMAID_MODULES", "")

PARSE_SCRIPT = """
import { JSDOM } from "jsdom";
import { readFileSync } from "node:fs";
const dom = new JSDOM("<!doctype html><html><body></body></html>");
globalThis.window = dom.window;
globalThis.document = dom.window.document;
const { default: mermaid } = await import("mermaid");
const results = {};
for (const [name, text] of Object.entries(JSON.parse(readFileSync(0, "utf8")))) {
  try {
    await mermaid.parse(text);
    const diagram = await mermaid.mermaidAPI.getDiagramFromText(text);
    results[name] = {nodes: [...diagram.db.getVertices().keys()],
                     edges: diagram.db.getEdges().map(e => [e.start, e.end, e.stroke])};
  } catch (error) {
    results[name] = {error: String(error.message || error)};
  }
}
console.log(JSON.stringify(results));
"""


def test_every_example_diagram_parses_with_mermaid(registry, tmp_path):
    node = shutil.which("node")
    modules = Path(MERMAID_MODULES)
    if not node or not MERMAID_MODULES or not (modules / "mermaid").is_dir():
        pytest.skip("needs node and POLYMODAL_MERMAID_MODULES (run `make mermaid-check`)")
    (tmp_path / "node_modules").symlink_to(modules.resolve())
    script = tmp_path / "parse.mjs"
    script.write_text(PARSE_SCRIPT)
    diagrams = _example_diagrams(registry)
    done = subprocess.run([node, str(script)], input=json.dumps(diagrams), capture_output=True,
                          text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    results = json.loads(done.stdout)
    for name, text in diagrams.items():
        assert "error" not in results[name], (name, results[name])
        nodes, edges = structure(text)
        # Mermaid read the same parts: no node made up by a mistyped edge, every edge kept.
        assert sorted(results[name]["nodes"]) == sorted(nodes), name
        parsed = [(s, t, stroke == "dotted") for s, t, stroke in results[name]["edges"]]
        assert parsed == [(s, t, d) for s, t, _, d in edges], name


# -- the reference's complete examples --------------------------------------------------------


def test_every_reference_page_ends_with_a_complete_spec_that_builds(registry):
    pages = reference_pages(registry, packages={"polymodal"})
    for record in registry.components():
        if record.package != "polymodal":
            continue
        page = pages[f"{record.kind}-{record.type}.md"]
        blocks = re.findall(r"```yaml\n(.*?)```", page, re.S)
        assert page.rstrip().endswith("```") and "## A complete spec" in page, record.type
        spec = yaml.safe_load(blocks[-1])
        assert spec == example_spec(record, registry.load(record), registry)
        used = [spec.get("fusion")] + list(spec.get("backbones", {}).values()) + [
            part for inp in spec["inputs"].values() for part in (inp["adapter"], inp.get("backbone"))
        ] + list(spec["heads"].values())
        assert any(isinstance(p, dict) and p.get("type") == record.type for p in used), record.type
        model = polymodal.build(spec, registry=registry)
        assert sum(p.numel() for p in model.parameters()) > 0


def test_nested_option_models_are_written_out_in_the_reference():
    page = (DOCS / "backbone-timm.md").read_text()
    assert '{train_last: integer, batchnorm: boolean = false}' in page
    assert "TrainLast" not in page

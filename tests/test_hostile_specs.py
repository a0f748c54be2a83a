"""Specs built to hang or exhaust a machine are refused quickly, with a message naming the limit."""

from __future__ import annotations

import json
import resource
import time

import pytest

import polymodal
from polymodal import SpecError

ALIAS_BOMB = """\
a: &a [x, x, x, x, x, x, x, x, x, x]
b: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a, *a]
c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b, *b]
d: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c, *c]
e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d, *d]
f: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e, *e]
g: &g [*f, *f, *f, *f, *f, *f, *f, *f, *f, *f]
h: &h [*g, *g, *g, *g, *g, *g, *g, *g, *g, *g]
i: &i [*h, *h, *h, *h, *h, *h, *h, *h, *h, *h]
name: bomb
inputs:
  table: {adapter: {type: tabular, numerical: *i}}
heads:
  y: {type: classification, classes: *i}
training: {lr: *i}
"""


def _refused_quickly(path, match: str) -> None:
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.process_time()  # CPU time: other work on the machine does not count
    with pytest.raises(SpecError, match=match) as info:
        polymodal.load_spec(path)
    assert time.process_time() - start < 1.0
    grown_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    assert grown_kib < 100 * 1024, f"memory grew by {grown_kib} KiB"
    assert str(info.value).startswith(f"{path}: ")


def test_an_alias_bomb_is_refused_before_it_expands(tmp_path):
    path = tmp_path / "bomb.yaml"
    path.write_text(ALIAS_BOMB)
    assert len(ALIAS_BOMB) < 1000
    _refused_quickly(path, "more than 100,000 values once its aliases are expanded")


@pytest.mark.parametrize("suffix", [".yaml", ".json"])
def test_deep_nesting_is_refused_not_a_recursion_error(tmp_path, suffix):
    path = tmp_path / f"deep{suffix}"
    depth = 10_000 if suffix == ".yaml" else 100_000
    path.write_text("[" * depth + "]" * depth)
    _refused_quickly(path, "nests deeper than 64 levels")


def test_deep_toml_is_refused(tmp_path):
    path = tmp_path / "deep.toml"
    path.write_text("a = " + "[" * 5000 + "]" * 5000 + "\n")
    _refused_quickly(path, "nests deeper than 64 levels")


def test_a_huge_spec_file_is_refused_by_size(tmp_path):
    path = tmp_path / "huge.json"
    columns = {f"c{i}": 3 for i in range(400_000)}
    path.write_text(json.dumps({"name": "huge", "inputs": {"t": {"adapter": {
        "type": "tabular", "categorical": columns}}}, "heads": {"y": {"type": "regression"}}}))
    _refused_quickly(path, "larger than the limit of 4 MiB")


def test_deep_python_data_is_refused(tmp_path):
    data: dict = {}
    node = data
    for _ in range(5000):
        node["x"] = {}
        node = node["x"]
    with pytest.raises(SpecError, match="nests deeper than 64 levels"):
        polymodal.load_spec(data)


def test_a_spec_under_the_limits_still_loads(tmp_path):
    path = tmp_path / "wide.yaml"
    path.write_text("name: wide\ninputs:\n  t:\n    adapter: {type: tabular, numerical: ["
                    + ", ".join(f"c{i}" for i in range(5000)) + "]}\nheads:\n  y: {type: regression}\n")
    spec = polymodal.load_spec(path)
    assert len(spec.inputs["t"].adapter.numerical) == 5000

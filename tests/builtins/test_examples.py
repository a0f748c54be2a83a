"""The example specs that show the built-ins validate, connections included."""

from __future__ import annotations

from pathlib import Path

import pytest

import polymodal

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


@pytest.mark.parametrize("name", ["satellite.yaml", "conditioning.yaml"])
def test_example_spec_connects(name):
    spec = polymodal.load_spec(EXAMPLES / name)
    plan = polymodal.plan(spec)
    assert all(signal.width > 0 for signal in plan.fused.values())


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("**/*.yaml")), ids=lambda p: p.name)
def test_every_example_spec_validates(path):
    spec = polymodal.load_spec(path)
    assert spec.heads and spec.inputs

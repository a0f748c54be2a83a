"""Fixtures of the built-in component tests."""

from __future__ import annotations

import pytest

import polymodal


@pytest.fixture
def roundtrip(tmp_path):
    """``roundtrip(model) -> loaded``: save to a model file and load it back."""

    def run(model):
        path = polymodal.save(model, tmp_path / "model.safetensors")
        return polymodal.load(path)

    return run

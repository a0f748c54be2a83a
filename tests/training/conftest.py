"""Fixtures of the training tests: a tiny dataset on disk and one shared trained model."""

from __future__ import annotations

from pathlib import Path

import pytest
from training_data import spec_data, write_dataset


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    return write_dataset(tmp_path)


@pytest.fixture(scope="session")
def trained(tmp_path_factory) -> tuple[Path, Path]:
    """(model file, table) of one small training run shared by the read-only tests."""
    import polymodal

    folder = tmp_path_factory.mktemp("trained")
    table = write_dataset(folder, rows=40)
    model = folder / "model.safetensors"
    polymodal.train(spec_data(epochs=2), table, model, progress=False)
    return model, table

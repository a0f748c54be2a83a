"""Shared fixtures: tiny specs (as plain dicts), a batch factory, model file paths.

Models here are small (32 px images, resnet10t/resnet18, a few steps) so the whole suite stays
fast on a couple of CPU cores.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest

# Tests never reach the network: a library download attempt fails at once instead of retrying.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

IMAGE_SIZE = 32


def pytest_configure(config: pytest.Config) -> None:
    # Several test runs may share a small machine; more threads than cores only adds contention.
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a dependency
        return
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


TINY_IMAGE_SPEC: dict[str, Any] = {
    "name": "tiny",
    "inputs": {
        "photo": {"adapter": {"type": "image", "channels": 3}, "backbone": "vision"},
    },
    "backbones": {"vision": {"type": "timm", "model": "resnet10t"}},
    "heads": {"label": {"type": "classification", "classes": 3}},
}

TINY_MULTIMODAL_SPEC: dict[str, Any] = {
    "name": "tiny_claims",
    "inputs": {
        "photo": {"adapter": {"type": "image", "channels": 3}, "backbone": "vision"},
        "report": {
            "adapter": {
                "type": "tabular",
                "categorical": {"make": 5, "color": 3},
                "numerical": ["age", "mileage"],
            },
            "backbone": {"type": "mlp", "hidden": [16, 8]},
        },
    },
    "backbones": {"vision": {"type": "timm", "model": "resnet10t"}},
    "fusion": {"type": "concat", "hidden": [16]},
    "heads": {
        "fraud": {"type": "classification", "classes": 2},
        "cost": {"type": "regression", "inputs": ["report"]},
    },
}


@pytest.fixture
def image_spec() -> dict[str, Any]:
    """One RGB input through a tiny timm ResNet into a 3-class head (a fresh copy per test)."""
    return copy.deepcopy(TINY_IMAGE_SPEC)


@pytest.fixture
def multimodal_spec() -> dict[str, Any]:
    """Photo + table, concat fusion, a head over both inputs and one over the table alone."""
    return copy.deepcopy(TINY_MULTIMODAL_SPEC)


def make_batch(spec: Mapping[str, Any], size: int = 4, *, image_size: int = IMAGE_SIZE,
               seed: int = 0) -> dict[str, Any]:
    """A random batch fitting every input of ``spec`` (a dict spec)."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    batch: dict[str, Any] = {}
    for name, inp in spec["inputs"].items():
        adapter = inp["adapter"]
        if adapter["type"] == "image":
            channels = adapter.get("channels", 3)
            batch[name] = torch.rand(size, channels, image_size, image_size, generator=generator)
        elif adapter["type"] == "tabular":
            columns: dict[str, torch.Tensor] = {}
            for column, cardinality in adapter.get("categorical", {}).items():
                columns[column] = torch.randint(0, cardinality, (size,), generator=generator)
            for column in adapter.get("numerical", []):
                columns[column] = torch.randn(size, generator=generator)
            batch[name] = columns
        else:  # pragma: no cover - a fixture for built-in adapters only
            raise ValueError(f"no batch factory for adapter {adapter['type']!r}")
    return batch


@pytest.fixture
def batch_for() -> Callable[..., dict[str, Any]]:
    """``batch_for(spec, size=4)``: a random batch for a dict spec."""
    return make_batch


@pytest.fixture
def model_path(tmp_path: Path) -> Path:
    """Where a test writes its model file."""
    return tmp_path / "model.safetensors"


def write_spec(directory: Path, spec: Mapping[str, Any], fmt: str = "yaml",
               name: str = "spec") -> Path:
    """Write a dict spec as YAML, TOML or JSON and return the path."""
    import json

    path = directory / f"{name}.{fmt}"
    if fmt == "yaml":
        import yaml

        path.write_text(yaml.safe_dump(dict(spec), sort_keys=False), encoding="utf-8")
    elif fmt == "json":
        path.write_text(json.dumps(spec, indent=2), encoding="utf-8")
    elif fmt == "toml":
        path.write_text(to_toml(spec), encoding="utf-8")
    else:  # pragma: no cover
        raise ValueError(fmt)
    return path


def to_toml(data: Mapping[str, Any]) -> str:
    """Minimal TOML writer for specs (tables, inline arrays, scalars); no extra dependency."""
    import json

    def value(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, (int, float)):
            return repr(v)
        if isinstance(v, str):
            return json.dumps(v)
        if isinstance(v, list):
            return "[" + ", ".join(value(x) for x in v) + "]"
        if isinstance(v, Mapping):
            return "{" + ", ".join(f"{k} = {value(x)}" for k, x in v.items()) + "}"
        raise TypeError(type(v))

    lines: list[str] = []

    def table(prefix: str, mapping: Mapping[str, Any]) -> None:
        scalars = {k: v for k, v in mapping.items() if not isinstance(v, Mapping)}
        tables = {k: v for k, v in mapping.items() if isinstance(v, Mapping)}
        if prefix and (scalars or not tables):
            lines.append(f"[{prefix}]")
        for k, v in scalars.items():
            lines.append(f"{k} = {value(v)}")
        for k, v in tables.items():
            table(f"{prefix}.{k}" if prefix else k, v)

    table("", data)
    return "\n".join(lines) + "\n"


@pytest.fixture
def spec_file(tmp_path: Path) -> Callable[..., Path]:
    """``spec_file(spec_dict, fmt="yaml")``: the spec written to a file in tmp_path."""

    def write(spec: Mapping[str, Any], fmt: str = "yaml", name: str = "spec") -> Path:
        return write_spec(tmp_path, spec, fmt, name)

    return write


class CodeTrap:
    """Unpickling it creates the file ``marker``: proof that loading a file ran its code."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.fixture
def code_trap() -> type[CodeTrap]:
    """Make ``code_trap(marker)`` objects to hide in files that must never be unpickled."""
    return CodeTrap

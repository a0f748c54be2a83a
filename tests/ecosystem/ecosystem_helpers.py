"""Helpers of the ecosystem tests: throw-away plugin distributions, made without pip.

A distribution here is what an installer would leave in site-packages: a ``*.dist-info``
directory (``METADATA`` and ``entry_points.txt``) beside the plugin's modules. Putting the
directory on ``sys.path`` (or ``PYTHONPATH`` of a subprocess) installs it.
"""

from __future__ import annotations

import importlib.metadata as metadata
import os
import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

#: A working plugin module providing one head; ``{type}`` is its type name.
GOOD_HEAD = '''
from typing import Literal

import torch
from torch import nn

import polymodal
from polymodal.plugin import Head, HeadConfig

POLYMODAL_PLUGIN_API = 2


class Twice(Head):
    """Predicts one value from twice its input (a test plugin)."""

    class Config(HeadConfig):
        type: Literal["{type}"] = "{type}"

    def __init__(self, config, takes):
        super().__init__(config, takes)
        self.linear = nn.Linear(takes.dim, 1)

    def forward(self, fused):
        return self.linear(2 * fused)

    def loss(self, output, target):
        return nn.functional.mse_loss(output, target)

    def predict(self, output):
        return {{"value": output}}


@polymodal.plugin.hookimpl
def polymodal_components():
    return [Twice]
'''


def make_distribution(
    root: Path,
    name: str,
    version: str = "1.0",
    entry_points: dict[str, str] | None = None,
    files: dict[str, str] | None = None,
) -> Path:
    """Write distribution ``name`` (its metadata, entry points in group polymodal, files)."""
    info = root / f"{name.replace('-', '_')}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    lines = ["[polymodal]"] + [f"{k} = {v}" for k, v in (entry_points or {}).items()]
    (info / "entry_points.txt").write_text("\n".join(lines) + "\n")
    for relative, text in (files or {}).items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text).lstrip())
    return info


def entry_points_in(root: Path) -> list[metadata.EntryPoint]:
    """The polymodal entry points of the distributions under ``root``, sorted by package."""
    found = []
    for dist in sorted(metadata.distributions(path=[str(root)]), key=lambda d: d.metadata["Name"]):
        found += [ep for ep in dist.entry_points if ep.group == "polymodal"]
    return found


def builtin_entry_points() -> list[metadata.EntryPoint]:
    return [ep for ep in metadata.entry_points(group="polymodal")
            if ep.dist is not None and ep.dist.metadata["Name"] == "polymodal"]


def run_polymodal(*args: str, pythonpath: Path | None = None, env: dict[str, str] | None = None,
                  cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run the polymodal command in a fresh interpreter (discovery starts from scratch)."""
    environment = {k: v for k, v in os.environ.items()
                   if k not in ("POLYMODAL_DISABLE_PLUGINS", "POLYMODAL_PLUGINS")}
    if pythonpath is not None:
        environment["PYTHONPATH"] = os.pathsep.join(
            [str(pythonpath), *filter(None, [os.environ.get("PYTHONPATH")])])
    environment.update(env or {})
    return subprocess.run([sys.executable, "-m", "polymodal", *args], capture_output=True,
                          text=True, env=environment, cwd=cwd or REPO, timeout=300)

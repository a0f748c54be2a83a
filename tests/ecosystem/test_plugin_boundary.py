"""Plugins use polymodal through its plugin API only.

Every module of the built-in plugins and of the example third-party plugin may import
``polymodal.plugin`` (and, for images, the image kit ``polymodal.imagekit``) and the user API of ``polymodal`` (``polymodal.load``, ...), and nothing else
of polymodal: no private module, and no private attribute reached through ``polymodal``. No
plugin imports the built-ins' package by name (the built-ins share private helpers by relative
imports within their own package). Read from the source, so that an
import inside a function is found too.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from ecosystem_helpers import REPO

import polymodal

BUILT_INS = REPO / "plugins"
EXAMPLE = REPO / "examples" / "plugins" / "polymodal-signal" / "polymodal_signal"
TEXT = REPO / "packages" / "polymodal-text" / "polymodal_text"
ALLOWED_MODULES = {"polymodal", "polymodal.plugin", "polymodal.imagekit"}


def plugin_modules() -> list[Path]:
    return sorted(BUILT_INS.glob("*.py")) + sorted(EXAMPLE.glob("*.py")) + sorted(TEXT.glob("*.py"))


def boundary_problems(source: str) -> list[str]:
    """Each use of polymodal beyond its plugin and user API in ``source``, with its line."""
    problems = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] in ("polymodal", "polymodal_plugins") \
                        and alias.name not in ALLOWED_MODULES:
                    problems.append(f"line {node.lineno}: import {alias.name}")
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            top = node.module.split(".")[0]
            if top == "polymodal_plugins" or (top == "polymodal" and node.module not in ALLOWED_MODULES):
                problems.append(f"line {node.lineno}: from {node.module} import ...")
            elif node.module == "polymodal":
                private = [a.name for a in node.names
                           if a.name != "plugin" and a.name not in polymodal.__all__]
                if private:
                    problems.append(f"line {node.lineno}: from polymodal import {', '.join(private)}")
        elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) \
                and node.value.id == "polymodal" and node.attr.startswith("_") \
                and node.attr != "__version__":
            problems.append(f"line {node.lineno}: polymodal.{node.attr}")
    return problems


@pytest.mark.parametrize("path", plugin_modules(),
                         ids=lambda p: f"{p.parent.name}/{p.name}")
def test_plugins_import_only_the_plugin_api_and_the_user_api(path):
    problems = boundary_problems(path.read_text())
    assert not problems, f"{path.relative_to(REPO)} reaches past polymodal.plugin: {problems}"


def test_every_plugin_module_is_checked():
    names = {p.name for p in plugin_modules()}
    assert {"image.py", "tabular.py", "classification.py", "_columns.py"} <= names
    assert {"adapter.py", "tcn.py", "plugin.py"} <= names
    assert {"backbone.py", "_local.py"} <= names


@pytest.mark.parametrize("source", [
    "from polymodal._data.table import Table",
    "import polymodal._spec",
    "from polymodal import _registry",
    "from polymodal import get_registry, _spec",
    "import polymodal\nx = polymodal._modelfile.load",
    "from polymodal_plugins._columns import category",
    "def later():\n    from polymodal._training.engine import train",
])
def test_the_check_finds_each_way_past_the_plugin_api(source):
    assert boundary_problems(source)


@pytest.mark.parametrize("source", [
    "import polymodal\nfrom polymodal.plugin import Codec, hookimpl\n@polymodal.plugin.hookimpl\ndef f(): ...",
    "from polymodal import load, train, DataError",
    "import polymodal.plugin",
    "from . import adapter",
])
def test_the_plugin_and_user_api_pass(source):
    assert not boundary_problems(source)


def test_the_image_kit_is_documented_and_the_older_names_are_the_same_objects():
    import polymodal.imagekit as kit
    import polymodal.plugin as api

    guide = (REPO / "docs" / "plugins.md").read_text()
    missing = [name for name in kit.__all__ if name not in guide]
    assert not missing, f"docs/plugins.md does not name {missing} of polymodal.imagekit"
    assert api.PretrainedImageConfig is kit.PretrainedImageConfig
    assert api.adapt_and_load is kit.adapt_and_load


def test_core_knows_no_image_kit():
    """Only plugins use the image kit: no private module of core imports it."""
    users = [path.name for path in sorted((REPO / "core").rglob("_*.py"))
             if any(phrase in path.read_text() for phrase in
                    ("from .imagekit", "from . import imagekit", "polymodal.imagekit import"))]
    assert not users, f"core modules {users} import the image kit"


@pytest.mark.parametrize("module", ["polymodal", "polymodal.plugin"])
def test_the_lazy_exports_and_their_type_checking_mirror_agree(module):
    """A lazily exported name is declared twice (the table the module reads at run time, and the
    imports type checkers read): both must name the same objects from the same modules."""
    import importlib

    path = Path(importlib.import_module(module).__file__)
    tree = ast.parse(path.read_text())
    lazy = next(ast.literal_eval(node.value) for node in tree.body
                if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "_LAZY")
    guarded = next(node for node in tree.body if isinstance(node, ast.If)
                   and getattr(node.test, "id", "") == "TYPE_CHECKING")
    mirrored = {alias.asname or alias.name: node.module.lstrip(".")
                for node in ast.walk(guarded) if isinstance(node, ast.ImportFrom)
                for alias in node.names}
    assert mirrored == lazy

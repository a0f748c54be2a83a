"""Importing polymodal and listing components stay light: no torch, timm or torchvision."""

from __future__ import annotations

import json
import subprocess
import sys

HEAVY = ("torch", "timm", "torchvision", "pydantic")


def imported_after(code: str) -> list[str]:
    probe = f"{code}\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          check=True, timeout=120)
    return json.loads(done.stdout.strip().splitlines()[-1])


def heavy(modules: list[str]) -> list[str]:
    return [m for m in modules if m.split(".")[0] in HEAVY]


def test_import_polymodal_is_light():
    assert heavy(imported_after("import polymodal")) == []


def test_listing_components_imports_no_plugin_code():
    modules = imported_after(
        "import polymodal\nrecords = polymodal.list_components()\n"
        "assert {r.type for r in records} >= {'image', 'timm', 'concat', 'classification'}")
    assert heavy(modules) == []
    assert not any(m.startswith("polymodal_plugins.") for m in modules)


def test_cli_list_imports_no_torch():
    # `list` reads every plugin's manifest, third-party ones (the text plugin) included.
    modules = imported_after(
        "import contextlib, io\nfrom polymodal._cli import main\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        "    assert main(['list']) == 0")
    assert heavy(modules) == []
    # `plugins` imports each third-party plugin to show it as it is; the built-ins stay light.
    modules = imported_after(
        "import contextlib, io, os\nos.environ['POLYMODAL_PLUGINS'] = 'polymodal'\n"
        "from polymodal._cli import main\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        "    assert main(['plugins']) == 0")
    assert heavy(modules) == []


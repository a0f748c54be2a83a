"""Fixtures of the ecosystem tests (helpers live in ecosystem_helpers.py)."""

from __future__ import annotations

import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import pytest


@pytest.fixture
def site(tmp_path, monkeypatch):
    """A fresh directory on ``sys.path`` for throw-away distributions; its modules are
    forgotten afterwards so that each test imports its own."""
    root = tmp_path / "site"
    root.mkdir()
    monkeypatch.syspath_prepend(str(root))
    monkeypatch.delenv("POLYMODAL_DISABLE_PLUGINS", raising=False)
    monkeypatch.delenv("POLYMODAL_PLUGINS", raising=False)
    yield root
    for name, module in list(sys.modules.items()):
        origin = getattr(module, "__file__", None) or ""
        if origin.startswith(str(root)):
            del sys.modules[name]


@pytest.fixture
def fresh_env(tmp_path) -> Path:
    """A new virtual environment that sees this one's packages (polymodal, torch, pip) the way
    a user's environment would have them installed, but has its own site-packages."""
    root = tmp_path / "env"
    venv.EnvBuilder(with_pip=False).create(root)
    python = root / "bin" / "python"
    purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    ours = sysconfig.get_paths()["purelib"]
    Path(purelib, "base_environment.pth").write_text(f"import site; site.addsitedir({ours!r})\n")
    return root

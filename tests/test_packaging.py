"""The built wheel works outside the source tree: registry.toml ships inside it, the entry
points resolve, and a model builds, saves and loads from a fresh virtual environment."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import textwrap
import venv
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def sh(*args, cwd: Path, env: dict | None = None, timeout: int = 300) -> str:
    done = subprocess.run([str(a) for a in args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)
    assert done.returncode == 0, f"{args}\n{done.stdout}\n{done.stderr}"
    return done.stdout


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    # Built from a copy so that no stale build/ directory of the checkout leaks into the wheel.
    source = tmp_path_factory.mktemp("source") / "polymodal"
    shutil.copytree(ROOT, source, symlinks=True, ignore=shutil.ignore_patterns(
        ".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache"))
    out = tmp_path_factory.mktemp("dist")
    sh(sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", out, cwd=source)
    (found,) = out.glob("polymodal-*.whl")
    return found


def test_wheel_holds_the_catalog_and_entry_points(wheel):
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        catalog = archive.read("polymodal/registry.toml").decode()
        dist_info = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
        entry_points = archive.read(dist_info).decode()
    assert catalog == (ROOT / "registry.toml").read_text()  # the file itself, not a link
    assert "polymodal/py.typed" in names
    # Every module of the source tree ships, sub-packages included.
    sources = {f"polymodal/{p.relative_to(ROOT / 'core').as_posix()}"
               for p in (ROOT / "core").rglob("*.py")}
    sources |= {f"polymodal_plugins/{p.relative_to(ROOT / 'plugins').as_posix()}"
                for p in (ROOT / "plugins").rglob("*.py")}
    assert sources - names == set()
    assert not any(n.startswith(("core/", "plugins/", "tests/")) for n in names)
    assert "[polymodal]" in entry_points and "polymodal = polymodal._cli:main" in entry_points


@pytest.mark.slow
def test_wheel_in_a_fresh_environment(wheel, tmp_path):
    env_dir = tmp_path / "env"
    venv.EnvBuilder(with_pip=False).create(env_dir)
    python = env_dir / "bin" / "python"
    # The wheel goes in alone; torch & co. stay where they are and become visible through a
    # .pth file (a path line only: the project's editable-install hook is not run there).
    sh(sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "--no-index",
       "--quiet", "--disable-pip-version-check", wheel, cwd=tmp_path)
    purelib = Path(sh(python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])",
                      cwd=tmp_path).strip())
    (purelib / "project_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")

    work = tmp_path / "work"  # outside the source tree
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["HF_HUB_OFFLINE"] = "1"
    script = env_dir / "bin" / "polymodal"

    where = json.loads(sh(python, "-c", textwrap.dedent("""
        import json, importlib.metadata as md, polymodal, polymodal_plugins
        dist = md.distribution("polymodal")
        print(json.dumps([polymodal.__file__, polymodal_plugins.__file__,
                          str(dist.locate_file("")), polymodal.__version__]))
    """), cwd=work, env=env))
    for path in where[:3]:
        assert str(env_dir) in path, where
    assert where[3] != "0.0.0"

    listing = sh(script, "list", cwd=work, env=env)
    for type_name in ("image", "tabular", "timm", "mlp", "concat", "classification"):
        assert f" {type_name} " in listing

    spec = work / "spec.yaml"
    spec.write_text(textwrap.dedent("""
        name: fresh
        inputs:
          photo:
            adapter: {type: image, channels: 2, project_to: 3}
            backbone: {type: timm, model: resnet10t}
          row:
            adapter: {type: tabular, categorical: {kind: 4}, numerical: [size]}
        fusion: {type: concat, hidden: [8]}
        heads:
          label: {type: classification, classes: 3}
    """))
    assert "ok (2 input(s), 1 head(s))" in sh(script, "validate", spec, cwd=work, env=env)

    check = sh(python, "-c", textwrap.dedent("""
        import torch, polymodal
        model = polymodal.build("spec.yaml").eval()
        batch = {"photo": torch.rand(2, 2, 32, 32),
                 "row": {"kind": torch.tensor([0, 3]), "size": torch.tensor([1.0, 2.0])}}
        polymodal.save(model, "fresh.safetensors")
        again = polymodal.load("fresh.safetensors")
        with torch.no_grad():
            print(torch.equal(model(batch)["label"], again(batch)["label"]))
    """), cwd=work, env=env)
    assert check.strip() == "True"
    assert "fresh.safetensors" in sh(script, "inspect", "fresh.safetensors", cwd=work, env=env)

"""What the README says a user does: its spec trains on a table with a text column, and the
reference pages in docs/ are those `polymodal docs` writes for this package."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import yaml

import polymodal

PACKAGE = Path(__file__).resolve().parents[1]
MARK = "<!-- the spec below is trained by tests/test_readme.py -->"


def _readme_spec() -> dict:
    text = (PACKAGE / "README.md").read_text(encoding="utf-8")
    block = re.search(re.escape(MARK) + r"\n```yaml\n(.*?)```", text, re.S)
    assert block, "the README's spec block is gone"
    return yaml.safe_load(block.group(1))


def test_the_readme_spec_trains_and_predicts(model_dir, notes_table, tmp_path):
    spec = _readme_spec()
    note = spec["inputs"]["note"]
    assert note["adapter"]["tokenizer"] == note["backbone"]["model"] == "models/bert"
    note["adapter"]["tokenizer"] = note["backbone"]["model"] = str(model_dir)
    spec["training"]["epochs"] = 1
    path = tmp_path / "claims.safetensors"
    polymodal.train(spec, notes_table, path, progress=False)
    assert len(polymodal.predict(path, notes_table)["columns"]["decision"]) == 48


def test_the_reference_pages_are_fresh(tmp_path):
    subprocess.run([sys.executable, "-m", "polymodal", "docs", "-o", str(tmp_path),
                    "--package", "polymodal-text"], check=True, capture_output=True, timeout=300)
    written = {p.name: p.read_text(encoding="utf-8") for p in tmp_path.glob("*.md")}
    kept = {p.name: p.read_text(encoding="utf-8") for p in (PACKAGE / "docs").glob("*.md")}
    assert written == kept, ("docs/ is stale: polymodal docs -o packages/polymodal-text/docs"
                             " --package polymodal-text")


def test_the_wheel_holds_the_plugin_and_its_manifest(tmp_path):
    import shutil
    import zipfile

    source = tmp_path / "polymodal-text"
    shutil.copytree(PACKAGE, source, ignore=shutil.ignore_patterns(
        "build", "*.egg-info", "__pycache__", "tests", "examples"))
    subprocess.run([sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir",
                    str(tmp_path / "dist"), str(source)], check=True, capture_output=True,
                   timeout=300)
    (wheel,) = (tmp_path / "dist").glob("polymodal_text-0.1.0-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {"polymodal_text/polymodal.toml", "polymodal_text/plugin.py",
            "polymodal_text/adapter.py", "polymodal_text/backbone.py"} <= names
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    text = zipfile.ZipFile(wheel).read(entry_points).decode()
    assert "[polymodal]\ntext = polymodal_text.plugin" in text


RECIPE = "<!-- the recipe below is run by tests/test_readme.py -->"


def test_the_readme_recipe_makes_an_encoder_and_tokenizer_a_spec_trains_with(
        notes_table, tmp_path, monkeypatch):
    """The README's offline recipe, run as written on a text column: its folder trains."""
    import csv

    text = (PACKAGE / "README.md").read_text(encoding="utf-8")
    block = re.search(re.escape(RECIPE) + r"\n```python\n(.*?)```", text, re.S)
    assert block, "the README's recipe block is gone"
    with open(notes_table, newline="") as handle:
        notes = [row["note"] for row in csv.DictReader(handle) if row["note"]]
    monkeypatch.chdir(tmp_path)
    (tmp_path / "notes.txt").write_text("\n".join(notes))
    exec(compile(block.group(1), "README recipe", "exec"), {})
    assert {"tokenizer.json", "config.json"} <= {p.name for p in (tmp_path / "models" / "bert").iterdir()}
    spec = _readme_spec()
    note = spec["inputs"]["note"]
    note["adapter"]["tokenizer"] = note["backbone"]["model"] = str(tmp_path / "models" / "bert")
    spec["training"]["epochs"] = 1
    polymodal.train(spec, notes_table, tmp_path / "m.safetensors", progress=False)

"""docs/plugins.md cannot rot: every code block in it is run or checked here.

Each fenced block is preceded by a marker comment saying what it is: ``<!-- file: PATH -->``
(written into a fresh project directory), ``<!-- run -->`` (shell commands, run in order in a
fresh virtual environment), or ``<!-- check: NAME -->`` (verified by a named check below). A
block without a marker fails the test, so the guide cannot grow an untested example."""

from __future__ import annotations

import os
import re
import shlex
import subprocess

import pytest
from ecosystem_helpers import REPO

from polymodal._manifest import parse_manifest

GUIDE = REPO / "docs" / "plugins.md"
BLOCK = re.compile(r"(?:<!-- (?P<marker>[^>]*?) -->\n)?```(?P<lang>\w*)\n(?P<body>.*?)```", re.S)

pytestmark = pytest.mark.slow


def blocks() -> list[tuple[str, str, str]]:
    """(marker, language, body) of each fenced block, in order."""
    found = [(m["marker"] or "", m["lang"], m["body"]) for m in BLOCK.finditer(GUIDE.read_text())]
    unmarked = [body.splitlines()[0] for marker, _, body in found if not marker]
    assert not unmarked, f"blocks without a marker in {GUIDE.name}: {unmarked}"
    return found


def layout_paths(tree: str) -> set[str]:
    """File paths of a ``tree``-style listing."""
    paths, stack = set(), []
    for line in tree.splitlines()[1:]:
        name = line.lstrip("│├└─ ")
        depth = (len(line) - len(name)) // 4  # 1 for the project's own entries
        stack = stack[:depth - 1] + [name.rstrip("/")]
        if not name.endswith("/"):
            paths.add("/".join(stack))
    return paths


def test_every_block_has_a_marker_and_a_check():
    markers = {marker.split(":")[0] for marker, _, _ in blocks()}
    assert markers <= {"file", "run", "check"}
    checks = {marker.split(":", 1)[1].strip() for marker, _, _ in blocks() if marker.startswith("check:")}
    assert checks == {"layout", "extra"}


def test_the_guide_works_from_an_empty_directory(fresh_env, tmp_path):
    project = tmp_path / "polymodal-ordinal"
    project.mkdir()
    files = {m.split(":", 1)[1].strip(): body for m, _, body in blocks() if m.startswith("file:")}
    (layout,) = [body for m, _, body in blocks() if m == "check: layout"]
    assert layout_paths(layout) == set(files)
    manifest_path = "polymodal_ordinal/polymodal.toml"
    for path, body in files.items():
        if path != manifest_path:  # the guide has polymodal write this one
            (project / path).parent.mkdir(parents=True, exist_ok=True)
            (project / path).write_text(body)

    python = str(fresh_env / "bin" / "python")
    programs = {"pip": [python, "-m", "pip"], "polymodal": [python, "-m", "polymodal"],
                "pytest": [python, "-m", "pytest", "-p", "no:cacheprovider"], "python": [python]}
    base = {k: v for k, v in os.environ.items()
            if k not in ("PYTHONPATH", "POLYMODAL_PLUGINS", "POLYMODAL_DISABLE_PLUGINS")}
    base.update(PIP_NO_INDEX="1", PIP_NO_BUILD_ISOLATION="0", PIP_DISABLE_PIP_VERSION_CHECK="1")
    outputs: dict[str, str] = {}
    for marker, _, body in blocks():
        if marker != "run":
            continue
        for line in filter(None, (raw.strip() for raw in body.splitlines())):
            words = shlex.split(line)
            env = dict(base)
            while "=" in words[0]:
                key, value = words.pop(0).split("=", 1)
                env[key] = value
            command = programs[words[0]] + words[1:]
            if words[:3] == ["python", "-m", "build"]:
                command.append("--no-isolation")  # offline: use this environment's setuptools
            result = subprocess.run(command, cwd=project, env=env, capture_output=True, text=True,
                                    timeout=300)
            assert result.returncode == 0, f"`{line}` failed:\n{result.stdout}\n{result.stderr}"
            outputs[line] = result.stdout

    assert (project / manifest_path).read_text() == files[manifest_path]
    _check_training_from_a_table(project, outputs)
    assert "ordinal         polymodal-ordinal 0.1.0  Ordinal regression" in \
        outputs["polymodal list --kind head"]
    assert "levels: integer = —  (required)" in outputs["polymodal show head ordinal"]
    assert "4 passed" in outputs["pytest -q tests"]
    assert "heads condition <- photo + details: a vector of 64" in outputs["polymodal validate spec.yaml"]
    assert 'head_condition(["head condition: ordinal, 5 levels"])' in outputs["polymodal validate spec.yaml --diagram"]
    assert "polymodal-ordinal 0.1.0: entry point 'ordinal' provides head ordinal" in \
        outputs["polymodal install dist/polymodal_ordinal-0.1.0-py3-none-any.whl"]
    assert "polymodal-ordinal 0.1.0  entry point 'ordinal' -> polymodal_ordinal" in \
        outputs["polymodal plugins"]
    assert "ordinal" not in outputs["POLYMODAL_DISABLE_PLUGINS=polymodal-ordinal polymodal list --kind head"]
    assert "ok" in outputs["POLYMODAL_PLUGINS=polymodal,ordinal polymodal validate spec.yaml"]
    installed = next((fresh_env / "lib").glob("python*/site-packages"))
    assert (installed / manifest_path).is_file(), "the wheel must ship the manifest"


def _check_training_from_a_table(project, outputs: dict[str, str]) -> None:
    """The codec section's run: trained by the lowest mae (the direction the codec declares),
    evaluated with the declared metrics, predictions written as grades."""
    import csv
    import json

    trained = outputs["polymodal train table.yaml --data grades.csv -o wear.safetensors"]
    history = json.loads((project / "wear.run" / "metrics.json").read_text())
    maes = [row["val"]["condition"]["mae"] for row in history]
    best = maes.index(min(maes)) + 1
    assert f"best epoch {best} of {len(history)} by condition.mae" in trained
    assert len(set(maes)) > 1, "every epoch alike: the direction was not tested"
    evaluated = outputs["polymodal evaluate wear.safetensors --data grades.csv"]
    assert "head condition (200 rows): loss" in evaluated and " accuracy " in evaluated \
        and " mae " in evaluated
    with (project / "predicted.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 200 and {r["condition"] for r in rows} <= set("01234")


def test_the_proposed_catalog_entry_parses():
    (extra,) = [body for m, _, body in blocks() if m == "check: extra"]
    (entry,) = parse_manifest(extra, "guide").extras
    assert (entry.package, entry.requirement, entry.components) == (
        "polymodal-ordinal", "polymodal-ordinal", (("head", "ordinal"),))


def test_the_codec_interface_is_documented():
    text = GUIDE.read_text()
    section = text[text.index("## 7. Reading table columns: codecs"):text.index("## 8.")]
    from polymodal.plugin import Codec, TargetCodec

    methods = {name for cls in (Codec, TargetCodec) for name in vars(cls)
               if not name.startswith("_") and callable(getattr(cls, name))}
    assert methods == {"columns", "absent", "check", "fit", "complete", "prepare", "encode",
                       "augment", "check_state", "has_target", "fixed_options", "holds_classes",
                       "decode", "metrics", "details", "render_details", "parts", "permute_part",
                       "row_scores", "attribution_value", "attribution_pictures", "keep_encoded",
                       "expects", "read_sent"}
    for name in [*methods, "declared_metrics", "Metric", "RowIssues", "Table", "is_missing",
                 "bad_row", "base_dir", "(config, name, where)"]:
        assert name in section, f"{name} is not described in the codec section"


def test_environment_switches_are_documented():
    text = GUIDE.read_text()
    for needed in ("POLYMODAL_DISABLE_PLUGINS", "POLYMODAL_PLUGINS", "disabling wins",
                   "before their module\n  is imported"):
        assert needed in text



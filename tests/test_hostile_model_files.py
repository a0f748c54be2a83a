"""Model files built to hang, exhaust or mislead are refused quickly with one clear message."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import save_file

import polymodal
from polymodal import ModelFileError

SPEC = {"name": "t", "inputs": {"t": {"adapter": {"type": "tabular", "numerical": ["a"]}}},
        "heads": {"y": {"type": "regression"}}}


def _write(path, spec_text: str, **extra: str) -> None:
    metadata = {"polymodal.format": "1", "polymodal.spec": spec_text,
                "polymodal.versions": json.dumps({"polymodal": "0.1.0"}), **extra}
    save_file({"x": torch.zeros(1)}, str(path), metadata=metadata)


def _quickly_refused(path, match: str) -> str:
    start = time.process_time()  # CPU time: other work on the machine does not count
    with pytest.raises(ModelFileError, match=match) as info:
        polymodal.load(path)
    assert time.process_time() - start < 1.0
    return str(info.value)


def test_a_huge_embedded_spec_is_refused_by_size(tmp_path):
    path = tmp_path / "big.safetensors"
    _write(path, json.dumps({**SPEC, "name": "x" * (20 * 2**20)}))
    _quickly_refused(path, r"embedded spec is 20\.0 MiB; a spec may be 4 MiB at most")


def test_a_deep_embedded_spec_is_refused_not_a_recursion_error(tmp_path):
    path = tmp_path / "deep.safetensors"
    _write(path, "[" * 100_000 + "]" * 100_000)
    _quickly_refused(path, "embedded spec nests too deeply|nests deeper than 64")


def test_inspect_of_a_huge_embedded_spec_ends_quickly(tmp_path):
    path = tmp_path / "big.safetensors"
    _write(path, json.dumps({**SPEC, "name": "x" * (20 * 2**20)}))
    start = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "polymodal", "inspect", str(path)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert time.perf_counter() - start < 20
    assert "a spec may be 4 MiB at most" in result.stderr
    assert "internal error" not in result.stderr


def test_a_header_claiming_more_than_the_file_holds_is_refused(tmp_path):
    path = tmp_path / "lies.safetensors"
    path.write_bytes((2**62).to_bytes(8, "little") + b"{}")
    _quickly_refused(path, "not a valid safetensors model file.*header claims")


def test_an_unknown_package_named_by_a_file_gets_no_install_line(tmp_path):
    path = tmp_path / "evil.safetensors"
    spec = json.loads(json.dumps(SPEC))
    spec["heads"]["y"]["type"] = "totally-harmless-pkg:regression"
    _write(path, json.dumps(spec))
    message = _quickly_refused(path, "totally-harmless-pkg")
    assert "pip install totally-harmless-pkg" not in message
    assert "pip install 'totally-harmless-pkg'" not in message
    assert "catalog does not know it" in message or "not a package polymodal's catalog knows" in message


def test_a_package_the_catalog_knows_gets_its_install_line(tmp_path):
    path = tmp_path / "signal.safetensors"
    spec = json.loads(json.dumps(SPEC))
    spec["heads"]["y"]["type"] = "polymodal-signal:regression"
    _write(path, json.dumps(spec))
    message = _quickly_refused(path, "polymodal-signal")
    assert "pip install 'polymodal-signal'" in message or "pip install polymodal-signal" in message

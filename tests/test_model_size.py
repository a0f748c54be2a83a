"""`validate` reports the model's size, measured without allocating it, and refuses a model
that cannot fit in memory; `build` refuses it with the same place named."""

from __future__ import annotations

import pytest

import polymodal
from polymodal._cli import main
from polymodal._assembly import measure
from polymodal._footprint import Footprint, check_fits

HUGE = {"name": "huge", "inputs": {"t": {"adapter": {
    "type": "tabular", "categorical": {"site": 10**12}, "numerical": ["a"]}}},
    "heads": {"y": {"type": "regression"}}}


def _call(capsys, *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_the_measured_size_is_the_built_models(tmp_path):
    spec = polymodal.load_spec("examples/claims.yaml")
    footprint = measure(spec)
    model = polymodal.build(spec, pretrained=False)
    assert footprint.parameters == sum(p.numel() for p in model.parameters())
    stored = sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])
    assert footprint.bytes == stored


def test_validate_prints_the_size(capsys):
    code, out, _ = _call(capsys, "validate", "examples/claims.yaml")
    assert code in (0, None)
    assert "model: 11,337,272 parameters (43.3 MiB" in out


def test_validate_and_build_refuse_what_cannot_fit(tmp_path, capsys):
    import yaml

    path = tmp_path / "huge.yaml"
    path.write_text(yaml.safe_dump(HUGE))
    code, _, err = _call(capsys, "validate", str(path))
    assert code == 1
    assert err.startswith(f"error: {path}: inputs.t.adapter: the model would hold"
                          " 50,000,000,000,")
    assert "more than this machine's" in err and "categorical cardinalities" in err
    code, _, err2 = _call(capsys, "build", str(path), "-o", str(tmp_path / "m.safetensors"))
    assert code == 1
    assert err2 == err  # refused before anything is allocated, as validate refuses it
    assert not (tmp_path / "m.safetensors").exists()


def test_the_memory_check_counts_bytes_not_parameters():
    check_fits(Footprint(parameters=10, trainable=10, bytes=1000), memory=1000)
    with pytest.raises(polymodal.SpecError, match="more than this machine's 999 bytes"):
        check_fits(Footprint(parameters=10, trainable=10, bytes=1000), memory=999)



def test_a_size_not_measured_names_every_place_the_data_decides():
    from polymodal._footprint import _first_line
    from polymodal._errors import SpecError

    found = _first_line(SpecError([("inputs.a.adapter", "learned from data"),
                                   ("heads.y", "classes: auto is learned from data")]))
    assert found == "inputs.a.adapter: learned from data; also at heads.y"

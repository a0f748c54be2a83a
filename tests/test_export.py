"""Exporting models (ONNX, torch.export) and predicting from an ONNX export.

The models are the example specs' component combinations at small sizes. ONNX conversion costs
seconds a model, so each is traced and converted once (module fixtures) and checked many ways.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Literal

import numpy as np
import onnx
import pytest
import torch
import yaml

import polymodal
from polymodal._cli import main
from polymodal._export import trace, write_onnx
from polymodal._testing import ConformanceError, check_export, minimal_spec
from polymodal._training.onnx_model import OnnxModel, session
from polymodal.plugin import Backbone, BackboneConfig, Signal

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
sys.path.insert(0, str(ROOT / "tests" / "training"))
from training_data import read_csv, write_csv  # noqa: E402

TOLERANCE = 1e-4


def example_spec(name: str) -> dict:
    """An example spec, small: timm ResNets become the 10-layer one (the same component)."""
    spec = yaml.safe_load((EXAMPLES / f"{name}.yaml").read_text())
    for backbone in [*spec.get("backbones", {}).values(),
                     *(i["backbone"] for i in spec["inputs"].values() if isinstance(i.get("backbone"), dict))]:
        if backbone["type"] == "timm":
            backbone.update(model="resnet10t", pretrained=False)
    return spec


def randomize(model: torch.nn.Module) -> None:
    """Small random values in every parameter: zero-initialised layers (FiLM's last, the
    placeholders) would hide a path that the export dropped."""
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.05)


def random_inputs(layout, n: int, seed: int, missing: bool, nan: bool = True) -> dict[str, torch.Tensor]:
    """Raw inputs the exported layout describes: unseen (-2) and missing (-1) categories, NaN
    numbers (with ``nan``), and, with ``missing``, random presence masks (some samples with
    nothing present)."""
    g = torch.Generator().manual_seed(seed)
    tensors = {}
    for i in layout.inputs:
        shape = [n, *i.shape[1:]]
        if i.present:
            if missing:
                tensors[i.name] = torch.rand(n, generator=g) > 0.4
        elif i.dtype == "int64":
            tensors[i.name] = torch.randint(-2, 6, shape, generator=g)
        elif len(shape) == 1:
            values = torch.randn(shape, generator=g)
            holes = torch.rand(shape, generator=g) < (0.2 if nan else 0.0)
            tensors[i.name] = torch.where(holes, torch.nan, values)
        else:
            tensors[i.name] = torch.rand(shape, generator=g)
    return tensors


def eager(model, layout, tensors: dict[str, torch.Tensor]) -> list[torch.Tensor]:
    """The model's own outputs for the exported inputs, through its ordinary call."""
    batch: dict = {}
    present = {}
    for i in layout.inputs:
        if i.name not in tensors:
            continue
        if i.present:
            present[i.input] = tensors[i.name]
        elif i.key is None:
            batch[i.input] = tensors[i.name]
        else:
            batch.setdefault(i.input, {})[i.key] = tensors[i.name]
    with torch.no_grad():
        outputs = model(batch, present or None)
    return [outputs[head] for head in layout.outputs]


def largest_difference(got, expected) -> float:
    return max(float((g - e).abs().max()) for g, e in zip(got, expected))


def check_parity(model, layout, runner, program, missing: bool, nan: bool = True) -> None:
    """Eager, ONNX Runtime and the ExportedProgram agree on random batches of several sizes;
    with ``missing``, some samples' inputs are marked missing."""
    for n in (1, 3, 7):
        tensors = random_inputs(layout, n, seed=n, missing=missing, nan=nan)
        expected = eager(model, layout, tensors)
        assert all(torch.isfinite(e).all() for e in expected)
        onnx_runtime = runner.run_flat(tensors)  # masks left out: their default, all present
        with torch.no_grad():
            compiled = program(*[tensors.get(i.name, torch.ones(n, dtype=torch.bool))
                                 for i in layout.inputs])
        assert [tuple(o.shape) for o in onnx_runtime] == [tuple(e.shape) for e in expected]
        assert largest_difference(onnx_runtime, expected) < TOLERANCE, n
        assert largest_difference(compiled, expected) < TOLERANCE, n


def check_masks_are_wired(model, layout, runner, nan: bool = True) -> None:
    """Marking an input missing changes the export's outputs as it changes the model's; one
    mask fed and the other left out works; a mask left out is every sample present."""
    tensors = random_inputs(layout, 3, seed=5, missing=False, nan=nan)
    first = next(i for i in layout.inputs if i.present)
    absent = {**tensors, first.name: torch.tensor([False, True, False])}
    present = {**tensors, first.name: torch.ones(3, dtype=torch.bool)}
    changed = runner.run_flat(absent)
    assert largest_difference(changed, eager(model, layout, absent)) < TOLERANCE
    assert largest_difference(runner.run_flat(present), runner.run_flat(tensors)) == 0
    assert largest_difference(changed, runner.run_flat(tensors)) > 1e-3


# -- parity: eager, ONNX Runtime, ExportedProgram ----------------------------------------------


def conformance_model(component_class: type) -> torch.nn.Module:
    spec, registry = minimal_spec(component_class)
    return polymodal.build(spec, pretrained=False, registry=registry)


def shared_backbone_spec() -> dict:
    """The shared-backbone example with two of its three inputs: one backbone over 1- and
    12-channel images (each projected to 3), no fusion, a head per input."""
    spec = example_spec("shared_backbone")
    del spec["inputs"]["doppler"], spec["heads"]["doppler_flow"]
    return spec


def parity_models() -> dict[str, object]:
    """The examples' component combinations (claims' is the demo's, checked further down), and
    the gated and FiLM fusions in their conformance models (probe inputs: small graphs; the
    gated fusion is in no example)."""
    from polymodal_plugins.film import FiLMFusion
    from polymodal_plugins.gated import GatedFusion

    return {
        "conditioning": lambda: polymodal.build(example_spec("conditioning"), pretrained=False),
        "satellite": lambda: polymodal.build(example_spec("satellite"), pretrained=False),
        "shared_backbone": lambda: polymodal.build(shared_backbone_spec(), pretrained=False),
        "gated": lambda: conformance_model(GatedFusion),
        "film": lambda: conformance_model(FiLMFusion),
    }


#: The costliest export here (torchvision's ResNet-18 through ONNX conversion, some 15 s of CPU)
#: runs with the slow tests; the quick run keeps its fusion, FiLM, in the conformance model.
SLOW = {"conditioning"}


@pytest.fixture(scope="module", params=[pytest.param(name, marks=pytest.mark.slow) if name in SLOW
                                        else name for name in parity_models()])
def exported(request, tmp_path_factory):
    """(name, model, layout, ONNX Runtime runner, ExportedProgram module), traced once."""
    torch.manual_seed(0)
    model = parity_models()[request.param]().eval()
    randomize(model)
    program, layout, _ = trace(model)
    path = tmp_path_factory.mktemp(request.param) / "model.onnx"
    write_onnx(program, layout, {}, path)
    return request.param, model, layout, OnnxModel(path, session(path), {}, layout), program.module()


@pytest.mark.parametrize("missing", [False, True], ids=["all-present", "missing-inputs"])
def test_eager_onnx_runtime_and_exported_program_agree(exported, missing):
    name, model, layout, runner, program = exported
    masks = [i.name for i in layout.inputs if i.present]
    if name == "shared_backbone":
        assert masks == []  # no fusion: each head reads its own input, nothing to mark missing
    else:
        assert masks == [f"present.{n}" for n in model.adapters]
    check_parity(model, layout, runner, program, missing and bool(masks))
    if missing and masks:
        check_masks_are_wired(model, layout, runner)


def test_the_onnx_file_names_its_inputs_outputs_and_free_batch(exported):
    _, model, layout, runner, _ = exported
    declared = {i.name: i for i in runner.session.get_inputs()}
    optional = {i.name for i in runner.session.get_overridable_initializers()}
    assert list(declared) == [i.name for i in layout.inputs if not i.present]
    assert optional == {i.name for i in layout.inputs if i.present}
    assert all(i.shape[0] == "batch" for i in declared.values())
    assert [o.name for o in runner.session.get_outputs()] == list(model.spec.heads)
    assert all(o.shape[0] == "batch" for o in runner.session.get_outputs())


# -- the demo: a trained model, its export, predict from the export ----------------------------


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """The training demo's spec (a photo read at 16 px, a table; claims' combination) trained
    briefly on a small version of its data, then exported to ONNX through the command line.
    Its table adapter refuses NaN (``nan: error``), which no graph can do."""
    import contextlib
    import importlib.util
    import io

    folder = tmp_path_factory.mktemp("demo")
    loader = importlib.util.spec_from_file_location("make_data", EXAMPLES / "parts" / "make_data.py")
    make_data = importlib.util.module_from_spec(loader)
    loader.loader.exec_module(make_data)
    train_table, test_table = make_data.generate(folder / "data", train_rows=48, test_rows=40)
    spec = yaml.safe_load((EXAMPLES / "parts" / "fused.yaml").read_text())
    spec["training"].update(epochs=1)
    del spec["training"]["early_stopping"]
    spec["inputs"]["record"]["adapter"]["nan"] = "error"
    model = folder / "parts.safetensors"
    polymodal.train(spec, train_table, model, progress=False)
    onnx_file = folder / "parts.onnx"
    with contextlib.redirect_stdout(io.StringIO()) as printed:
        assert main(["export", str(model), "-o", str(onnx_file)]) == 0
    return model, onnx_file, test_table, printed.getvalue()


def test_cli_export_reports_the_layout_and_the_check(demo):
    _, onnx_file, _, printed = demo
    assert f"wrote {onnx_file} (onnx, opset 18)" in printed
    assert "photo float32 [batch, 3, 16, 16]" in printed
    assert "record.material int64 [batch]" in printed and "record.reading float32 [batch]" in printed
    assert "present.photo bool [batch] (optional: marks missing inputs)" in printed
    assert "outputs: decision [batch, 2]" in printed
    assert re.search(r"checked with ONNX Runtime on a random batch: outputs within [0-9.e-]+ of"
                     r" the model's", printed)


def test_demo_predictions_from_onnx_equal_the_model_files(demo, tmp_path, capsys):
    """On the demo's test table: same class names, probabilities within 1e-5; the export
    streamed in batches of 7."""
    model, onnx_file, table, _ = demo
    assert main(["predict", str(model), "--data", str(table), "-o", str(tmp_path / "a.csv"),
                 "--keep", "part_id"]) == 0
    assert main(["predict", str(onnx_file), "--data", str(table), "-o", str(tmp_path / "b.csv"),
                 "--keep", "part_id", "--batch-size", "7"]) == 0
    assert "wrote 40 prediction(s)" in capsys.readouterr().out
    from_model, from_onnx = read_csv(tmp_path / "a.csv"), read_csv(tmp_path / "b.csv")
    assert list(from_onnx[0]) == list(from_model[0])
    assert [r["part_id"] for r in from_onnx] == [r["part_id"] for r in from_model]
    assert [r["decision"] for r in from_onnx] == [r["decision"] for r in from_model]
    for a, b in zip(from_model, from_onnx):
        for name in ("decision_prob_accept", "decision_prob_reject"):
            assert abs(float(a[name]) - float(b[name])) <= 1e-5


def test_rows_without_a_photo_are_predicted_from_onnx_as_from_the_model_file(demo, tmp_path):
    """predict from an ONNX file feeds present.photo from the table's empty cells; by hand,
    zeros and a false mask give the same (docs/deploy.md, "Rows that lack an input")."""
    import onnxruntime

    model, onnx_file, table, _ = demo
    rows = read_csv(table)
    for row in rows[::3]:
        row["photo"] = ""
    partial = write_csv(table.with_name("partial.csv"), rows)
    results = [polymodal.predict(path, partial, batch_size=7)["columns"] for path in (model, onnx_file)]
    assert results[0]["inputs_used"] == results[1]["inputs_used"]
    assert results[0]["inputs_used"].count("record only") == len(rows[::3])
    for name in ("decision_prob_accept", "decision_prob_reject"):
        assert np.allclose(results[0][name], results[1][name], atol=1e-5)
    # By hand: the first row with its photo zeroed and marked absent.
    from polymodal._data.binding import Binding
    from polymodal._data.table import read_table

    loaded = polymodal.load(model)
    encoded = Binding(loaded.spec).encode(read_table(partial).take([0]), loaded.fitted_state,
                                          targets=False)
    feeds = {"photo": encoded.inputs["photo"].float().numpy() / 255.0}
    feeds.update({f"record.{k}": v.numpy() for k, v in encoded.inputs["record"].items()})
    feeds["photo"][0] = 0.0
    feeds["present.photo"] = np.array([False])
    session = onnxruntime.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    logits = session.run(["decision"], feeds)[0]
    probability = np.exp(logits[0]) / np.exp(logits[0]).sum()
    assert np.allclose(probability, [results[0]["decision_prob_accept"][0],
                                     results[0]["decision_prob_reject"][0]], atol=1e-5)


def test_demo_exports_agree_on_random_batches_with_missing_inputs(demo, tmp_path):
    """The demo's ONNX file and its .pt2 (through the Python API) against the model; both files
    carry the model file's metadata."""
    from polymodal._modelfile import read_metadata

    model_file, onnx_file, _, _ = demo
    result = polymodal.export(model_file, tmp_path / "parts.pt2")
    assert result.checked_with == "the saved ExportedProgram" and result.difference < TOLERANCE
    model = polymodal.load(model_file)
    runner = OnnxModel.open(onnx_file)
    assert runner.layout.inputs == result.layout.inputs
    stored = read_metadata(model_file)
    extra = dict.fromkeys([*stored, "polymodal.export"], "")
    program = torch.export.load(tmp_path / "parts.pt2", extra_files=extra).module()
    for missing in (False, True):  # no NaN: this model's table refuses it (nan: error)
        check_parity(model, runner.layout, runner, program, missing, nan=False)
    check_masks_are_wired(model, runner.layout, runner, nan=False)

    props = {p.key: p.value for p in onnx.load(str(onnx_file)).metadata_props}
    assert {k: props[k] for k in stored} == stored
    assert {k: extra[k] for k in stored} == stored
    layout = json.loads(props["polymodal.export"])
    assert json.loads(extra["polymodal.export"])["inputs"] == layout["inputs"]
    assert layout["exporter"]["opset"] == 18 and [o["name"] for o in layout["outputs"]] == ["decision"]
    state = json.loads(props["polymodal.state"])
    assert state["heads"]["decision"]["classes"] == ["accept", "reject"]
    assert state["inputs"]["record"]["vocabularies"]["material"] == ["plastic", "steel", "wood"]


def test_bad_rows_are_handled_as_for_the_model_file(demo, tmp_path):
    model, onnx_file, table, _ = demo
    rows = read_csv(table)
    rows[2]["photo"] = "images/no_such.png"
    rows[5]["reading"] = "high"
    rows[7]["reading"] = ""  # missing, and the adapter's nan policy is error
    bad = write_csv(table.with_name("bad.csv"), rows)
    results = [polymodal.predict(path, bad, on_bad_row="skip") for path in (model, onnx_file)]
    assert results[0]["skipped"] == results[1]["skipped"] and len(results[0]["skipped"]) == 3
    assert "row 8, column 'reading': the value is missing (empty or NaN), and" \
        " inputs.record.adapter.nan is error" in results[1]["skipped"][2]
    assert results[0]["columns"]["decision"] == results[1]["columns"]["decision"]
    messages = []
    for path in (model, onnx_file):
        with pytest.raises(polymodal.DataError) as info:
            polymodal.predict(path, bad, tmp_path / "out.csv")
        messages.append(str(info.value))
    assert messages[0] == messages[1] and "no_such.png" in messages[0]
    assert not (tmp_path / "out.csv").exists()


def test_the_standalone_snippet_runs_with_onnxruntime_and_numpy_only(demo, tmp_path):
    """docs/deploy.md's ONNX Runtime snippet, in an interpreter whose path holds onnxruntime and
    numpy and nothing else (no site-packages): it gives polymodal's prediction."""
    import onnxruntime

    from polymodal._data.binding import Binding, RowIssues
    from polymodal._data.table import read_table

    model, onnx_file, table, _ = demo
    text = (ROOT / "docs" / "deploy.md").read_text()
    snippet = next(b for b in re.findall(r"```python\n(.*?)```", text, re.S) if "onnxruntime" in b)
    only = tmp_path / "path"
    only.mkdir()
    for package in (onnxruntime, np):
        source = Path(package.__file__).parent
        (only / source.name).symlink_to(source)
        libs = source.with_name(f"{source.name}.libs")  # shared libraries of manylinux wheels
        if libs.is_dir():
            (only / libs.name).symlink_to(libs)
    # The row's photo as an image library reads it at the model's 16 px (here: polymodal's own
    # reader), as pixel values [height, width, channels].
    rows = read_table(table).take([0])
    loaded = polymodal.load(model)
    photo = next(b.codec for b in Binding(loaded.spec).inputs if b.name == "photo")
    image = photo.encode(rows, loaded.fitted_state["inputs"]["photo"], RowIssues(rows))[0]
    first = read_csv(table)[0]
    row = {"photo": (image.float() * 255).permute(1, 2, 0).tolist(), "record.weight_kg": float(first["weight_kg"]),
           "record.material": first["material"], "record.site": first["site"],
           "record.reading": float(first["reading"])}
    no_photo = write_csv(tmp_path / "no_photo.csv", [{**first, "photo": ""}])
    for given, rows_file in ((row, table), ({**row, "photo": None}, no_photo)):
        program = (f"import sys\nsys.path.insert(0, {str(only)!r})\npath = {str(onnx_file)!r}\n"
                   f"row = {given!r}\n{snippet}\n"
                   "print(sorted(m for m in sys.modules if m.split('.')[0] in ('polymodal', 'torch')))\n")
        done = subprocess.run([sys.executable, "-I", "-S", "-c", program], capture_output=True,
                              text=True, timeout=120, cwd=tmp_path)
        assert done.returncode == 0, done.stderr
        label_line, imported = done.stdout.strip().splitlines()
        assert imported == "[]"
        label, probabilities = label_line.split(" ", 1)
        expected = polymodal.predict(onnx_file, rows_file)["columns"]
        assert label == expected["decision"][0]
        shown = json.loads(probabilities.replace("'", '"'))
        assert shown["reject"] == pytest.approx(expected["decision_prob_reject"][0], abs=1e-4)


# -- components that do not export ------------------------------------------------------------


class Branchy(Backbone):
    """Branches on its values: no graph can hold that."""

    class Config(BackboneConfig):
        type: Literal["branchy"] = "branchy"

        def gives(self, takes: Signal) -> Signal:
            return takes

    def forward(self, x):
        return x if bool((x > 0).all()) else -x


class DeclaredBranchy(Branchy):
    class Config(BackboneConfig):
        type: Literal["declared_branchy"] = "declared_branchy"

        def gives(self, takes: Signal) -> Signal:
            return takes

    exportable = True


class Refusing(Backbone):
    """Identity, but says it cannot be exported."""

    exportable = "it calls a vendor library on every batch"

    class Config(BackboneConfig):
        type: Literal["refusing"] = "refusing"

        def gives(self, takes: Signal) -> Signal:
            return takes

    def forward(self, x):
        return x


def test_export_names_a_component_that_fails_and_one_that_refuses(tmp_path):
    model = conformance_model(Branchy).eval()
    registry = minimal_spec(Branchy)[1]
    with pytest.raises(polymodal.ExportError) as info:
        polymodal.export(model, tmp_path / "m.pt2", registry=registry)
    message = str(info.value)
    assert message.startswith("torch.export failed in backbones.subject (branchy")
    assert "its plugin does not state whether it exports" in message
    assert not (tmp_path / "m.pt2").exists()
    model = conformance_model(Refusing).eval()
    with pytest.raises(polymodal.ExportError, match=r"this model cannot be exported:"
                       r" backbones.subject \(refusing, .*\): it calls a vendor library"):
        polymodal.export(model, tmp_path / "m.onnx", registry=minimal_spec(Refusing)[1])


def test_conformance_kit_checks_what_a_component_states():
    from polymodal_plugins.gated import GatedFusion

    from polymodal_plugins.regression import RegressionHead

    # The regression head is in no quick example (the conditioning example is slow).
    for cls in (GatedFusion, RegressionHead):
        differences = check_export(cls)
        assert set(differences) == {"torch-export", "onnx"}
        assert all(d is not None and d < TOLERANCE for d in differences.values())
    assert check_export(Refusing, onnx=False) == {}
    with pytest.raises(ConformanceError, match="Branchy: exportable: states nothing"):
        check_export(Branchy, onnx=False)
    with pytest.raises(ConformanceError, match=r"DeclaredBranchy: export: torch-export: torch.export"
                       r" failed in backbones.subject .*states it exports: a bug in the plugin"):
        check_export(DeclaredBranchy, onnx=False)


def test_a_file_that_differs_from_the_model_is_refused_and_removed(tmp_path, monkeypatch):
    from polymodal import _export
    from polymodal_plugins.gated import GatedFusion

    model = conformance_model(GatedFusion).eval()
    registry = minimal_spec(GatedFusion)[1]
    run_file = _export._run_file

    def off_by_a_little(*args):
        outputs, what = run_file(*args)
        return [o + 1e-3 for o in outputs], what

    monkeypatch.setattr(_export, "_run_file", off_by_a_little)
    with pytest.raises(polymodal.ExportError, match=r"m.pt2: the exported model's outputs differ"
                       r" from the model's by up to 0.001 \(the saved ExportedProgram\); this is a"
                       " bug in the exporter or in a component"):
        polymodal.export(model, tmp_path / "m.pt2", registry=registry)
    assert list(tmp_path.iterdir()) == []


def test_every_builtin_component_states_it_exports():
    registry = polymodal.get_registry()
    builtins = [r for r in registry.components() if r.package == "polymodal"]
    assert len(builtins) >= 12
    assert {r.type: registry.load(r).exportable for r in builtins} == {r.type: True for r in builtins}


# -- bad input ------------------------------------------------------------------------------------


def call(capsys, *args: str) -> tuple[int, str]:
    code = main(list(args))
    return code, capsys.readouterr().err


def test_bad_export_requests_get_one_clear_message(demo, tmp_path, capsys):
    model, onnx_file, table, _ = demo
    code, err = call(capsys, "export", str(model), "-o", str(tmp_path / "m.bin"))
    assert code == 1 and "give the format (--format onnx or torch-export)" in err
    code, err = call(capsys, "export", str(tmp_path / "none.safetensors"), "-o", str(tmp_path / "m.onnx"))
    assert code == 1 and "no such model file" in err
    code, err = call(capsys, "export", str(onnx_file), "-o", str(tmp_path / "m.pt2"))
    assert code == 1 and "an exported model, not a model file" in err
    code, err = call(capsys, "evaluate", str(onnx_file), "--data", str(table))
    assert code == 1 and "needs the model file it was exported from" in err
    with pytest.raises(polymodal.ExportError, match="unknown export format 'tflite'"):
        polymodal.export(model, tmp_path / "m.onnx", format="tflite")
    code, err = call(capsys, "export", str(model), "-o", str(tmp_path / "m.onnx"), "--format",
                     "torch-export")
    assert code == 1 and "a name ending in .onnx says onnx, not torch-export; name the file m.pt2" in err
    for code, err in [call(capsys, *args) for args in (("export",), ("predict",))]:
        assert code == 2 and "Traceback" not in err


def test_predict_refuses_files_that_are_not_polymodal_exports(demo, tmp_path, capsys):
    _, onnx_file, table, _ = demo
    foreign = onnx.load(str(onnx_file))
    del foreign.metadata_props[:]
    onnx.save(foreign, str(tmp_path / "foreign.onnx"))
    (tmp_path / "broken.onnx").write_bytes(onnx_file.read_bytes()[:5000])
    expected = {"foreign.onnx": "an ONNX file, but not a polymodal export",
                "broken.onnx": "not a valid ONNX file", "none.onnx": "no such file"}
    for name, text in expected.items():
        code, err = call(capsys, "predict", str(tmp_path / name), "--data", str(table), "-o",
                         str(tmp_path / "out.csv"))
        assert code == 1 and err.startswith("error: ") and text in err, err
    import onnxruntime

    if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        code, err = call(capsys, "predict", str(onnx_file), "--data", str(table), "-o",
                         str(tmp_path / "out.csv"), "--device", "cuda")
        assert code == 1 and "this ONNX Runtime has no CUDA execution provider" in err


def test_missing_runtime_or_exporter_names_the_extra(demo, tmp_path, monkeypatch):
    model, onnx_file, table, _ = demo
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(polymodal.ExportError, match=r"needs ONNX Runtime.*pip install 'polymodal\[onnx\]'"):
        polymodal.predict(onnx_file, table)
    monkeypatch.setitem(sys.modules, "onnxscript", None)
    with pytest.raises(polymodal.ExportError, match=r"needs the onnx and onnxscript packages"):
        polymodal.export(model, tmp_path / "m.onnx")


def test_onnx_runner_checks_the_sizes_it_is_given(demo):
    _, onnx_file, _, _ = demo
    runner = OnnxModel.open(onnx_file)
    record = {"material": torch.tensor([0, 1]), "site": torch.tensor([2, -1]),
              "reading": torch.tensor([0.5, -1.0]), "weight_kg": torch.tensor([2.0, 1.5])}
    batch = {"photo": torch.zeros(2, 3, 20, 20), "record": record}
    with pytest.raises(polymodal.DataError, match=r"input 'photo': the export takes shape"
                       r" \['batch', 3, 16, 16\], the batch holds \[2, 3, 20, 20\]"):
        runner(batch)
    # 8-bit images are scaled as the model scales them.
    pixels = torch.randint(0, 256, (2, 3, 16, 16), dtype=torch.uint8)
    model = polymodal.load(demo[0])
    with torch.no_grad():
        expected = model({"photo": pixels, "record": record})["decision"]
    assert largest_difference([runner({"photo": pixels, "record": record})["decision"]], [expected]) < TOLERANCE

"""export --quantize int8 (dynamic and calibrated), served like any export; a server fault
answered 500 without internals; and docs/serve.md's Python client run against a real server."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import subprocess
import sys
from pathlib import Path

import httpx
import onnx
import pytest
from conftest import Server
from test_serve import request_rows

import polymodal
from polymodal._cli import main
from polymodal._quantize import KEY_QUANTIZATION

DOCS = Path(__file__).resolve().parents[2] / "docs" / "serve.md"


def metadata(path: Path) -> dict[str, str]:
    return {p.key: p.value for p in onnx.load(str(path)).metadata_props}


def accuracy(path: Path, table: Path) -> float:
    import csv

    predicted = polymodal.predict(path, table)["columns"]["decision"]
    with table.open(newline="") as handle:
        truth = [r["decision"] for r in csv.DictReader(handle)]
    return sum(p == t for p, t in zip(predicted, truth)) / len(truth)


def test_int8_exports_keep_metadata_and_predict(demo, tmp_path, capsys):
    dynamic, static = tmp_path / "dynamic.onnx", tmp_path / "static.onnx"
    assert main(["export", str(demo["model"]), "-o", str(dynamic), "--quantize", "int8"]) == 0
    said = capsys.readouterr().out
    linear = sum(n.op_type in ("MatMul", "Gemm") for n in onnx.load(str(demo["onnx"])).graph.node)
    convs = sum(n.op_type == "Conv" for n in onnx.load(str(demo["onnx"])).graph.node)
    # dynamic int8 takes every matrix product and leaves every convolution
    assert f"int8 (dynamic): {linear} of {linear + convs} convolutions and matrix products" in said
    assert "judge the file by its predictions on held-out rows" in said
    assert main(["export", str(demo["model"]), "-o", str(static), "--quantize", "int8",
                 "--calibration", str(demo["train"])]) == 0
    fp32 = metadata(demo["onnx"])
    for path, mode in ((dynamic, "dynamic"), (static, "static")):
        held = metadata(path)
        assert {k: held[k] for k in fp32} == fp32  # spec, fitted state, layout, versions
        assert json.loads(held[KEY_QUANTIZATION])["mode"] == mode
        ops = {node.op_type for node in onnx.load(str(path)).graph.node}
        # dynamic: the linear layers' weights are int8 (convolutions stay fp32); static: all
        assert ("MatMulInteger" in ops) if mode == "dynamic" else ("QuantizeLinear" in ops and
                                                                  "Conv" in ops)
        assert path.stat().st_size < demo["onnx"].stat().st_size
        assert abs(accuracy(path, demo["test"]) - accuracy(demo["onnx"], demo["test"])) <= 0.0625


def test_static_int8_keeps_padding_dominated_convolutions_fp32(demo, tmp_path):
    """A 3x3 kernel on a map smaller than 3x3 (the demo's ResNet on 16 px photos ends on 1x1
    maps) stays fp32, with fp32 weights; the convolutions on larger maps are int8."""
    from polymodal._quantize import padding_dominated_convs

    kept = padding_dominated_convs(demo["onnx"])
    graph = onnx.shape_inference.infer_shapes(onnx.load(str(demo["onnx"]))).graph
    shapes = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim] for v in graph.value_info}
    weights = {i.name: list(i.dims) for i in graph.initializer}
    convs = {n.name: (shapes[n.input[0]], weights[n.input[1]]) for n in graph.node
             if n.op_type == "Conv"}
    assert kept and set(kept) < set(convs)
    for name, (shape, kernel) in convs.items():
        assert (name in kept) == (shape[2] < kernel[2] or shape[3] < kernel[3]), name
    static = tmp_path / "static.onnx"
    polymodal.export(demo["model"], static, quantize="int8", calibration=demo["train"])
    done = json.loads(metadata(static)[KEY_QUANTIZATION])
    assert done["fp32_convolutions"] == len(kept)
    # every convolution but the kept ones is int8, and so are the matrix products
    linear = sum(n.op_type in ("MatMul", "Gemm") for n in graph.node)
    assert done["int8_nodes"] == [len(convs) - len(kept) + linear, len(convs) + linear]
    quantized = onnx.load(str(static)).graph
    made = {i.name for i in quantized.initializer if i.data_type == onnx.TensorProto.FLOAT}
    produced_by = {o: n.op_type for n in quantized.node for o in n.output}
    for node in (n for n in quantized.node if n.op_type == "Conv"):
        fp32_weight = node.input[1] in made
        assert fp32_weight == (produced_by.get(node.input[1]) != "DequantizeLinear"), node.name
    assert sum(n.input[1] in made for n in quantized.node if n.op_type == "Conv") == len(kept)


@pytest.mark.parametrize("args, message", [
    (["-o", "{tmp}/m.pt2", "--quantize", "int8"], "--quantize int8 makes an ONNX file"),
    (["-o", "{tmp}/m.onnx", "--calibration", "{train}"], "--calibration gives the rows of a"
     " static quantization: add --quantize int8"),
    (["-o", "{tmp}/m.onnx", "--quantize", "int4"], "Invalid value for '--quantize'"),
    (["-o", "{tmp}/m.onnx", "--quantize", "int8", "--calibration", "{tmp}/none.csv"], "none.csv"),
])
def test_quantize_refusals(demo, tmp_path, capsys, args, message):
    filled = [a.format(tmp=tmp_path, train=demo["train"]) for a in args]
    code = main(["export", str(demo["model"]), *filled])
    err = capsys.readouterr().err
    assert code in (1, 2) and message in err and "Traceback" not in err
    assert not (tmp_path / "m.onnx").exists() and not (tmp_path / "m.pt2").exists()


def test_the_int8_file_is_served(demo, tmp_path):
    int8 = tmp_path / "int8.onnx"
    polymodal.export(demo["model"], int8, quantize="int8", calibration=demo["train"])
    server = Server(int8, log=tmp_path / "int8.log")
    try:
        response = httpx.post(f"{server.url}/v1/predict", json={"rows": request_rows(demo, 2)},
                              timeout=60)
        assert response.status_code == 200, response.text
        wanted = polymodal.predict(int8, {**{k: [r[k] for r in request_rows(demo, 2)]
                                             for k in ("material", "site", "reading", "weight_kg")},
                                          "photo": [str(demo["data"] / "images" / f"test_{i:05d}.png")
                                                    for i in range(2)]})["columns"]
        assert [r["heads"]["decision"]["decision"] for r in response.json()["rows"]] == \
            wanted["decision"]
    finally:
        assert server.stop() == 0


def test_dynamic_int8_answers_do_not_move_with_batch_mates(demo, tmp_path):
    """A dynamic int8 file scales activations by the rows run together: the server runs each
    request's rows apart, so a request batched with others gets the answer it gets alone."""
    dynamic = tmp_path / "dynamic.onnx"
    polymodal.export(demo["model"], dynamic, quantize="int8")
    server = Server(dynamic, "--max-wait-ms", "300", log=tmp_path / "dynamic.log")
    rows = request_rows(demo, 6)
    try:
        alone = [httpx.post(f"{server.url}/v1/predict", json={"rows": [row]}, timeout=60).json()
                 for row in rows]

        async def together() -> list[httpx.Response]:
            async with httpx.AsyncClient(base_url=server.url, timeout=60) as client:
                return await asyncio.gather(*(client.post("/v1/predict", json={"rows": [row]})
                                              for row in rows))

        batched = [r.json() for r in asyncio.run(together())]
        assert max(b["batch"]["requests"] for b in batched) > 1, batched
        assert [b["rows"] for b in batched] == [a["rows"] for a in alone]
    finally:
        assert server.stop() == 0


def test_a_server_fault_is_a_500_without_internals(demo, caplog):
    """A fault of the server (here: the model's run raising) is logged with the request id and
    answered 500 with that id, never the fault's text."""
    from starlette.testclient import TestClient

    from polymodal._serve.app import create_app
    from polymodal._serve.options import ServeOptions
    from polymodal._serve.predictor import Predictor

    class Faulty(Predictor):
        def run(self, requests):
            raise RuntimeError("secret internal detail")

    app = create_app(ServeOptions(str(demo["model"])), Faulty(demo["model"]))
    with caplog.at_level(logging.ERROR, logger="polymodal.serve"), TestClient(app) as client:
        response = client.post("/v1/predict", json={"rows": request_rows(demo, 1)})
    assert response.status_code == 500
    body = response.json()
    assert body == {"error": {"message": "internal server error",
                              "request_id": response.headers["x-request-id"]}}
    assert "secret" not in response.text
    assert any(body["error"]["request_id"] in r.getMessage() for r in caplog.records)


def test_the_python_client_of_the_docs_runs(server, demo, tmp_path):
    text = DOCS.read_text()
    code = re.search(r"From Python.*?```python\n(.*?)```", text, re.S).group(1)
    image = "runs/parts-demo/data/images/test_00000.png"
    assert image in code and "http://127.0.0.1:8000" in code
    (tmp_path / Path(image).parent).mkdir(parents=True)
    (tmp_path / image).write_bytes((demo["data"] / "images" / "test_00000.png").read_bytes())
    script = tmp_path / "client.py"
    script.write_text(code.replace("http://127.0.0.1:8000", server.url))
    done = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    label, probability = done.stdout.split()
    assert label in ("accept", "reject") and 0 <= float(probability) <= 1


def test_the_curl_example_of_the_docs_runs(server, demo, tmp_path):
    import shutil

    if shutil.which("curl") is None:
        pytest.skip("no curl on this machine")
    text = DOCS.read_text()
    command = re.search(r"```bash\n(curl .*?)```", text, re.S).group(1)
    image = "runs/parts-demo/data/images/test_00000.png"
    (tmp_path / Path(image).parent).mkdir(parents=True)
    (tmp_path / image).write_bytes((demo["data"] / "images" / "test_00000.png").read_bytes())
    done = subprocess.run(["bash", "-c", command.replace("http://127.0.0.1:8000", server.url)],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["rows"][0]["heads"]["decision"]["decision"] in ("accept", "reject")

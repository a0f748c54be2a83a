"""polymodal serve over HTTP: rows in (JSON and multipart), class names out, the same answers
as polymodal.predict, dynamic batching, and a 4xx with row and column for every bad input."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import socket
import struct
import time
import zlib
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from conftest import Server, encoded

import polymodal


def table_rows(table: Path, count: int) -> list[dict[str, str]]:
    with table.open(newline="") as handle:
        return list(csv.DictReader(handle))[:count]


def request_rows(demo: dict[str, Path], count: int) -> list[dict[str, Any]]:
    """The first test rows as a client sends them: the photo's bytes, typed numbers."""
    rows = []
    for row in table_rows(demo["test"], count):
        rows.append({"photo": encoded(demo["data"] / row["photo"]), "material": row["material"],
                     "site": row["site"], "reading": float(row["reading"]),
                     "weight_kg": float(row["weight_kg"])})
    return rows


def expected(demo: dict[str, Path], count: int) -> dict[str, list[Any]]:
    rows = table_rows(demo["test"], count)
    frame = {k: [r[k] for r in rows] for k in rows[0]}
    frame["photo"] = [str(demo["data"] / p) for p in frame["photo"]]
    return polymodal.predict(demo["model"], frame)["columns"]


def post(server: Server, body: Any = None, **kwargs: Any) -> httpx.Response:
    if body is not None:
        kwargs["json"] = body
    return httpx.post(f"{server.url}/v1/predict", timeout=60, **kwargs)


def assert_same(rows: list[dict[str, Any]], wanted: dict[str, list[Any]], tolerance: float) -> None:
    assert [r["row"] for r in rows] == list(range(1, len(rows) + 1))
    for index, row in enumerate(rows):
        head = row["heads"]["decision"]
        assert head["decision"] == wanted["decision"][index]
        for name in ("accept", "reject"):
            key = f"decision_prob_{name}"
            assert abs(head[key] - wanted[key][index]) <= tolerance
        assert row["inputs_used"] == ["photo", "record"]


def test_json_rows_answer_as_predict_does(server, demo):
    response = post(server, {"rows": request_rows(demo, 3)})
    assert response.status_code == 200, response.text
    body = response.json()
    assert len(body["request_id"]) == 32 and response.headers["x-request-id"] == body["request_id"]
    assert body["skipped"] == []
    assert_same(body["rows"], expected(demo, 3), 1e-5)


def test_multipart_rows_answer_as_json(server, demo):
    rows = table_rows(demo["test"], 2)
    files = {f"photo[{i + 1}]": (f"p{i}.png", (demo["data"] / r["photo"]).read_bytes(), "image/png")
             for i, r in enumerate(rows)}
    fields = [{k: r[k] for k in ("material", "site", "reading", "weight_kg")} for r in rows]
    response = post(server, files=files, data={"request": json.dumps({"rows": fields})})
    assert response.status_code == 200, response.text
    assert_same(response.json()["rows"], expected(demo, 2), 1e-5)
    # a part must name one of the request's rows, and a cell comes once
    beyond = {**files, "photo[3]": files["photo[1]"]}
    refused = post(server, files=beyond, data={"request": json.dumps({"rows": fields})})
    assert refused.status_code == 400 and "is for row 3, but the request's rows are 2" \
        in refused.json()["error"]["message"], refused.text
    for name in ("photo[abc]", "photo[]", "photo[-1]"):  # told as a bad part name, as above
        misnamed = {"photo[1]": files["photo[1]"], name: files["photo[2]"]}
        refused = post(server, files=misnamed, data={"request": json.dumps({"rows": fields})})
        assert refused.status_code == 400, refused.text
        assert f"file part {name!r}: name a part COLUMN (row 1) or COLUMN[ROW]" \
            in refused.json()["error"]["message"], refused.text
    twice = [{**fields[0], "photo": rows[0]["photo"]}, fields[1]]
    refused = post(server, files=files, data={"request": json.dumps({"rows": twice})})
    assert refused.status_code == 400, refused.text
    assert "both give column 'photo'" in refused.json()["error"]["message"]


def test_paths_only_inside_the_data_root(server, demo, tmp_path):
    row = request_rows(demo, 1)[0]
    inside = {**row, "photo": table_rows(demo["test"], 1)[0]["photo"]}
    response = post(server, {"rows": [inside]})
    assert response.status_code == 200, response.text
    assert_same(response.json()["rows"], expected(demo, 1), 1e-5)
    outside = tmp_path / "secret.png"
    outside.write_bytes((demo["data"] / inside["photo"]).read_bytes())
    link = demo["data"] / "link.png"
    link.symlink_to(outside)
    try:
        for path in ["../" * 8 + str(outside).lstrip("/"), str(outside), "link.png"]:
            response = post(server, {"rows": [{**row, "photo": path}]})
            assert response.status_code == 403, (path, response.text)
            assert response.json()["error"] == {
                "message": f"row 1, column 'photo': the path {path!r} is outside the server's"
                " data root", "row": 1, "column": "photo",
                "request_id": response.headers["x-request-id"]}
    finally:
        link.unlink()
    missing = post(server, {"rows": [{**row, "photo": "images/no_such.png"}]})
    assert missing.status_code == 422, missing.text
    message = missing.json()["error"]["message"]
    assert message.startswith("row 1, column 'photo'") and "'images/no_such.png'" in message
    assert str(demo["data"]) not in message  # the server's own folder is not told


def test_concurrent_requests_are_batched(server, demo):
    rows = request_rows(demo, 8)

    async def run() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=server.url, timeout=60) as client:
            return await asyncio.gather(*(client.post("/v1/predict", json={"rows": [row]})
                                          for row in rows))

    responses = asyncio.run(run())
    assert [r.status_code for r in responses] == [200] * len(rows)
    batches = [r.json()["batch"] for r in responses]
    assert max(b["requests"] for b in batches) > 1, batches
    wanted = expected(demo, 8)
    for index, response in enumerate(responses):  # each request gets its own row back
        head = response.json()["rows"][0]["heads"]["decision"]
        assert abs(head["decision_prob_accept"] - wanted["decision_prob_accept"][index]) < 1e-5
    health = httpx.get(f"{server.url}/health").json()["batching"]
    assert health["largest_batch_requests"] > 1 and health["rows"] >= len(rows)


def test_unseen_categories_are_noted_per_request(server, demo):
    """A category not seen in training is read as unknown and noted, as predict notes it, in
    the answer of the request that sent it only, even when batched with others."""
    rows = request_rows(demo, 4)
    odd = [{**rows[0], "material": "unobtainium"}, {**rows[1], "material": "unobtainium"}]
    note = ("value(s) in column 'material' not seen in training: used the reserved unknown"
            " category")

    async def run() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=server.url, timeout=60) as client:
            return await asyncio.gather(client.post("/v1/predict", json={"rows": odd}),
                                        *(client.post("/v1/predict", json={"rows": [row]})
                                          for row in rows[2:]))

    answers = [r.json() for r in asyncio.run(run())]
    assert answers[0]["notes"] == {note: 2} and answers[0]["note_examples"] == {note: ["unobtainium"]}
    assert [a["notes"] for a in answers[1:]] == [{}, {}]
    assert len(answers[0]["rows"]) == 2 and all(len(a["rows"]) == 1 for a in answers[1:])
    wanted = polymodal.predict(demo["model"], {**{k: [r[k] for r in odd] for k in odd[0] if k != "photo"},
                                               "photo": [str(demo["data"] / r["photo"])
                                                         for r in table_rows(demo["test"], 2)]})
    assert wanted["notes"] == {note: 2}


def test_a_misspelt_or_left_out_column_is_noted(server, demo):
    """A key the model does not read (a misspelt column) and a column some rows leave out are
    tolerated, as a table's extra columns and empty cells are, and said in the notes."""
    rows = request_rows(demo, 3)
    sent = [{**{k: v for k, v in rows[0].items() if k != "site"}, "sight": rows[0]["site"]},
            rows[1], {k: v for k, v in rows[2].items() if k != "reading"}]
    answer = httpx.post(f"{server.url}/v1/predict", json={"rows": sent}, timeout=60).json()
    assert len(answer["rows"]) == 3
    assert answer["notes"] == {"column 'sight' is not one the model reads: ignored": 1,
                               "no key for column 'site': read as an empty cell": 1,
                               "no key for column 'reading': read as an empty cell": 1}


def bomb_png(side: int = 100_000) -> bytes:
    """A PNG whose header claims side x side pixels, in a few dozen bytes."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
            + chunk(b"IEND", b""))


def png_cell(mode: str, name: str, kind: str = "PNG") -> dict[str, str]:
    """A sent 16x16 image file (``kind``: PNG, JPEG) of Pillow's ``mode`` (``L``: one
    channel), named ``name``."""
    import base64

    from PIL import Image

    buffer = io.BytesIO()
    Image.new(mode, (16, 16), "orange").save(buffer, kind)
    return {"base64": base64.b64encode(buffer.getvalue()).decode(), "filename": name}


def npy_bytes(array: np.ndarray) -> dict[str, str]:
    import base64
    import io

    buffer = io.BytesIO()
    np.save(buffer, array)
    return {"base64": base64.b64encode(buffer.getvalue()).decode()}


def bad_row_cases(row: dict[str, Any]) -> list[tuple[str, dict[str, Any], int, str, int | None, str | None]]:
    import base64

    def second(**change: Any) -> dict[str, Any]:
        return {"rows": [row, {**row, **change}]}

    return [
        ("wrong type", second(reading="abc"), 422,
         "row 2, column 'reading': 'abc' is not a number", 2, "reading"),
        ("true/false as a number", second(reading=True), 422,
         "row 2, column 'reading': true is true/false, not a number", 2, "reading"),
        ("not an image", second(photo={"base64": base64.b64encode(b"hello").decode()}), 422,
         "row 2, column 'photo': image 'sent file' is not a PNG, JPEG, TIFF or .npy file (nor"
         " BMP, GIF or WebP)", 2, "photo"),
        ("not an image, whatever its name", second(photo={"filename": "fake.png", "base64":
                                                          base64.b64encode(b"hello").decode()}),
         422, "row 2, column 'photo': image 'fake.png' is not a PNG, JPEG, TIFF", 2, "photo"),
        ("bad base64", second(photo={"base64": "!!!"}), 422,
         "row 2, column 'photo': the base64 text is not valid base64", 2, "photo"),
        ("decompression bomb", second(photo={"base64": base64.b64encode(bomb_png()).decode()}),
         422, "more than the 67,108,864 (8192x8192) an image may have", 2, "photo"),
        ("wrong channels", second(photo=npy_bytes(np.zeros((5, 8, 8), np.float32))), 422,
         "has 5 channel(s) but inputs.photo.adapter.channels is 3", 2, "photo"),
        ("wrong channels, a PNG decoded on arrival", second(photo=png_cell("L", "grey.png")),
         422, "row 2, column 'photo': image 'grey.png' has 1 channel(s) but"
         " inputs.photo.adapter.channels is 3", 2, "photo"),
        ("NaN pixels", second(photo=npy_bytes(np.full((3, 8, 8), np.nan, np.float32))), 422,
         "not finite numbers", 2, "photo"),
        ("object in a value column", second(material={"a": 1}), 422,
         "row 2, column 'material': holds a JSON object", 2, "material"),
        ("file cell of another shape", second(photo={"url": "x"}), 422,
         'a file cell is {"base64"', 2, "photo"),
        ("missing column", {"rows": [{k: v for k, v in row.items() if k != "reading"}]}, 422,
         "no row has column 'reading' (read by inputs.record.adapter)", None, "reading"),
        ("long string", second(site="x" * 10_001), 413, "more than the 10,000 a cell may hold",
         2, "site"),
        ("huge integer", second(reading=int("9" * 400)), 422,
         "row 2, column 'reading': an integer of 400 digits, beyond the range", 2, "reading"),
        ("truncated file, named as sent", second(photo={**row["photo"], "filename": "p.png",
                                                        "base64": truncated(row)}), 422,
         "row 2, column 'photo': image 'p.png' cannot be read", 2, "photo"),
    ]


def truncated(row: dict[str, Any]) -> str:
    import base64

    return base64.b64encode(base64.b64decode(row["photo"]["base64"])[:60]).decode()


def test_a_sent_png_is_decoded_on_arrival_and_other_files_are_written(demo):
    """The image adapter reads a sent PNG or JPEG where the request is read (Codec.read_sent):
    the model's process gets its pixels, no file is written; a .npy file is written for the
    codec to read from its path, as for a codec without read_sent."""
    from polymodal._serve.limits import Limits
    from polymodal._serve.predictor import Predictor
    from polymodal._serve.rows import RowBuilder

    predictor = Predictor(demo["model"])
    builder = RowBuilder(predictor.columns, Limits(), None)
    row = request_rows(demo, 1)[0]
    try:
        sent = builder.build({"rows": [row, {**row, "photo": npy_bytes(np.zeros((3, 16, 16)))},
                                       {**row, "photo": png_cell("RGB", "o.jpg", "JPEG")}]})
        decoded, written, jpeg = sent.columns["photo"]
        assert type(decoded).__name__ == "SentImage" and decoded.pixels.dtype == np.uint8
        assert decoded.pixels.shape[0] == 3 and decoded.name == "sent .png file"
        assert sent.written == [Path(written)] and Path(written).suffix == ".npy"
        assert jpeg.name == "o.jpg" and jpeg.pixels.shape == (3, 16, 16)
        assert abs(int(jpeg.pixels[0].mean()) - 255) <= 2  # orange: red 255, green 165, blue 0
        outcome = predictor.run([sent])[0]
        assert outcome.error is None and len(outcome.rows) == 3
        sent.close()
        assert not Path(written).exists()
    finally:
        builder.close()


def test_a_codec_reads_the_files_sent_to_it_whatever_their_type_or_name():
    """The server leaves telling a sent file's type to the codec: a plugin's own format, sent
    without a name, reaches its read_sent; one it leaves alone (None) is written, with the
    suffix its first bytes or its name give (none where neither says)."""
    import base64

    from polymodal._serve.limits import Limits
    from polymodal._serve.rows import READ_ON_ARRIVAL_BYTES, Columns, RowBuilder

    seen = []

    def read(data: bytes, name: str) -> Any:
        seen.append((data, name))
        return None if data.startswith(b"keep") else {"grid": data.decode(), "name": name}

    builder = RowBuilder(Columns(("heat",), frozenset({"heat"}), {"heat": read}), Limits(), None)
    large = b"1," * (READ_ON_ARRIVAL_BYTES // 2 + 1)  # read where the model runs, not here
    cells = [{"base64": base64.b64encode(data).decode(), **({"filename": name} if name else {})}
             for data, name in ((b"1,2\n3,4", None), (b"keep me", "grid.csv"), (b"keep", None),
                                (large, "large.csv"))]
    try:
        sent = builder.build({"rows": [{"heat": cell} for cell in cells]})
        read_here, kept, unnamed, written = sent.columns["heat"]
        assert read_here == {"grid": "1,2\n3,4", "name": "sent file"}
        assert seen[1] == (b"keep me", "grid.csv") and len(seen) == 3
        assert Path(kept).suffix == ".csv" and Path(kept).read_bytes() == b"keep me"
        assert Path(unnamed).suffix == "" and sent.names[unnamed] == "sent file"
        assert Path(written).read_bytes() == large and sent.names[written] == "large.csv"
        sent.close()
    finally:
        builder.close()


def test_every_bad_row_is_a_4xx_naming_row_and_column(server, demo):
    row = request_rows(demo, 1)[0]
    for name, body, status, message, line, column in bad_row_cases(row):
        response = post(server, body)
        assert response.status_code == status, (name, response.text)
        error = response.json()["error"]
        assert message in error["message"], (name, error)
        assert error.get("row") == line and error.get("column") == column, (name, error)
        assert error["request_id"] == response.headers["x-request-id"]


def test_bad_requests_are_4xx(server, demo):
    row = request_rows(demo, 1)[0]
    cases = [
        ({"content": b"{not json", "headers": {"content-type": "application/json"}}, 400,
         "the body is not valid JSON"),
        ({"content": b"[" * 50 + b"]" * 50, "headers": {"content-type": "application/json"}},
         400, "nests JSON arrays and objects more than 8 deep"),
        ({"content": b'{"rows": [{"reading": NaN}]}', "headers": {"content-type": "application/json"}},
         400, "NaN is not a JSON value"),
        ({"content": b"\xff\xfe", "headers": {"content-type": "application/json"}}, 400,
         "is not"),
        ({"json": [row]}, 400, "the body is not a JSON object"),
        ({"json": {"rows": row}}, 400, "rows must be a list of objects"),
        ({"json": {"rows": [row], "extra": 1}}, 400, "unknown field(s) 'extra'"),
        ({"json": {"rows": [row], "on_bad_row": "ignore"}}, 400, "on_bad_row is 'ignore'"),
        ({"json": {"rows": []}}, 400, "no rows to predict"),
        ({"json": {}}, 400, "the body has no rows: send {\"rows\""),
        ({"content": b"a,b\n1,2", "headers": {"content-type": "text/csv"}}, 415,
         "a body of type 'text/csv'"),
        ({"json": {"rows": [row] * 21}}, 413, "21 rows in one request, more than the 20"),
        ({"content": b"x" * (2**19 + 1), "headers": {"content-type": "application/json"}}, 413,
         "larger than the 524,288 bytes"),
        ({"files": {"color": ("a.png", b"x")}}, 422, "column 'color' is not one the model reads"
         " files from"),
        ({"files": {"photo": ("a.png", b"x")}, "data": {"other": "1"}}, 400,
         "a text field 'other'"),
    ]
    for kwargs, status, message in cases:
        response = post(server, **kwargs)
        assert response.status_code == status, (kwargs.keys(), response.text)
        assert message in response.json()["error"]["message"], response.text
    response = httpx.get(f"{server.url}/v2/nothing")
    assert response.status_code == 404 and "error" in response.json()
    assert httpx.get(f"{server.url}/v1/predict").status_code == 405


def test_skip_answers_the_good_rows_and_lists_the_bad(server, demo):
    rows = request_rows(demo, 3)
    rows[1] = {**rows[1], "reading": "abc"}
    rows[2] = {**rows[2], "photo": {"base64": "aGVsbG8="}}
    response = post(server, {"rows": rows, "on_bad_row": "skip"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert [r["row"] for r in body["rows"]] == [1]
    assert body["skipped"] == [
        {"row": 2, "column": "reading", "message": "row 2, column 'reading': 'abc' is not a number"},
        {"row": 3, "column": "photo", "message": "row 3, column 'photo': image 'sent file' is not"
         " a PNG, JPEG, TIFF or .npy file (nor BMP, GIF or WebP)"}]


def test_metadata_and_openapi_describe_this_model(server, demo):
    metadata = httpx.get(f"{server.url}/v1/metadata").json()
    assert metadata["heads"]["decision"]["classes"] == ["accept", "reject"]
    assert metadata["inputs"]["photo"]["files"] is True
    # the demo reads its 32 px files at 16 px (adapter size: 16): any size is resized
    assert metadata["inputs"]["photo"]["expects"] == {"channels": 3, "height": 16, "width": 16,
                                                      "resized": True}
    assert metadata["inputs"]["record"]["expects"] == {}
    assert metadata["inputs"]["record"]["vocabularies"]["material"] == ["plastic", "steel", "wood"]
    assert metadata["spec"]["name"] == "parts" and metadata["versions"]["polymodal"]
    schema = httpx.get(f"{server.url}/openapi.json").json()
    text = json.dumps(schema)
    assert '"enum": ["plastic", "steel", "wood"]' in text
    assert '"enum": ["accept", "reject"]' in text
    assert 'expects {\\"channels\\": 3, \\"height\\": 16' in text
    assert "PartsRow" in schema["components"]["schemas"]
    assert httpx.get(f"{server.url}/docs").status_code == 200


def test_inspect_says_what_a_row_must_be(demo, capsys):
    from polymodal._cli import main

    assert main(["inspect", str(demo["model"])]) == 0
    out = capsys.readouterr().out
    assert "what a row's value must be:\n  photo: channels 3, height 16, width 16, resized True" in out
    assert main(["inspect", str(demo["model"]), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["expects"] == {
        "photo": {"channels": 3, "height": 16, "width": 16, "resized": True}}


def test_an_onnx_export_serves_the_same_answers(demo, tmp_path):
    """... and --max-batch caps a batch's rows even for one request: a request of more rows is
    predicted in parts of --max-batch rows, answered together."""
    onnx = Server(demo["onnx"], "--max-batch", "3", log=tmp_path / "onnx.log")
    try:
        response = post(onnx, {"rows": request_rows(demo, 8)})
        assert response.status_code == 200, response.text
        assert_same(response.json()["rows"], expected(demo, 8), 1e-4)
        assert response.json()["batch"]["rows"] <= 3
        bad = request_rows(demo, 8)
        bad[6]["reading"] = "abc"
        skipped = post(onnx, {"rows": bad, "on_bad_row": "skip"}).json()
        assert [r["row"] for r in skipped["rows"]] == [1, 2, 3, 4, 5, 6, 8]
        assert [s["row"] for s in skipped["skipped"]] == [7]
        failed = post(onnx, {"rows": bad})
        assert failed.status_code == 422 and failed.json()["error"]["row"] == 7
        batching = httpx.get(f"{onnx.url}/health").json()["batching"]
        assert batching["largest_batch_rows"] == 3 and batching["rows"] >= 8
        assert httpx.get(f"{onnx.url}/v1/metadata").json()["model"]["format"] == "onnx"
    finally:
        assert onnx.stop() == 0


def slow_upload(server: Server) -> socket.socket:
    """A connection sending a request's body slowly: the server is reading a request, so a
    batch being formed waits for it (up to --max-wait-ms)."""
    sock = socket.create_connection(("127.0.0.1", server.port))
    sock.sendall(b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 b"Content-Length: 100\r\n\r\n{\"rows\": ")
    return sock


def test_full_queue_503_then_sigterm_drains(demo, tmp_path):
    """A queue of 4 rows, batches waiting 1.5 s to fill while another request is being read: a
    second request finds the queue full; a lone request does not wait; then SIGTERM lets a
    request in flight finish and refuses new connections."""
    slow = Server(demo["model"], "--max-wait-ms", "1500", "--max-queue", "4",
                  log=tmp_path / "slow.log")
    rows = request_rows(demo, 4)

    async def full() -> tuple[httpx.Response, httpx.Response]:
        async with httpx.AsyncClient(base_url=slow.url, timeout=60) as client:
            first = asyncio.ensure_future(client.post("/v1/predict", json={"rows": rows}))
            await asyncio.sleep(0.5)
            second = await client.post("/v1/predict", json={"rows": rows[:1]})
            return await first, second

    try:
        assert post(slow, {"rows": rows[:1]}).status_code == 200  # warm
        started = time.monotonic()
        assert post(slow, {"rows": rows[:1]}).status_code == 200
        assert time.monotonic() - started < 1.0  # no one else is coming: no 1.5 s wait
        uploading = slow_upload(slow)
        first, second = asyncio.run(full())
        uploading.close()
        assert first.status_code == 200 and len(first.json()["rows"]) == 4
        assert second.status_code == 503, second.text
        assert int(second.headers["retry-after"]) >= 1
        assert "queue" in second.json()["error"]["message"]
        assert second.json()["error"]["request_id"] == second.headers["x-request-id"]
        assert httpx.get(f"{slow.url}/health").json()["batching"]["refused_full"] == 1
        # without --data-root, a path is refused
        refused = post(slow, {"rows": [{**rows[0], "photo": "images/test_00000.png"}]})
        assert refused.status_code == 403 and "without --data-root" in refused.text

        async def drained() -> httpx.Response:
            uploading = slow_upload(slow)  # keeps the request in flight waiting for a batch
            async with httpx.AsyncClient(base_url=slow.url, timeout=60) as client:
                flight = asyncio.ensure_future(client.post("/v1/predict", json={"rows": rows[:1]}))
                await asyncio.sleep(0.5)
                slow.process.terminate()  # SIGTERM
                await asyncio.sleep(0.3)
                with pytest.raises(httpx.TransportError):
                    await httpx.AsyncClient().post(f"{slow.url}/v1/predict", json={"rows": rows})
                answered = await flight
                uploading.close()
                return answered

        answered = asyncio.run(drained())
        assert answered.status_code == 200 and len(answered.json()["rows"]) == 1
        assert slow.process.wait(60) == 0
    finally:
        slow.stop()


def test_workers_each_hold_a_model_and_share_the_port(demo, tmp_path):
    many = Server(demo["model"], "--workers", "2", log=tmp_path / "workers.log")

    async def pids() -> set[int]:
        """The workers that answer, asked until both have (the second may still be loading
        its model when the first answers: a minute at most)."""
        seen: set[int] = set()
        deadline = time.monotonic() + 60
        while len(seen) < 2 and time.monotonic() < deadline:
            async with httpx.AsyncClient(base_url=many.url, timeout=60) as client:
                answers = await asyncio.gather(*(client.get("/health") for _ in range(8)))
            seen |= {a.json()["pid"] for a in answers}
            await asyncio.sleep(0.2)
        return seen

    try:
        response = post(many, {"rows": request_rows(demo, 2)})
        assert response.status_code == 200, response.text
        assert_same(response.json()["rows"], expected(demo, 2), 1e-5)
        assert len(asyncio.run(pids())) == 2
    finally:
        assert many.stop() == 0

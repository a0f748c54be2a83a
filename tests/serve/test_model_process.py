"""The model process of polymodal serve: forked from the server, it predicts the batches; it
dies with the server (SIGTERM or SIGKILL), and one that dies is replaced, its lost batch
answered 500 and the next answered as before."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path

import httpx
from conftest import Server
from test_serve import assert_same, expected, post, request_rows


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, dead but not yet reaped, does not)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


def parent(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def gone(pid: int, within: float = 20) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if not alive(pid):
            return True
        time.sleep(0.1)
    return False


def model_pid(server: Server) -> int:
    return int(httpx.get(f"{server.url}/health", timeout=30).json()["model_pid"])


def test_a_dead_model_process_is_replaced_and_sigterm_ends_it(demo, tmp_path):
    server = Server(demo["model"], log=tmp_path / "server.log")
    try:
        first = model_pid(server)
        assert first != server.process.pid and parent(first) == server.process.pid
        answered = post(server, {"rows": request_rows(demo, 3)})
        assert answered.status_code == 200, answered.text
        assert_same(answered.json()["rows"], expected(demo, 3), 1e-5)
        rows = request_rows(demo, 8)

        async def busy() -> list[httpx.Response]:  # the model process killed while predicting
            async with httpx.AsyncClient(base_url=server.url, timeout=60) as client:
                killed = asyncio.Event()

                async def client_loop() -> list[httpx.Response]:
                    answers, after = [], 0  # requests until the kill, and three after it
                    while after < 3:
                        answers.append(await client.post("/v1/predict", json={"rows": rows}))
                        after += killed.is_set()
                    return answers

                async def killing() -> None:
                    await asyncio.sleep(0.3)
                    os.kill(first, signal.SIGKILL)
                    killed.set()

                answers = await asyncio.gather(*(client_loop() for _ in range(4)), killing())
            return [a for each in answers[:4] for a in each]

        answers = asyncio.run(busy())
        assert gone(first)
        assert {a.status_code for a in answers} <= {200, 500}, [a.text for a in answers]
        for lost in (a for a in answers if a.status_code == 500):  # the batch it was predicting
            assert lost.json() == {"error": {"message": "internal server error",
                                             "request_id": lost.headers["x-request-id"]}}
            assert lost.headers["x-request-id"] in server.output()
        again = post(server, {"rows": request_rows(demo, 2)})
        assert again.status_code == 200, again.text
        assert_same(again.json()["rows"], expected(demo, 2), 1e-5)
        second = model_pid(server)
        assert second != first and alive(second)
        assert f"model process (pid {first}) ended" in server.output()
    finally:
        assert server.stop() == 0
    assert gone(second)


def test_a_model_process_dead_between_batches_costs_no_request(demo, tmp_path):
    server = Server(demo["model"], log=tmp_path / "server.log")
    try:
        first = model_pid(server)
        os.kill(first, signal.SIGKILL)  # while no batch is predicted
        assert gone(first)
        answered = post(server, {"rows": request_rows(demo, 2)})
        assert answered.status_code == 200, answered.text
        assert_same(answered.json()["rows"], expected(demo, 2), 1e-5)
        assert model_pid(server) != first
    finally:
        assert server.stop() == 0


def test_the_model_process_ignores_signals_and_dies_with_a_killed_server(demo, tmp_path):
    server = Server(demo["model"], "--threads", "1", log=tmp_path / "server.log")
    try:
        pid = model_pid(server)
        for sig in (signal.SIGTERM, signal.SIGINT):  # as a process group's Ctrl-C would send
            os.kill(pid, sig)  # ignored: the server drains first, then closes the pipe
        time.sleep(0.5)
        assert alive(pid) and model_pid(server) == pid
        assert post(server, {"rows": request_rows(demo, 1)}).status_code == 200
        server.process.kill()  # SIGKILL: no handler runs; the pipe's end closes with it
        server.process.wait(30)
        assert gone(pid), "the model process outlived its server"
    finally:
        server.stop()

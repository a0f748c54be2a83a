"""A minimal HTTP/1.1 keep-alive client on asyncio streams, for the serving benchmark.

The client shares the machine's cores with the server it measures, so every millisecond of its
CPU is taken from the server. httpx spends about 1 ms of CPU a request in Python; this client
writes a prepared request and reads the answer by its Content-Length, a few tens of
microseconds. It speaks only what the benchmark needs: POST/GET with a body, answers with a
Content-Length (uvicorn sends one for every JSON answer), one connection per client.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any


class Connection:
    """One keep-alive connection to ``host:port``."""

    def __init__(self, host: str, port: int):
        self.host, self.port = host, port
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def _open(self) -> None:
        self._reader, self._writer = await asyncio.open_connection(self.host, self.port)

    async def post_json(self, path: str, data: Any) -> tuple[int, bytes]:
        """``data`` posted as JSON: the answer's status and body."""
        return await self.request("POST", path, json.dumps(data).encode(), "application/json")

    async def request(self, method: str, path: str, body: bytes = b"",
                      content_type: str = "application/json") -> tuple[int, bytes]:
        if self._writer is None:
            await self._open()
        assert self._reader is not None and self._writer is not None
        head = (f"{method} {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
                f"Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\n\r\n")
        self._writer.write(head.encode() + body)
        status_line = await self._reader.readline()
        if not status_line:
            raise ConnectionError("the server closed the connection")
        status = int(status_line.split(b" ", 2)[1])
        length, closing = 0, False
        while True:
            line = await self._reader.readline()
            if line in (b"\r\n", b""):
                break
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"connection" and value.strip().lower() == b"close":
                closing = True
        answer = await self._reader.readexactly(length) if length else b""
        if closing:
            await self.close()
        return status, answer

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            try:
                await self._writer.wait_closed()
            except OSError:
                pass
        self._reader = self._writer = None

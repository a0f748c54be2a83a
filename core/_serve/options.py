"""The options of ``polymodal serve``, passed to each worker process as JSON."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from typing import Any

from .limits import Limits

#: The environment variable that carries the options to uvicorn's worker processes.
ENVIRONMENT = "POLYMODAL_SERVE_OPTIONS"


@dataclass(frozen=True)
class ServeOptions:
    model: str
    host: str = "127.0.0.1"
    port: int = 8000
    device: str = "cpu"
    max_batch: int = 64
    max_wait_ms: float = 5.0
    #: rows that may wait for the model; a request beyond them is answered 503
    max_queue: int = 1024
    workers: int = 1
    data_root: str | None = None
    #: seconds SIGTERM waits for the requests in flight before closing their connections
    drain_timeout: float = 30.0
    threads: int | None = None
    limits: Limits = field(default_factory=Limits)

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> ServeOptions:
        data: dict[str, Any] = json.loads(text)
        return cls(**{**data, "limits": Limits(**data["limits"])})

    @classmethod
    def from_environment(cls) -> ServeOptions:
        return cls.from_json(os.environ[ENVIRONMENT])

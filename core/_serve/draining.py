"""Whether the server is draining: set when uvicorn is told to stop, so that ``/ready`` and
new requests answer 503 while the requests in flight finish."""

from __future__ import annotations

import signal
import threading
from typing import Any

#: Set once SIGTERM or SIGINT has come: the server is finishing what it holds.
DRAINING = threading.Event()


def watch_signals() -> None:
    """Mark the process as draining when uvicorn is told to stop (its handlers still run)."""
    if threading.current_thread() is not threading.main_thread():
        return
    for number in (signal.SIGINT, signal.SIGTERM):
        previous = signal.getsignal(number)
        if callable(previous):
            def handler(sig: int, frame: Any, previous: Any = previous) -> None:
                DRAINING.set()
                previous(sig, frame)

            signal.signal(number, handler)

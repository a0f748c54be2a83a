"""Dynamic batching: the rows of concurrent requests predicted together.

Each request is handed to the model process as soon as it is parsed (in parts of at most
``max_batch`` rows); the model process runs what has come as one batch whenever the last batch
is done (:mod:`.model_process`), waiting for more only while another request is being read
here (:meth:`Batcher.reading`), at most ``max_wait`` after its oldest request: a lone client's
request runs at once instead of waiting for batch-mates that are not coming; under load,
requests are being read and the batch fills. The rows held (sent, not yet answered) are
bounded: a request that would pass ``max_queue`` is refused at once (:class:`QueueFull`), which
the server answers 503 with ``Retry-After``.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from .._data.codec import add_examples
from .model_process import Answer, ModelFault, ModelProcess
from .predictor import Outcome
from .rows import RequestRows


class QueueFull(Exception):
    """The queue holds too many rows to take a request's; retry after ``retry_after`` s."""

    def __init__(self, queued: int, retry_after: int):
        super().__init__(f"the server's queue holds {queued} rows; retry in {retry_after} s")
        self.retry_after = retry_after


@dataclass
class BatchInfo:
    """Which batch answered a request: its number, rows and requests (visible to clients)."""

    number: int
    rows: int
    requests: int


@dataclass
class Counters:
    batches: int = 0
    rows: int = 0
    requests: int = 0
    largest_batch_rows: int = 0
    largest_batch_requests: int = 0
    refused_full: int = 0
    seconds_predicting: float = 0.0

    def add(self, rows: int, requests: int, seconds: float) -> None:
        self.batches += 1
        self.rows += rows
        self.requests += requests
        self.largest_batch_rows = max(self.largest_batch_rows, rows)
        self.largest_batch_requests = max(self.largest_batch_requests, requests)
        self.seconds_predicting += seconds


def merged(outcomes: list[Outcome]) -> Outcome:
    """The outcome of a request predicted in parts: their rows and skipped rows in order, and
    the first part's error or fault."""
    whole = Outcome()
    for outcome in outcomes:
        whole.rows += outcome.rows
        whole.skipped += outcome.skipped
        for what, count in outcome.notes.items():
            whole.notes[what] = whole.notes.get(what, 0) + count
            add_examples(whole.note_examples, what, outcome.note_examples.get(what, []))
        whole.error = whole.error or outcome.error
        whole.fault = whole.fault or outcome.fault
    whole.skipped.sort(key=lambda found: found["row"] or 0)
    return whole


class Batcher:
    """Hands requests to the model process and gives each its outcome once its batch has run."""

    def __init__(self, model: ModelProcess, *, max_batch: int, max_queue: int):
        self.model, self.max_batch, self.max_queue = model, max_batch, max_queue
        self.counters = Counters()
        self._queued = 0
        self._waiting: dict[int, tuple[asyncio.Future[tuple[Outcome, BatchInfo]], int]] = {}
        self._ids = itertools.count()
        self._outbox: list[tuple[int, RequestRows]] = []
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def queued_rows(self) -> int:
        return self._queued

    def start(self) -> None:
        """Take the model process's answers (call from the event loop, before requests)."""
        loop = self._loop = asyncio.get_running_loop()

        def answered(answer: Answer) -> None:  # called by the thread reading the answers
            loop.call_soon_threadsafe(self._answered, answer)

        def lost(ids: list[int], why: str) -> None:
            loop.call_soon_threadsafe(self._lost, ids, why)

        self.model.answered, self.model.lost = answered, lost

    async def stop(self) -> None:
        self._lost(list(self._waiting), "the server stopped before the request was predicted")

    def send(self, rows: RequestRows) -> asyncio.Future[tuple[Outcome, BatchInfo]]:
        """Hand the request to the model process now; its outcome, later. :class:`QueueFull`
        at once where the rows held cannot take its rows (a request larger than the whole
        queue waits alone). A request of more than ``max_batch`` rows is predicted in parts of
        ``max_batch`` rows; its answer is theirs together (the last batch's number)."""
        if self._queued and self._queued + rows.count > self.max_queue:
            self.counters.refused_full += 1
            raise QueueFull(self._queued, self._retry_after())
        assert self._loop is not None, "start() the batcher first"
        futures = []
        for part in rows.parts(self.max_batch):
            request_id = next(self._ids)
            future: asyncio.Future[tuple[Outcome, BatchInfo]] = self._loop.create_future()
            self._waiting[request_id] = (future, part.count)
            self._queued += part.count
            futures.append(future)
            self._outbox.append((request_id, part))
            self.model.reading.value += 1  # read, not yet sent: a batch being formed waits
        if len(self._outbox) == len(futures):  # the first of this turn of the event loop
            self._loop.call_soon(self._flush)
        if len(futures) == 1:
            return futures[0]
        return asyncio.ensure_future(_together(futures))

    def _flush(self) -> None:
        """The requests sent in one turn of the event loop, handed to the model process in one
        write at its end (a write a request costs the event loop as much as its parsing)."""
        sending, self._outbox = self._outbox, []
        self.model.reading.value -= len(sending)
        try:
            self.model.send(sending)
        except Exception as exc:  # noqa: BLE001 - each request answers the fault
            self._lost([request_id for request_id, _ in sending], repr(exc))

    @contextlib.contextmanager
    def reading(self) -> Iterator[None]:
        """Marks a request as on its way to :meth:`send` (its body being read and parsed), so
        that a batch being formed waits for it (at most ``max_wait``)."""
        self.model.reading.value += 1
        try:
            yield
        finally:
            self.model.reading.value -= 1

    def _retry_after(self) -> int:
        """Seconds until the queue has emptied at the rate measured so far (1 at least)."""
        rate = self.counters.rows / self.counters.seconds_predicting \
            if self.counters.seconds_predicting else 0.0
        return max(1, math.ceil(self._queued / rate)) if rate else 1

    def _settle(self, request_id: int) -> asyncio.Future[tuple[Outcome, BatchInfo]] | None:
        found = self._waiting.pop(request_id, None)
        if found is None:
            return None
        self._queued -= found[1]
        return found[0]

    def _answered(self, answer: Answer) -> None:
        self.counters.add(answer.rows, len(answer.ids), answer.seconds)
        info = BatchInfo(self.counters.batches, answer.rows, len(answer.ids))
        for index, request_id in enumerate(answer.ids):
            future = self._settle(request_id)
            if future is None or future.done():  # its client went away
                continue
            if answer.outcomes is None:
                future.set_exception(ModelFault(answer.fault))
            else:
                future.set_result((answer.outcomes[index], info))

    def _lost(self, ids: list[int], why: str) -> None:
        for request_id in ids:
            future = self._settle(request_id)
            if future is not None and not future.done():
                future.set_exception(ModelFault(why))

    def stats(self) -> dict[str, Any]:
        from dataclasses import asdict

        return {**asdict(self.counters), "queued_rows": self._queued,
                "max_batch": self.max_batch, "max_wait_ms": round(self.model.max_wait * 1000, 3),
                "max_queue": self.max_queue}


async def _together(futures: list[asyncio.Future[tuple[Outcome, BatchInfo]]]) -> tuple[Outcome, BatchInfo]:
    """The answer of a request predicted in parts: the parts' outcomes merged."""
    answers = await asyncio.gather(*futures, return_exceptions=True)
    for answer in answers:
        if isinstance(answer, BaseException):
            raise answer
    done = [answer for answer in answers if not isinstance(answer, BaseException)]
    return merged([outcome for outcome, _ in done]), done[-1][1]

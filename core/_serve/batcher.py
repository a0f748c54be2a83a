"""Dynamic batching: the rows of concurrent requests predicted together.

Requests wait in a queue bounded in rows; one task takes them in order, up to ``max_batch`` rows
or until the oldest has waited ``max_wait`` seconds, and runs the batch in a thread of its own,
so the event loop keeps reading requests (which fill the next batch) while the model computes.
It waits for more rows only while another request is being read (:meth:`Batcher.reading`): a
lone client's request runs at once instead of waiting ``max_wait`` for batch-mates that are not
coming; under load, requests are being read and the batch fills.
A request that would overfill the queue is refused at once (:class:`QueueFull`), which the
server answers 503 with ``Retry-After``.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from .._data.codec import add_examples
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
class _Item:
    rows: RequestRows
    future: asyncio.Future[tuple[Outcome, BatchInfo]]
    arrived: float = field(default_factory=time.monotonic)


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
    """Collects requests into batches for ``run`` (a blocking call, given the batch's rows of
    each request, giving each request's outcome)."""

    def __init__(self, run: Callable[[list[RequestRows]], list[Outcome]], *, max_batch: int,
                 max_wait: float, max_queue: int):
        self.run, self.max_batch, self.max_wait, self.max_queue = run, max_batch, max_wait, max_queue
        self.counters = Counters()
        self._pending: deque[_Item] = deque()
        self._queued = 0
        self._wake: asyncio.Event | None = None
        #: requests whose body is being read or parsed: rows that may join the next batch
        self._reading = 0
        self._task: asyncio.Task[None] | None = None
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="polymodal-predict")

    @property
    def queued_rows(self) -> int:
        return self._queued

    def start(self) -> None:
        self._wake = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        self._executor.shutdown(wait=True)

    async def submit(self, rows: RequestRows) -> tuple[Outcome, BatchInfo]:
        """The request's outcome, once its batch has run; :class:`QueueFull` at once where the
        queue cannot take its rows (a request larger than the whole queue waits alone). A
        request of more than ``max_batch`` rows is predicted in parts of ``max_batch`` rows,
        in consecutive batches; its answer is theirs together (the last batch's number)."""
        if self._queued and self._queued + rows.count > self.max_queue:
            self.counters.refused_full += 1
            raise QueueFull(self._queued, self._retry_after())
        assert self._wake is not None, "start() the batcher first"
        loop = asyncio.get_running_loop()
        items = [_Item(part, loop.create_future()) for part in rows.parts(self.max_batch)]
        self._pending.extend(items)
        self._queued += rows.count
        self._wake.set()
        if len(items) == 1:
            return await items[0].future
        answers = await asyncio.gather(*(item.future for item in items), return_exceptions=True)
        for answer in answers:
            if isinstance(answer, BaseException):
                raise answer
        done = [answer for answer in answers if not isinstance(answer, BaseException)]
        return merged([outcome for outcome, _ in done]), done[-1][1]

    @contextlib.contextmanager
    def reading(self) -> Iterator[None]:
        """Marks a request as on its way to :meth:`submit` (its body being read and parsed), so
        that a batch being formed waits for it (at most ``max_wait``)."""
        self._reading += 1
        try:
            yield
        finally:
            self._reading -= 1
            if self._wake is not None:
                self._wake.set()

    def _retry_after(self) -> int:
        """Seconds until the queue has emptied at the rate measured so far (1 at least)."""
        rate = self.counters.rows / self.counters.seconds_predicting \
            if self.counters.seconds_predicting else 0.0
        return max(1, math.ceil(self._queued / rate)) if rate else 1

    async def _loop(self) -> None:
        assert self._wake is not None
        while True:
            if not self._pending:
                self._wake.clear()
                await self._wake.wait()
                continue
            await self._fill()
            batch = self._take()
            if batch:
                await self._run(batch)

    async def _fill(self) -> None:
        """Wait for more rows until ``max_batch`` are queued, the oldest has waited
        ``max_wait``, or no other request is being read."""
        assert self._wake is not None
        deadline = self._pending[0].arrived + self.max_wait
        while self._queued < self.max_batch and self._reading:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), left)
            except asyncio.TimeoutError:
                return

    def _take(self) -> list[_Item]:
        batch: list[_Item] = []
        rows = 0
        while self._pending and (not batch or rows + self._pending[0].rows.count <= self.max_batch):
            item = self._pending.popleft()
            self._queued -= item.rows.count
            if item.future.done():  # its client went away
                continue
            batch.append(item)
            rows += item.rows.count
        return batch

    async def _run(self, batch: list[_Item]) -> None:
        started = time.monotonic()
        try:
            outcomes = await asyncio.get_running_loop().run_in_executor(
                self._executor, self.run, [item.rows for item in batch])
        except Exception as exc:  # noqa: BLE001 - each request of the batch answers the fault
            for item in batch:
                if not item.future.done():
                    item.future.set_exception(exc)
            return
        rows = sum(item.rows.count for item in batch)
        self.counters.add(rows, len(batch), time.monotonic() - started)
        info = BatchInfo(self.counters.batches, rows, len(batch))
        for item, outcome in zip(batch, outcomes):
            if not item.future.done():
                item.future.set_result((outcome, info))

    def stats(self) -> dict[str, Any]:
        from dataclasses import asdict

        return {**asdict(self.counters), "queued_rows": self._queued,
                "max_batch": self.max_batch, "max_wait_ms": round(self.max_wait * 1000, 3),
                "max_queue": self.max_queue}

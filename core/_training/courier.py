"""Sends a run's records to an experiment tracker from a background thread.

Training never waits on the tracker: :meth:`Courier.send` queues a job and returns. One worker
thread runs the jobs in order, retrying a failed one with growing pauses; the first failure is
reported once (training goes on), and what could not be sent is listed when the courier closes.
Closing waits for the queue only while the worker makes progress and the tracker answers:
where the last job failed, the jobs left are not tried again, and a job that hangs longer than
``stall`` seconds (a server that accepts connections and never answers) ends the wait; the
jobs left are listed as not recorded. The worker is a daemon thread, so a hung call never keeps
the process alive.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

#: A step's metrics, as a backend receives them: (values, step, the time they were taken).
Metrics = tuple[dict[str, float], int, float]

#: Tries of a job while the tracker answers; once a job has failed every try, later jobs get
#: one try each until one succeeds (a server that is down costs one timeout a job, not three).
TRIES = 3
#: The pause before the second try; each later one doubles it.
FIRST_PAUSE = 0.5
#: Closing gives up when no job has finished for this many seconds.
STALL = 30.0


@dataclass(frozen=True)
class Job:
    """One call to the tracker: ``what`` it records (``metrics``, ``epoch 3``) and the call."""

    kind: str
    detail: str
    call: Callable[[], object]


_STOP = object()


class Courier:
    """The background sender of one tracking session."""

    def __init__(self, where: str, warn: Callable[[str], None], stall: float = STALL):
        self.where, self.warn, self.stall = where, warn, stall
        self.unsent: list[Job] = []
        self.first_error: str | None = None
        self._failing = False
        self._finished_at = time.monotonic()
        self._closing = threading.Event()
        self._draining = False  # closing: a tracker that is failing gets no more tries
        self._queue: queue.Queue[object] = queue.Queue()
        self._current: Job | None = None
        self._thread = threading.Thread(target=self._work, name="polymodal-tracking", daemon=True)
        self._thread.start()

    def send(self, kind: str, detail: str, call: Callable[[], object]) -> None:
        """Queue ``call``; it runs after every job queued before it."""
        self._queue.put(Job(kind, detail, call))

    def close(self) -> list[Job]:
        """Wait while the worker makes progress; the jobs that were not sent."""
        self._queue.put(_STOP)
        self._draining = True
        self._finished_at = time.monotonic()
        while self._thread.is_alive():
            self._thread.join(timeout=0.2)
            if time.monotonic() - self._finished_at > self.stall:
                self._closing.set()  # a retry's pause ends now; a hung call is left behind
                break
        if self._thread.is_alive():
            left = [self._current] if self._current is not None else []
            while True:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if isinstance(item, Job):
                    left.append(item)
            self.unsent += left
        return list(self.unsent)

    def _work(self) -> None:
        while True:
            item = self._queue.get()
            if item is _STOP:
                return
            assert isinstance(item, Job)
            self._current = item
            given_up = self._closing.is_set() or (self._draining and self._failing)
            if given_up or not self._attempt(item):
                self.unsent.append(item)
            self._current = None
            self._finished_at = time.monotonic()

    def _attempt(self, job: Job) -> bool:
        tries = 1 if self._failing else TRIES
        for attempt in range(tries):
            try:
                job.call()
            except Exception as exc:  # noqa: BLE001 - whatever the tracker raises, training goes on
                self._report(exc)
                if attempt + 1 < tries and not self._closing.wait(FIRST_PAUSE * 2 ** attempt):
                    continue
                self._failing = True
                return False
            self._failing = False
            return True
        return False

    def _report(self, exc: Exception) -> None:
        if self.first_error is not None:
            return
        self.first_error = root_cause(exc)
        self.warn(f"warning: tracking: {self.where} refused or did not answer"
                  f" ({self.first_error}); training goes on, and what cannot be sent is retried"
                  " and listed at the end")


def root_cause(exc: BaseException, limit: int = 300) -> str:
    """``Type: message`` of the innermost exception behind ``exc`` (a refused connection,
    rather than the retry wrapper of an HTTP library around it), whole up to ``limit``
    characters, else cut at a word."""
    seen = {id(exc)}
    while (inner := exc.__cause__ or exc.__context__) is not None and id(inner) not in seen:
        seen.add(id(inner))
        exc = inner
    text = " ".join((str(exc).strip() or type(exc).__name__).split())
    if len(text) > limit:
        text = text[:limit].rsplit(" ", 1)[0] + " ..."
    return f"{type(exc).__name__}: {text}"

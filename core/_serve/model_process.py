"""The model in a process of its own, which forms the batches from the requests it is sent.

One process cannot use two cores for serving: the event loop (reading requests, parsing JSON,
writing answers) and the Python parts of predicting (checking and encoding rows, the model's
modules, formatting outcomes) take turns on the interpreter lock. So the server forks, once the
model is loaded, a process that only predicts. The HTTP process sends it each request's rows as
soon as they are parsed (values, and the files the request sent: read on arrival by their
codec's ``read_sent``, or their paths); the requests parsed in one turn of the event loop go
in one write. A thread of the model process takes them in, and the process runs whatever has
come as one batch as soon as the last batch is done. The batches are formed here, not in the
HTTP process, so that no batch waits for the HTTP process's event loop (busy with other
requests) to send it: with one row a request, the model process is what bounds the rate, and it
no longer idles between batches. A thread of the HTTP process reads the answers, a batch's
outcomes at a time.

The fork shares the loaded model's memory with the HTTP process (copy-on-write; the HTTP process
never touches the weights), so the model is not loaded twice. The HTTP process keeps torch to
one thread, so it never starts OpenMP's threads: a process forked from one that has (GNU
OpenMP's) hangs in its first parallel region, waiting for threads it did not inherit. A model
process that dies is forked anew for the next request; the requests it held answer 500.

The process dies with the server: it ignores SIGINT and SIGTERM (the server drains, then tells
it to leave) and leaves as soon as its end of the pipe reads end-of-file, which is what it reads
when the server is killed (SIGKILL included), since only the server holds the other end.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

from .predictor import Outcome, Predictor
from .rows import RequestRows

log = logging.getLogger("polymodal.serve")


class ModelFault(Exception):
    """A fault of the model process (a bug of a codec or the model, or the process's death),
    with the traceback it gave there; answered 500 without it, and logged."""


@dataclass
class Answer:
    """What the model process says of a batch: each request's outcome by its id (or the fault
    of them all), the batch's rows, and the seconds it took."""

    ids: list[int]
    outcomes: list[Outcome] | None
    fault: str | None
    rows: int
    seconds: float


@dataclass
class _Generation:
    """One forked model process, its pipe (read by a thread of its own, :meth:`ModelProcess.
    _read_answers`), and the requests it holds (sent, not answered)."""

    process: multiprocessing.process.BaseProcess
    connection: Connection
    held: set[int] = field(default_factory=set)


class ModelProcess:
    """Sends requests to the forked model process (:meth:`send`, from the event loop) and hands
    each batch's :class:`Answer` to ``answered`` (from a thread of its own); ``lost`` gets the
    ids of requests a dead process held."""

    def __init__(self, predictor: Predictor, threads: int, *, max_batch: int, max_wait: float):
        self.predictor, self.threads = predictor, threads
        self.max_batch, self.max_wait = max_batch, max_wait
        self.answered: Callable[[Answer], None] = lambda answer: None
        self.lost: Callable[[list[int], str], None] = lambda ids, why: None
        context = multiprocessing.get_context("fork")
        #: requests being read in the HTTP process: a batch being formed waits for them
        self.reading = context.RawValue("i", 0)
        self._context = context
        self._current: _Generation | None = None
        self._lock = threading.Lock()
        self._stopping = False

    @property
    def pid(self) -> int | None:
        return self._current.process.pid if self._current is not None else None

    def start(self) -> None:
        """Fork the model process (once the model is loaded, before requests come)."""
        mine, theirs = self._context.Pipe(duplex=True)
        process = self._context.Process(
            target=_main, args=(self.predictor, theirs, mine, self.threads, self.max_batch,
                                self.max_wait, self.reading),
            name="polymodal-model", daemon=True)
        process.start()
        theirs.close()  # only the model process holds its end: its death reads as EOF here
        generation = _Generation(process, mine)
        self._current = generation
        threading.Thread(target=self._read_answers, args=(generation,), daemon=True,
                         name="polymodal-answers").start()

    def send(self, requests: list[tuple[int, RequestRows]]) -> None:
        """Hand requests (each of at most ``max_batch`` rows) to the model process, in one
        write; a process found dead is replaced first, so requests sent between batches never
        find it gone."""
        message = [(request_id, _portable(request), time.monotonic())
                   for request_id, request in requests]
        with self._lock:
            generation = self._current
            if generation is None or self._stopping:
                raise ModelFault("the model process is not running")
            if not generation.process.is_alive():
                generation = self._restart(generation)
            ids = [request_id for request_id, _ in requests]
            generation.held.update(ids)
            try:
                generation.connection.send(message)
            except OSError:  # it died just now: these requests go to the next one
                generation.held.difference_update(ids)
                generation = self._restart(generation)
                generation.held.update(ids)
                generation.connection.send(message)

    def _restart(self, dead: _Generation) -> _Generation:
        """A new model process after ``dead`` ended (its exit code logged). Its pipe is left
        to its reader, which reads its end and closes it: closed here, its number could be
        given to the new pipe while the reader still reads it."""
        dead.process.join(5)
        log.error("the model process (pid %s) ended, exit code %s; starting a new one",
                  dead.process.pid, dead.process.exitcode)
        self.start()
        assert self._current is not None
        return self._current

    def _read_answers(self, generation: _Generation) -> None:
        """The answers of one model process, until its pipe closes; then the requests it still
        held are lost (answered 500), unless the server closed it itself while stopping."""
        while True:
            try:
                answer: Answer = generation.connection.recv()
            except (EOFError, OSError) as exc:
                generation.connection.close()
                held = list(generation.held)
                generation.held.clear()
                if held:
                    self.lost(held, f"the model process ended while predicting ({exc!r})")
                return
            generation.held.difference_update(answer.ids)
            self.answered(answer)

    def stop(self, timeout: float = 30.0) -> None:
        """Once the requests it holds are answered (``timeout`` seconds at most), tell the
        process to leave and wait for it; kill it where it does not leave in that time."""
        deadline = time.monotonic() + timeout
        generation = self._current
        while generation is not None and generation.held and time.monotonic() < deadline:
            time.sleep(0.01)
        with self._lock:
            self._stopping = True
            if generation is None:
                return
            try:
                generation.connection.send(None)  # leave (its reader then reads EOF)
            except OSError:
                pass  # it is gone already
            generation.process.join(max(0.0, deadline - time.monotonic()))
            if generation.process.is_alive():
                generation.process.kill()
                generation.process.join()
            self._current = None


def _portable(request: RequestRows) -> RequestRows:
    """The request as the model process needs it: without the list of files this process
    owns and removes (the model process only reads them)."""
    return RequestRows(request.columns, request.numbers, request.on_bad_row, names=request.names,
                       skipped=request.skipped)


class _Inbox:
    """The requests the model process has been sent, read by a thread of its own as they come,
    so that a batch takes every request that came while the last one was predicted."""

    def __init__(self, connection: Connection):
        self._items: deque[tuple[int, RequestRows, float]] = deque()
        self._ready = threading.Condition()
        self._closed = False
        threading.Thread(target=self._read, args=(connection,), daemon=True,
                         name="polymodal-inbox").start()

    def _read(self, connection: Connection) -> None:
        while True:
            try:
                item = connection.recv()
                if item is None:  # the server stops
                    raise EOFError
            except (EOFError, OSError):  # the server stops, or is gone
                with self._ready:
                    self._closed = True
                    self._ready.notify()
                return
            with self._ready:
                self._items.extend(item)
                self._ready.notify()

    def batch(self, max_batch: int, max_wait: float,
              reading: Any) -> list[tuple[int, RequestRows]] | None:
        """The next batch: the requests that have come, up to ``max_batch`` rows (one request
        at least). While the HTTP process reads other requests, it waits for them, at most
        ``max_wait`` after its oldest request came. None once the pipe has closed."""
        with self._ready:
            while not self._items and not self._closed:
                self._ready.wait()
            if not self._items:
                return None
            deadline = self._items[0][2] + max_wait
            while sum(r.count for _, r, _ in self._items) < max_batch and reading.value > 0:
                left = deadline - time.monotonic()
                if left <= 0 or self._closed:
                    break
                # a request whose reading ends without being sent (a client error) sends
                # nothing to wake this: look again each millisecond
                self._ready.wait(min(left, 0.001))
            taken: list[tuple[int, RequestRows]] = []
            rows = 0
            while self._items and (not taken or rows + self._items[0][1].count <= max_batch):
                request_id, request, _ = self._items.popleft()
                taken.append((request_id, request))
                rows += request.count
            return taken


def _main(predictor: Predictor, connection: Connection, theirs: Connection, threads: int,
          max_batch: int, max_wait: float, reading: Any) -> None:
    """The model process: requests in, each batch's answer out, until the pipe closes."""
    theirs.close()  # the server's end: held only by the server, so its death reads as EOF
    _close_inherited(connection.fileno())
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole process group:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # the server drains, then closes the pipe
    import torch

    torch.set_num_threads(threads)  # the first OpenMP threads of this process, made here
    inbox = _Inbox(connection)
    while True:
        batch = inbox.batch(max_batch, max_wait, reading)
        if batch is None:
            return
        started = time.monotonic()
        outcomes, fault = _answer(predictor, [request for _, request in batch])
        try:
            connection.send(Answer([i for i, _ in batch], outcomes, fault,
                                   sum(r.count for _, r in batch), time.monotonic() - started))
        except OSError:  # the server is gone
            return


def _close_inherited(keep: int) -> None:
    """Close the files inherited from the server but the pipe and the standard streams: its
    listening socket, and (in a model process forked anew) its clients' connections, which
    must close when the server closes them, not when this process leaves."""
    most = os.sysconf("SC_OPEN_MAX") if hasattr(os, "sysconf") else 4096
    os.closerange(3, keep)
    os.closerange(keep + 1, most)


def _answer(predictor: Predictor, requests: list[RequestRows]) -> tuple[list[Outcome] | None, str | None]:
    """``(outcomes, None)``, or ``(None, traceback)`` for a fault of the whole batch; a
    request's own fault travels as a :class:`ModelFault` with its traceback."""
    try:
        outcomes = predictor.run(requests)
    except Exception:  # noqa: BLE001 - answered as a fault of every request of the batch
        return None, traceback.format_exc()
    for outcome in outcomes:
        if outcome.fault is not None and not isinstance(outcome.fault, ModelFault):
            outcome.fault = ModelFault("".join(traceback.format_exception(outcome.fault)))
    return outcomes, None

"""The model in a process of its own, fed batches over a pipe by the HTTP process.

One process cannot use two cores for serving: the event loop (reading requests, parsing JSON,
writing answers) and the Python parts of predicting (checking and encoding rows, the model's
modules, formatting outcomes) take turns on the interpreter lock. So the server forks, once the
model is loaded, a process that only predicts: the HTTP process sends it each batch's rows as
parsed (values, and the paths of the files the requests sent) and gets each request's outcome
back, while its event loop goes on reading the requests of the next batch. The fork shares the
loaded model's memory with the HTTP process (copy-on-write; the HTTP process never touches the
weights), so the model is not loaded twice. The HTTP process keeps torch to one thread, so it
never starts OpenMP's threads: a process forked from one that has (GNU OpenMP's) hangs in its
first parallel region, waiting for threads it did not inherit. (So a model process that dies
is forked anew: the next batch runs in the new one, the requests of the lost batch answer 500.)

The process dies with the server: it ignores SIGINT and SIGTERM (the server drains, then closes
the pipe) and leaves as soon as its end of the pipe reads end-of-file, which is also what it
reads when the server is killed (SIGKILL included), since only the server holds the other end.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import threading
import traceback
from multiprocessing.connection import Connection
from typing import Any

from .predictor import Outcome, Predictor
from .rows import RequestRows

log = logging.getLogger("polymodal.serve")


class ModelFault(Exception):
    """A fault of the model process (a bug of a codec or the model, or the process's death),
    with the traceback it gave there; answered 500 without it, and logged."""


class ModelProcess:
    """Runs ``predictor.run`` in a forked process; :meth:`run` is its stand-in here (blocking,
    one batch at a time, called from the batcher's thread)."""

    def __init__(self, predictor: Predictor, threads: int):
        self.predictor, self.threads = predictor, threads
        self._connection: Connection | None = None
        self._process: multiprocessing.process.BaseProcess | None = None
        self._lock = threading.Lock()
        self._stopping = False

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def start(self) -> None:
        """Fork the model process (once the model is loaded, before requests come)."""
        context = multiprocessing.get_context("fork")
        mine, theirs = context.Pipe(duplex=True)
        self._process = context.Process(target=_main, args=(self.predictor, theirs, mine,
                                                             self.threads),
                                        name="polymodal-model", daemon=True)
        self._process.start()
        theirs.close()  # only the model process holds its end: its death reads as EOF here
        self._connection = mine

    def stop(self, timeout: float = 30.0) -> None:
        """Close the pipe once the batch in flight is answered (the process then leaves) and
        wait for it; kill it where the batch or its leaving takes over ``timeout`` seconds."""
        self._stopping = True
        if not self._lock.acquire(timeout=timeout):  # a batch stuck past the drain's time
            self._kill()  # its thread then reads EOF and answers a fault
            self._lock.acquire()
        try:
            if self._connection is not None:
                self._connection.close()
                self._connection = None
            if self._process is not None:
                self._process.join(timeout)
                self._kill()
                self._process = None
        finally:
            self._lock.release()

    def _kill(self) -> None:
        if self._process is not None and self._process.is_alive():
            self._process.kill()
            self._process.join()

    def run(self, requests: list[RequestRows]) -> list[Outcome]:
        """Each request's outcome, predicted in the model process."""
        with self._lock:
            if self._connection is None:
                raise ModelFault("the model process is not running")
            if not self._stopping and self._process is not None and not self._process.is_alive():
                self._restart()  # it died between batches: this batch need not fail
            try:
                self._connection.send([_portable(r) for r in requests])
                kind, answer = self._connection.recv()
            except (EOFError, OSError) as exc:
                if not self._stopping:
                    self._restart()
                raise ModelFault(f"the model process ended while predicting ({exc!r})") from None
        if kind == "fault":
            raise ModelFault(answer)
        outcomes: list[Outcome] = answer
        return outcomes

    def _restart(self) -> None:
        """A new model process after the last one died (its exit code logged)."""
        if self._connection is not None:
            self._connection.close()
        if self._process is not None:
            self._process.join(5)
        log.error("the model process (pid %s) ended, exit code %s; starting a new one",
                  self.pid, self._process.exitcode if self._process is not None else None)
        self.start()


def _portable(request: RequestRows) -> RequestRows:
    """The request as the model process needs it: without the list of files this process
    owns and removes (the model process only reads them)."""
    return RequestRows(request.columns, request.numbers, request.on_bad_row, names=request.names,
                       skipped=request.skipped)


def _main(predictor: Predictor, connection: Connection, theirs: Connection,
          threads: int) -> None:
    """The model process: batches in, outcomes out, until the pipe closes."""
    theirs.close()  # the server's end: held only by the server, so its death reads as EOF
    _close_inherited(connection.fileno())
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole process group:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # the server drains, then closes the pipe
    import torch

    torch.set_num_threads(threads)  # the first OpenMP threads of this process, made here
    while True:
        try:
            requests = connection.recv()
            connection.send(_answer(predictor, requests))
        except (EOFError, OSError):  # the server closed the pipe, or is gone
            return


def _close_inherited(keep: int) -> None:
    """Close the files inherited from the server but the pipe and the standard streams: its
    listening socket, and (in a model process forked anew) its clients' connections, which
    must close when the server closes them, not when this process leaves."""
    most = os.sysconf("SC_OPEN_MAX") if hasattr(os, "sysconf") else 4096
    os.closerange(3, keep)
    os.closerange(keep + 1, most)


def _answer(predictor: Predictor, requests: list[RequestRows]) -> tuple[str, Any]:
    """``("ok", outcomes)``, or ``("fault", traceback)`` for a fault of the whole batch; a
    request's own fault travels as a :class:`ModelFault` with its traceback."""
    try:
        outcomes = predictor.run(requests)
    except Exception:  # noqa: BLE001 - answered as a fault of every request of the batch
        return "fault", traceback.format_exc()
    for outcome in outcomes:
        if outcome.fault is not None and not isinstance(outcome.fault, ModelFault):
            outcome.fault = ModelFault("".join(traceback.format_exception(outcome.fault)))
    return "ok", outcomes

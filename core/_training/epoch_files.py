"""Each epoch's files written on a thread of their own, while the next epoch trains.

Writing an epoch's files (the model file when the epoch is the best so far, the logs, the
checkpoint with the optimiser's state) takes a fraction of a second to seconds, most of it
waiting for the disk (each file is flushed to it before it replaces the last one). The next
epoch's steps need none of it, so the files are written meanwhile: what they hold is copied
first (the weights and the optimiser's state, which the next steps change in place), which
costs a copy of them in memory until the files are written, then written by one thread, one
epoch after another. An epoch's files are whole before the next epoch's are begun, and every
file is still written atomically.

A write's failure (a full disk) is raised where the next epoch's files are handed over, or
where training ends; a run that stops on an error or an interruption first waits for the files
being written, so that the checkpoint of the last epoch said to be finished is on disk.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from types import TracebackType


class EpochFiles:
    """Writes the epochs' files in order on one thread (a context manager: leaving it waits
    for the last epoch's files)."""

    def __init__(self) -> None:
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="polymodal-epoch-files")
        self._pending: Future[None] | None = None

    def write(self, job: Callable[[], None]) -> None:
        """Write an epoch's files (``job``, which writes them from copies), once the last
        epoch's are written; raises that last write's error."""
        self.wait()
        self._pending = self._pool.submit(job)

    def wait(self) -> None:
        """Wait for the files being written; raises the write's error."""
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.result()

    def __enter__(self) -> EpochFiles:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 trace: TracebackType | None) -> None:
        try:
            self.wait()
        except Exception:
            if kind is None:
                raise  # else the error that stopped the run is the one to tell
        finally:
            self._pool.shutdown(wait=True)

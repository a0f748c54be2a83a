"""How a run feeds its steps: decoded rows kept in memory (``training.cache_mib``) when they
fit, else data-loading worker processes (``training.workers``) where they pay; the choice is
said in the run's first lines.

The decoded size is measured, not guessed: the first training row is encoded (and kept, so it
is not decoded twice) and its bytes times the rows give the size. Whatever a codec encodes is
kept the same way (core knows no modality); see :mod:`polymodal._data.cache`.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from .._data.binding import Binding, State
from .._data.cache import RowCache, value_bytes
from .._data.table import Table
from .._options import TrainingOptions

MIB = 2**20
#: Rows tried for the decoded size (a first row found bad when encoded is passed over).
PROBE_ROWS = 8
#: The most worker processes ``workers: auto`` starts.
MAX_AUTO_WORKERS = 4


@dataclass
class Loading:
    """Where a run's batches come from."""

    workers: int
    train_cache: RowCache | None = None
    val_cache: RowCache | None = None


def available_memory() -> int | None:
    """Bytes of memory the machine can give now without swapping (Linux: MemAvailable; else
    the free physical pages), or None where it cannot say."""
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def budget(opts: TrainingOptions, world: int) -> tuple[int, str]:
    """Bytes each process may keep decoded rows in, and how that was decided."""
    if opts.cache_mib != "auto":
        return int(opts.cache_mib) * MIB, f"cache_mib: {opts.cache_mib}"
    free = available_memory()
    if free is None:
        return 0, "cache_mib: auto, and the available memory is unknown here"
    share = free // (2 * world)
    return share, f"cache_mib: auto, half of the {free / MIB:,.0f} MiB available" + (
        f" shared by {world} processes" if world > 1 else "")


def auto_workers(device: torch.device) -> int:
    """Worker processes that pay: one per core the run's threads leave free (on a GPU, every
    core but the training process's), at most :data:`MAX_AUTO_WORKERS`."""
    cores = os.cpu_count() or 1
    spare = cores - 1 if device.type != "cpu" else cores - torch.get_num_threads()
    return max(0, min(MAX_AUTO_WORKERS, spare))


def row_bytes(binding: Binding, state: State, table: Table, cache: RowCache) -> int | None:
    """Bytes of one row's encoded inputs that ``cache`` keeps, from the first row that encodes
    (kept there), a row holding every input first; None where such a value is not made of
    tensors or no probed row encodes."""
    holds = binding.presence(table)  # an absent input encodes as a placeholder of its own type
    whole = np.flatnonzero(np.logical_and.reduce([*holds.values(), np.ones(len(table), bool)]))
    for position in [*whole[:PROBE_ROWS].tolist(), *range(min(PROBE_ROWS, len(table)))]:
        encoded = binding.encode(table.take([position]), state, targets=False, cache=cache)
        if len(encoded.positions):
            sizes = [value_bytes(v) for k, v in encoded.inputs.items() if k in cache.stores]
            return None if any(s is None for s in sizes) else sum(s or 0 for s in sizes)
    return None


def plan(binding: Binding, state: State, train: Table, val: Table, opts: TrainingOptions,
         device: torch.device, world: int, say: Callable[[str], None]) -> Loading:
    """Keep the decoded rows when they fit the budget (and no worker count is given), else
    load with workers; say which, with the decoded size."""
    inputs = [b.name for b in binding.inputs if b.codec.keep_encoded()]
    if not inputs:
        return _workers(opts, device, say, "no input's codec lets its encoded rows be kept"
                        " (Codec.keep_encoded)")
    cache = RowCache(train.rows, inputs)
    per_row = row_bytes(binding, state, train, cache)
    allowed, why = budget(opts, world)
    if per_row is None:
        return _workers(opts, device, say, "the decoded size of a row is unknown (an input's"
                        " codec gives values that are not tensors)")
    size = per_row * (len(train) + len(val))
    described = (f"{_size(size)} decoded ({len(train) + len(val)} rows of {_size(per_row)})")
    if opts.workers not in ("auto", 0):
        return _workers(opts, device, say, f"{described}; not kept in memory: workers:"
                        f" {opts.workers} each decode their own batches")
    if allowed == 0:
        return _workers(opts, device, say, f"{described}; not kept in memory ({why})")
    if size > allowed:
        return _workers(opts, device, say, f"{described}, more than the {_size(allowed)} of"
                        f" {why}: read and decoded batch by batch")
    say(f"data: {described}, kept in memory ({why}): each file read and decoded once")
    return Loading(0, cache, RowCache(val.rows, inputs) if len(val) else None)


def _workers(opts: TrainingOptions, device: torch.device, say: Callable[[str], None],
             what: str) -> Loading:
    workers = auto_workers(device) if opts.workers == "auto" else int(opts.workers)
    how = (f"{workers} data-loading worker process(es)" if workers
           else "no worker processes (the training process loads)")
    why = "workers: auto" if opts.workers == "auto" else f"workers: {opts.workers}"
    if opts.workers == "auto" and not workers:
        why += (", the run's threads take every core" if device.type == "cpu"
                else ", no core to spare")
    say(f"data: {what}; {how} ({why})")
    return Loading(workers)


def _size(count: int) -> str:
    if count < 10 * 1024:
        return f"{count:,} bytes"
    return f"{count / 1024:,.1f} KiB" if count < MIB else f"{count / MIB:,.1f} MiB"

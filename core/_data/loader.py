"""Batches from a table: each loader item is a whole batch, encoded by the codecs at once.

The sampler yields ``(epoch, step, positions)``; the dataset encodes those rows (in worker
processes when ``workers > 0``) and, for training, lets each input's codec augment them with a
generator seeded from ``(seed, epoch, step)``, so a batch is the same whichever process makes
it and whenever a resumed run makes it again.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from .binding import Binding, Encoded
from .cache import RowCache
from .codec import State
from .table import Table


def derive_seed(*parts: int) -> int:
    """A 63-bit seed from integers (stable across processes and runs)."""
    return int(np.random.SeedSequence([int(p) & 0xFFFFFFFF for p in parts]).generate_state(2, np.uint64)[0] >> np.uint64(1))


class BatchDataset(Dataset):
    """Encoded batches of ``table``; with ``augment`` (training), each input's codec augments
    them as its adapter's config says. With ``cache``, decoded rows are kept from epoch to
    epoch (augmentation still runs on every batch, after them)."""

    def __init__(self, table: Table, binding: Binding, state: State, *, targets: bool,
                 augment: bool = False, seed: int = 0, cache: RowCache | None = None):
        self.table = table
        self.binding = binding
        self.state = state
        self.targets = targets
        self.augment = augment
        self.seed = seed
        self.cache = cache  # decoded rows kept across epochs (in this process only)

    def __len__(self) -> int:
        return len(self.table)

    def __getitem__(self, item: tuple[int, int, np.ndarray]) -> Encoded:
        epoch, step, positions = item
        encoded = self.binding.encode(self.table.take(positions), self.state, self.targets,
                                      self.cache)
        if self.augment:
            generator = torch.Generator().manual_seed(derive_seed(self.seed, epoch, step))
            for bound in self.binding.inputs:
                encoded.inputs[bound.name] = bound.codec.augment(encoded.inputs[bound.name],
                                                                 generator)
        return encoded


class BatchPlan(Sampler):
    """The batches of one epoch: given lists of row positions. A loader that keeps its workers
    between epochs keeps its plan too, so :meth:`start` replaces the batches in place."""

    def __init__(self, epoch: int = 0, batches: Sequence[np.ndarray] = ()):
        self.start(epoch, batches)

    def start(self, epoch: int, batches: Sequence[np.ndarray]) -> None:
        self.epoch = epoch
        self.batches = list(batches)

    def __iter__(self) -> Iterator[tuple[int, int, np.ndarray]]:
        for step, positions in enumerate(self.batches):
            yield self.epoch, step, positions

    def __len__(self) -> int:
        return len(self.batches)


def _unwrap(item: Any) -> Any:
    return item


def loader(dataset: BatchDataset, plan: BatchPlan, workers: int = 0, pin_memory: bool = False,
           keep_workers: bool = False) -> DataLoader:
    """Batches of ``dataset`` in the order of ``plan``. With ``keep_workers``, the worker
    processes outlive an epoch, so later epochs do not wait for new ones to start."""
    # A loader's own generator: starting an epoch draws from it, and a draw from the global one
    # would change dropout depending on whether workers are kept (and on where a run resumed).
    return DataLoader(dataset, batch_size=None, sampler=plan, num_workers=workers,
                      collate_fn=_unwrap, pin_memory=pin_memory,
                      prefetch_factor=4 if workers else None,
                      persistent_workers=keep_workers and workers > 0,
                      generator=torch.Generator().manual_seed(dataset.seed))

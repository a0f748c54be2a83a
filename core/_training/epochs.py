"""A run's epochs: the model and what trains it (:class:`Parts`), and :class:`Epochs`, which
trains it a pass over the training rows at a time and validates it.

Every random choice is derived from ``(seed, epoch, step)`` (the batches, the augmentation, the
dropout), so an epoch repeated on resume is the epoch an uninterrupted run would have run.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from .._assembly import PolymodalModel
from .._data.binding import Binding, Encoded, State
from .._data.loader import BatchDataset, BatchPlan, derive_seed, loader
from .._errors import DivergedError
from .._options import TrainingOptions
from .._spec import ModelSpec
from . import distributed, loading, objective
from .history import EpochRecord, Validation
from .inference import (
    autocast,
    auxiliary_losses,
    auxiliary_metrics,
    collect,
    device_targets,
    fail_on,
    head_losses,
    head_metrics,
    nonfinite_rows,
    presence_metrics,
    to_device,
)

if TYPE_CHECKING:
    from .rows import RunRows
    from .settings import RunSettings


def epoch_batches(count: int, batch_size: int, world: int, rank: int, seed: int,
                   epoch: int) -> list[np.ndarray]:
    order = np.random.default_rng(derive_seed(seed, epoch, 1)).permutation(count)
    batches = [order[i:i + batch_size] for i in range(0, count, batch_size)]
    # A last batch too small to give every process two rows would make batch norm fail.
    if len(batches) > 1 and len(batches[-1]) < 2 * world:
        batches.pop()
    return [b[rank::world] for b in batches]


def backbone_parameters(model: PolymodalModel) -> list[torch.nn.Parameter]:
    return [*model.backbones.parameters(), *model.input_backbones.parameters()]


def _set_frozen(model: PolymodalModel, frozen: bool, trainable: set[int]) -> None:
    """``training.freeze_backbones`` on or off; parameters a component froze itself (a
    backbone's ``freeze`` option), not in ``trainable``, stay frozen either way."""
    for p in backbone_parameters(model):
        p.requires_grad_(not frozen and id(p) in trainable)


def _train_mode(model: PolymodalModel, frozen: bool) -> None:
    model.train()
    if frozen:  # frozen backbones keep their batch-norm statistics too
        model.backbones.eval()
        model.input_backbones.eval()


@dataclass
class Parts:
    """The model of a run and what trains it."""

    spec: ModelSpec  # completed from the data
    binding: Binding
    state: State  # the preprocessing fitted on the training rows
    model: PolymodalModel
    optimizer: torch.optim.Optimizer
    scheduler: Any
    forward: Any = None  # what a step calls: the model, compiled and/or data-parallel
    scaler: Any = None  # fp16 only


def _datasets(rows: RunRows, parts: Parts, opts: TrainingOptions,
              feeding: loading.Loading) -> tuple[BatchDataset, BatchDataset]:
    """The training rows (augmented) and the validation rows, encoded batch by batch (from
    memory where their decoded rows are kept)."""
    train = BatchDataset(rows.train, parts.binding, parts.state, targets=True, augment=True,
                         seed=opts.seed, cache=feeding.train_cache)
    val = BatchDataset(rows.val, parts.binding, parts.state, targets=True,
                       cache=feeding.val_cache)
    return train, val


class Epochs:
    """Runs a run's epochs: training and validation batches from loaders whose worker
    processes are kept from epoch to epoch."""

    def __init__(self, parts: Parts, rows: RunRows, opts: TrainingOptions,
                 context: distributed.Context, settings: RunSettings,
                 on_step: Callable[[int, int], None] | None, feeding: loading.Loading):
        self.parts, self.rows, self.opts, self.context = parts, rows, opts, context
        self.on_bad_row, self.progress = settings.on_bad_row, settings.progress
        self.on_step = on_step
        self.weights = {h: opts.loss_weights.get(h, 1.0) for h in parts.spec.heads}
        # Parameters a component froze itself stay frozen when training.freeze_backbones ends.
        self.trainable = {id(p) for p in parts.model.parameters() if p.requires_grad}
        self.first: int | None = None  # the first epoch this process runs
        self.epoch_trained = 0  # the epoch being trained
        # Some CPU bf16 convolution kernels now and then return non-finite weight gradients
        # (seen for 1x1 feature maps): such a step is skipped, as fp16's loss scaler does.
        self.guard_gradients = context.device.type == "cpu" and opts.precision == "bf16"
        self.skipped = 0  # steps skipped in the current epoch
        pinned = context.device.type == "cuda"
        dataset, val_dataset = _datasets(rows, parts, opts, feeding)
        self.plan = BatchPlan()
        self.batches = loader(dataset, self.plan, feeding.workers, pin_memory=pinned,
                              keep_workers=True)
        val_count = len(rows.val)
        val_plan = BatchPlan(0, [np.arange(i, min(i + 256, val_count)) for i in range(0, val_count, 256)])
        self.val_batches = loader(val_dataset, val_plan, feeding.workers, pin_memory=pinned,
                                  keep_workers=True)

    def train(self, epoch: int, say: Callable[[str], None]) -> EpochRecord:
        """One pass over the training rows; its record, without validation."""
        opts, context = self.opts, self.context
        self._freeze(epoch, say)
        self.epoch_trained = epoch
        torch.manual_seed(derive_seed(opts.seed, epoch, 2))
        batches = epoch_batches(len(self.rows.train), opts.batch_size, context.world,
                                 context.rank, opts.seed, epoch)
        self.plan.start(epoch, batches)
        lr = self.parts.optimizer.param_groups[0]["lr"]  # the epoch's (first) learning rate
        # Summed on the device: reading a loss every step would make the host wait for the GPU.
        loss_sum, seen, steps = torch.zeros((), device=context.device), 0, 0
        bar = _Bar(self.progress and context.main, len(batches), f"epoch {epoch}/{opts.epochs}",
                   context.world)
        for step, encoded in enumerate(self.batches):
            loss = self._step(encoded)
            if loss is None:  # no head had a target in this batch
                continue
            loss_sum += loss.detach() * len(encoded.positions)
            seen += len(encoded.positions)
            steps += 1
            bar.advance(step, loss_sum, seen)
            if self.on_step is not None:
                self.on_step(epoch, step)
        bar.close()
        self._say_skipped(epoch, steps, say)
        seconds = time.perf_counter() - bar.started
        loss_total, rows_total = distributed.summed(context, loss_sum, seen)  # every process's rows
        return EpochRecord(epoch, loss_total / max(rows_total, 1), lr, round(seconds, 3),
                           round(rows_total / max(seconds, 1e-9), 1))

    def _say_skipped(self, epoch: int, steps: int, say: Callable[[str], None]) -> None:
        """Say how many of the epoch's ``steps`` were skipped for non-finite gradients; stop
        where every one was (the model no longer learns)."""
        skipped, self.skipped = self.skipped, 0
        if skipped and skipped >= steps:
            raise DivergedError(f"epoch {epoch}: the gradients of every step were not finite in"
                                " bf16, so no step was taken (a fault of some CPU bf16 kernels);"
                                " train in precision: fp32")
        if skipped:
            say(f"note: epoch {epoch}: {skipped} of {steps} step(s) skipped, their gradients were"
                " not finite in bf16 (a fault of some CPU bf16 kernels; precision: fp32 avoids it)")

    def _freeze(self, epoch: int, say: Callable[[str], None]) -> None:
        opts = self.opts
        if self.first is None:
            self.first = epoch
        frozen = opts.freeze_backbones and (opts.unfreeze_at is None or epoch < opts.unfreeze_at)
        if opts.freeze_backbones and epoch in (self.first, opts.unfreeze_at):
            say(f"epoch {epoch}: backbones {'frozen' if frozen else 'train from now on'}")
        _set_frozen(self.parts.model, frozen, self.trainable)
        _train_mode(self.parts.model, frozen)

    def _step(self, encoded: Encoded) -> torch.Tensor | None:
        """One optimisation step on a batch; its (weighted) loss, or None without targets."""
        parts, opts, device = self.parts, self.opts, self.context.device
        fail_on(encoded.bad, self.on_bad_row, len(encoded.positions) + len(encoded.bad))
        if self.epoch_trained == self.first:  # later epochs meet the same rows: said once
            self.rows.report.add(encoded)
        # The engine resolved channels_last's auto (hardware.choose_channels_last).
        inputs = to_device(encoded.inputs, device, opts.channels_last is True)
        targets = device_targets(encoded.targets, device)
        present = to_device(encoded.present, device) or None
        with autocast(device, opts.precision):
            outputs = parts.forward(inputs, present)
        losses = head_losses(parts.model, outputs, targets)
        loss = sum(self.weights[h] * l.float() for h, (l, _, _) in losses.items())
        if not isinstance(loss, torch.Tensor):
            return None
        total = loss + self._auxiliary_loss(outputs, targets, present)  # the log shows `loss`
        parts.optimizer.zero_grad(set_to_none=True)
        if parts.scaler is not None:
            parts.scaler.scale(total).backward()
            parts.scaler.step(parts.optimizer)
            parts.scaler.update()
        else:
            total.backward()
            if self.guard_gradients and not _finite_gradients(parts.model):
                self.skipped += 1  # and the schedule waits for the next step taken
                return loss
            parts.optimizer.step()
        parts.scheduler.step()
        return loss

    def _auxiliary_loss(self, outputs: dict[str, torch.Tensor], targets: Any,
                        present: Any) -> torch.Tensor | float:
        """``fusion.auxiliary``'s weight times the mean loss of the heads' per-input copies."""
        fusion = self.parts.model.spec.fusion
        if fusion is None or fusion.auxiliary is None:
            return 0.0
        found = auxiliary_losses(self.parts.model, outputs, targets, present)
        if not found:
            return 0.0
        return fusion.auxiliary.weight * torch.stack([f[0].float() for f in found.values()]).mean()

    def validate(self) -> Validation | None:
        """The metrics of each head on the validation rows (None without any)."""
        if not len(self.rows.val):
            return None
        parts, opts = self.parts, self.opts
        parts.model.auxiliary_outputs = True  # the per-input heads' metrics too
        try:
            collected = collect(parts.model, self.val_batches, self.context.device,
                                opts.precision, opts.channels_last is True)
        finally:
            parts.model.auxiliary_outputs = False
        per_head = head_metrics(collected, parts.binding, parts.state)
        broken = nonfinite_rows({h: torch.cat(v) for h, v in collected.outputs.items()})
        return Validation(objective.weighted_loss(per_head, opts.loss_weights), per_head,
                          presence_metrics(collected, parts.binding, parts.state),
                          auxiliary_metrics(collected, parts.binding, parts.state),
                          max((int(b.sum()) for b in broken.values()), default=0))


def _finite_gradients(model: torch.nn.Module) -> bool:
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    # A norm is finite exactly when every value it sums is (or it overflows: as bad a step).
    return not grads or bool(torch.isfinite(torch.stack(torch._foreach_norm(grads))).all())


class _Bar:
    """An epoch's progress bar, on a terminal only, redrawn at most twice a second."""

    def __init__(self, enabled: bool, total: int, desc: str, world: int):
        self.bar = _progress(enabled, total, desc)
        self.total, self.world = total, world
        self.started = self.shown = time.perf_counter()

    def advance(self, step: int, loss_sum: torch.Tensor, seen: int) -> None:
        if self.bar is None:
            return
        now = time.perf_counter()
        if now - self.shown >= 0.5 or step + 1 == self.total:
            self.shown = now
            self.bar.set_postfix(loss=f"{loss_sum.item() / seen:.4f}",
                                 rows_s=f"{seen * self.world / max(now - self.started, 1e-9):.0f}")
        self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _progress(enabled: bool, total: int, desc: str):
    # Only on a terminal: redirected to a file, a bar's redraws would bury the epoch lines.
    if not enabled or not sys.stderr.isatty():
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="batch", leave=False, file=sys.stderr,
                dynamic_ncols=True)

"""The training engine behind ``polymodal train`` and :func:`polymodal.train`.

A run is a few steps, each a function below: lock the outputs (one run per output at a time);
prepare the data (read and check the table, split off the validation rows); restore the
checkpoint when resuming; build the model (fit the codecs' preprocessing on the training rows,
complete the spec from the data, make the optimiser and schedule); then, epoch by epoch, train,
validate, and write the epoch's files (the model file when the epoch is the best so far, the
logs, the checkpoint), each atomically; finish with the plot and the best model. An epoch's
outcome is an :class:`EpochRecord`; where the run stands is its :class:`Progress`.

Every random choice is derived from ``(seed, epoch, step)``, so ``resume`` from the last
checkpoint repeats the interrupted epoch exactly and ends with the same weights as an
uninterrupted run.
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .._assembly import PolymodalModel, build
from .._data.binding import Binding, Encoded, State
from .._data.loader import BatchDataset, BatchPlan, derive_seed, loader
from .._data.table import Table, read_table
from .._errors import (
    CheckpointError,
    DataError,
    DivergedError,
    OutputLockedError,
    PolymodalError,
    SpecError,
    first_line,
)
from .._files import refuse_overwriting_inputs
from .._options import TrainingOptions
from .._output_lock import output_lock
from .._spec import ModelSpec, load_spec
from .._temporaries import sweep
from . import distributed, hardware, loading, objective
from .checkpoint import Checkpoint, fingerprint
from .folds import group_keys, split_hint
from .history import EpochRecord, Progress, Validation
from .inference import (
    RowReport,
    autocast,
    auxiliary_losses,
    auxiliary_metrics,
    check_policy,
    collect,
    device_targets,
    fail_on,
    head_losses,
    head_metrics,
    presence_metrics,
    presence_table,
    to_device,
)
from .presence import presence_lines
from .report import plot_curves, summary_table, write_logs, write_validation_rows
from .track_train import TrainTracking

CHECKPOINT = "checkpoint.pt"


@dataclass
class TrainResult:
    """What a run produced: the best model (also saved at ``output``) and its record."""

    model: PolymodalModel
    output: Path
    run_dir: Path
    best_epoch: int
    best_value: float
    metric: str
    history: list[dict[str, Any]]
    report: RowReport = field(default_factory=RowReport)
    stopped_early: bool = False
    is_main: bool = True  # False in the other processes of a data-parallel run
    #: where the run was recorded in an experiment tracker, and what could not be sent
    tracking: list[str] = field(default_factory=list)

    @property
    def best(self) -> dict[str, Any]:
        return next(r for r in self.history if r["epoch"] == self.best_epoch)

    def summary(self) -> dict[str, Any]:
        return {"output": str(self.output), "run_dir": str(self.run_dir),
                "best_epoch": self.best_epoch, "metric": self.metric,
                "best_value": self.best_value, "epochs_run": len(self.history),
                "stopped_early": self.stopped_early, "best": self.best,
                **self.report.to_json(), **({"tracking": self.tracking} if self.tracking else {})}


def with_options(spec: ModelSpec, overrides: Mapping[str, Any] | None) -> ModelSpec:
    if not overrides:
        return spec
    from pydantic import ValidationError

    from .._spec import monitored_metric_problems, pydantic_problems

    data = {**spec.training.model_dump(), **{k: v for k, v in overrides.items() if v is not None}}
    try:
        options = TrainingOptions.model_validate(data)
    except ValidationError as exc:
        raise SpecError(pydantic_problems(exc, "training", TrainingOptions)) from None
    problems = monitored_metric_problems(options, spec.heads, None)
    if problems:
        raise SpecError(problems)
    return spec.model_copy(update={"training": options})


def split_rows(table: Table, fraction: float, group_by: str | None, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Positions of the training and validation rows; with ``group_by`` a group's rows stay
    together."""
    count = len(table)
    rng = np.random.default_rng(derive_seed(seed, 0x5EED))
    if fraction <= 0 or count < 2:
        return np.arange(count), np.zeros(0, np.int64)
    if group_by is None:
        order = rng.permutation(count)
        n_val = min(count - 1, max(1, round(fraction * count)))
        return np.sort(order[n_val:]), np.sort(order[:n_val])
    # One rule for group keys everywhere (train, cv, tune): the value as text, stripped; an
    # empty one is an error naming the row.
    keys = group_keys(table, group_by, "group the validation split by")
    groups = np.array(sorted(set(keys)), dtype=object)
    if len(groups) < 2:
        raise DataError(f"{table.source}: column {group_by!r} has a single group; a grouped"
                        " validation split needs at least two")
    val_groups: set[str] = set()
    taken = 0
    for g in groups[rng.permutation(len(groups))]:
        if taken >= fraction * count or len(val_groups) == len(groups) - 1:
            break
        val_groups.add(g)
        taken += int((keys == g).sum())
    in_val = np.array([k in val_groups for k in keys])
    return np.flatnonzero(~in_val), np.flatnonzero(in_val)


def _checked(table: Table, binding: Binding, policy: str, report: RowReport) -> Table:
    binding.require_columns(table, targets=True)
    issues = binding.check(table, None, targets=True)
    fail_on(issues.bad, policy, len(table), among="in the table")
    report.add(issues)
    if not issues.bad:
        return table
    return table.take([p for p in range(len(table)) if p not in issues.bad])


def _epoch_batches(count: int, batch_size: int, world: int, rank: int, seed: int,
                   epoch: int) -> list[np.ndarray]:
    order = np.random.default_rng(derive_seed(seed, epoch, 1)).permutation(count)
    batches = [order[i:i + batch_size] for i in range(0, count, batch_size)]
    # A last batch too small to give every process two rows would make batch norm fail.
    if len(batches) > 1 and len(batches[-1]) < 2 * world:
        batches.pop()
    return [b[rank::world] for b in batches]


def _backbone_parameters(model: PolymodalModel) -> list[torch.nn.Parameter]:
    return [*model.backbones.parameters(), *model.input_backbones.parameters()]


def _optimizer(model: PolymodalModel, options: TrainingOptions) -> torch.optim.Optimizer:
    backbone = {id(p) for p in _backbone_parameters(model)}
    groups = [
        {"params": [p for p in model.parameters() if id(p) not in backbone], "lr": options.lr},
        {"params": [p for p in model.parameters() if id(p) in backbone],
         "lr": options.backbone_lr or options.lr},
    ]
    make: Callable[[], torch.optim.Optimizer]
    if options.optimizer == "sgd":
        make = functools.partial(torch.optim.SGD, groups, lr=options.lr, momentum=options.momentum,
                                 weight_decay=options.weight_decay)
    else:
        make = functools.partial(torch.optim.AdamW, groups, lr=options.lr,
                                 weight_decay=options.weight_decay)
    try:
        # One fused kernel for every parameter: the same update, several times faster a step
        # than the per-tensor loop.
        return make(fused=True)
    except (RuntimeError, ValueError):  # a device or dtype without fused kernels
        return make()


def _scheduler(optimizer: torch.optim.Optimizer, options: TrainingOptions, total_steps: int):
    if options.schedule == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=[g["lr"] for g in optimizer.param_groups],
            total_steps=max(total_steps, 2))
    if options.schedule == "cosine":
        def factor(step: int) -> float:
            return 0.5 * (1 + math.cos(math.pi * min(step, total_steps) / max(total_steps, 1)))
        return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)


def _set_frozen(model: PolymodalModel, frozen: bool, trainable: set[int]) -> None:
    """``training.freeze_backbones`` on or off; parameters a component froze itself (a
    backbone's ``freeze`` option), not in ``trainable``, stay frozen either way."""
    for p in _backbone_parameters(model):
        p.requires_grad_(not frozen and id(p) in trainable)


def _train_mode(model: PolymodalModel, frozen: bool) -> None:
    model.train()
    if frozen:  # frozen backbones keep their batch-norm statistics too
        model.backbones.eval()
        model.input_backbones.eval()


def _monitor(options: TrainingOptions, binding: Binding, has_val: bool) -> tuple[str, bool]:
    metric = options.early_stopping.metric
    if metric != "loss":
        if not has_val:
            raise SpecError([("training.early_stopping.metric", f"{metric} needs validation rows"
                              " (a --val table or val_fraction > 0)")])
    return objective.monitored(options, binding)


def default_run_dir(output: str | Path) -> Path:
    output = Path(output)
    return output.with_name(output.stem + ".run")


def train(
    spec: ModelSpec | str | Path | Mapping[str, Any],
    data: Any,
    output: str | Path,
    *,
    val: Any = None,
    val_fraction: float | None = None,
    group_by: str | None = None,
    on_bad_row: str = "fail",
    resume: bool = False,
    run_dir: str | Path | None = None,
    options: Mapping[str, Any] | None = None,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
    on_step: Callable[[int, int], None] | None = None,
    on_epoch: Callable[[dict[str, Any], float], bool | str | None] | None = None,
    track: Any = None,
) -> TrainResult:
    """Train the model ``spec`` describes on the table ``data`` and save the best epoch to
    ``output`` (with its fitted preprocessing).

    ``val`` is a validation table; without it ``val_fraction`` of the rows (grouped by
    ``group_by``) are held out. ``options`` override the spec's ``training`` section
    (``{"epochs": 3}``). Logs, the plot and the checkpoint go to ``run_dir`` (default: beside
    ``output``, named ``<stem>.run``). ``log`` receives progress lines (None: silent).
    ``on_step(epoch, step)`` is called after every optimisation step.
    ``on_epoch(record, value)`` is called after every epoch (once its files are written) with
    the epoch's record (as in ``history``) and the value of ``early_stopping.metric``; a true
    return stops the run there, like early stopping (a text says why, in the log). In a
    data-parallel run every process calls it and must return the same answer.

    ``track`` records the run in an experiment tracker too: ``"mlflow"``, ``"tensorboard"``,
    a mapping of ``training.track``'s options (``{"to": "mlflow", "uri": ...}``) or ``"none"``;
    default: the spec's ``training.track`` (docs/tracking.md).

    While the run lasts, ``output`` and ``run_dir`` are locked: another run on either fails at
    once with an :class:`~polymodal.PolymodalError` naming this one.
    """
    check_policy(on_bad_row)
    output = Path(output)
    refuse_overwriting_inputs(output, {"the spec": spec, "the training table": data,
                                       "the validation table": val})
    spec = with_options(load_spec(spec), {**(options or {}), "val_fraction": val_fraction,
                                      "group_by": group_by})
    run_dir = Path(run_dir) if run_dir is not None else default_run_dir(output)
    context = distributed.start(spec.training.device)
    say = (log or (lambda _: None)) if context.main else (lambda _: None)
    autotune = torch.backends.cudnn.benchmark
    # Batches keep one shape, so cuDNN's per-shape search for the fastest convolution pays off.
    torch.backends.cudnn.benchmark = autotune or context.device.type == "cuda"
    try:
        return _guarded(spec, data, val, output, run_dir, on_bad_row, resume, progress, say,
                        _Hooks(on_step, on_epoch), context, track)
    finally:
        torch.backends.cudnn.benchmark = autotune
        distributed.stop(context)


def _guarded(spec: ModelSpec, data: Any, val: Any, output: Path, run_dir: Path, policy: str,
             resume: bool, progress: bool, say: Callable[[str], None], hooks: _Hooks,
             context: distributed.Context, track: Any) -> TrainResult:
    """The run with its outputs locked and its threads set; a tracker told how it ended, and
    a run folder this run made removed when it fails before an epoch."""
    fresh = not run_dir.exists()
    tracking: TrainTracking | None = None
    try:
        with _locked_outputs(context, output, run_dir, say), hardware.threads(spec.training.threads):
            tracking = TrainTracking.open(track, spec, output, run_dir,
                                          resume and (run_dir / CHECKPOINT).is_file(),
                                          context.main, say)
            return _run(spec, data, val, output, run_dir, policy, resume, progress, say, hooks,
                        context, tracking)
    except BaseException as exc:
        if tracking is not None:
            for line in tracking.finish(run_dir, exc):
                say(line)
        if fresh and context.main and not isinstance(exc, OutputLockedError):
            from .report import discard_unstarted_run

            discard_unstarted_run(run_dir, CHECKPOINT)
        raise


@contextlib.contextmanager
def _locked_outputs(context: distributed.Context, output: Path, run_dir: Path,
                    say: Callable[[str], None]) -> Iterator[None]:
    """Hold the locks of the model file and the run folder (the first process of a
    data-parallel run holds them for all; if it cannot, every process stops)."""
    with contextlib.ExitStack() as held:
        refused: PolymodalError | None = None
        if context.main:
            try:
                held.enter_context(output_lock(output, what="output", note=say))
                held.enter_context(output_lock(run_dir, what="run folder", note=say))
                sweep(run_dir)  # what an interrupted run of this folder left
            except PolymodalError as exc:
                refused = exc
        if not distributed.all_agree(context, refused is None):
            raise refused or OutputLockedError(
                "the first process of this data-parallel run could not lock its outputs;"
                " see its message")
        yield


@dataclass
class _Data:
    """The rows a run trains and validates on, checked."""

    train: Table
    val: Table
    report: RowReport  # rows left out and oddities found so far
    fingerprint: str  # identifies the training rows, so that a resume uses the same
    held_out: bool  # validation rows split off the training table (not a --val table)
    split_note: str | None = None  # rows drawn one by one from a table that looks grouped


def _prepare_data(binding: Binding, opts: TrainingOptions, data: Any, val: Any,
                  policy: str) -> _Data:
    report = RowReport()
    table = _checked(read_table(data), binding, policy, report)
    if val is not None:
        train_table, val_table = table, _checked(read_table(val), binding, policy, report)
    else:
        train_pos, val_pos = split_rows(table, opts.val_fraction, opts.group_by, opts.seed)
        train_table, val_table = table.take(train_pos), table.take(val_pos)
    if len(train_table) == 0:
        raise DataError(f"{table.source}: no training rows left")
    held_out = val is None and len(val_table) > 0
    note = split_hint(table, binding) if held_out and opts.group_by is None else None
    if held_out and opts.group_by is not None:
        note = _uneven_split(len(val_table), len(table), opts.val_fraction, opts.group_by)
    return _Data(train_table, val_table, report, fingerprint(train_table), held_out, note)


def _uneven_split(val_rows: int, rows: int, fraction: float, group_by: str) -> str | None:
    """A note where whole groups made the validation split far larger than asked."""
    share = val_rows / rows
    if share <= max(2 * fraction, fraction + 0.1):
        return None
    return (f"the validation split holds {val_rows} of {rows} rows ({share:.0%}) for a"
            f" val_fraction of {fraction:g}: the groups of column {group_by!r} are large, and"
            " each stays whole; more, smaller groups, or a --val table, leave more rows to train on")


def _write_held_out(run_dir: Path, rows: _Data, group_by: str | None) -> None:
    groups = rows.val.columns[group_by] if group_by else None
    write_validation_rows(run_dir, rows.val.rows, groups, group_by)


def _restore_point(path: Path, spec: ModelSpec, rows: _Data,
                   say: Callable[[str], None]) -> Checkpoint | None:
    """The checkpoint to resume from, checked to be of this run; None when there is none."""
    if not path.is_file():
        say(f"no checkpoint in {path.parent}: starting from the beginning")
        return None
    checkpoint = Checkpoint.read(path)
    checkpoint.check_same_run(path, _spec_json(spec), rows.fingerprint)
    return checkpoint


def _spec_json(spec: ModelSpec) -> str:
    data = spec.to_dict()
    # Where a run is recorded does not change what it trains: a resumed run may add a tracker.
    data.get("training", {}).pop("track", None)
    return json.dumps(data)


@dataclass
class _Parts:
    """The model of a run and what trains it."""

    spec: ModelSpec  # completed from the data
    binding: Binding
    state: State  # the preprocessing fitted on the training rows
    model: PolymodalModel
    optimizer: torch.optim.Optimizer
    scheduler: Any
    runner: Any = None  # what a step calls: the model, compiled and/or data-parallel
    scaler: Any = None  # fp16 only


def _build(binding: Binding, opts: TrainingOptions, rows: _Data, checkpoint: Checkpoint | None,
           context: distributed.Context) -> _Parts:
    state: State = checkpoint.state if checkpoint else binding.fit(rows.train)
    completed = binding.complete(state)
    binding = Binding(completed)
    torch.manual_seed(opts.seed)
    model = build(completed, pretrained=checkpoint is None)
    binding.prepare(model, state)
    model.fitted_state = state
    model.to(context.device)
    if opts.channels_last:
        model.to(memory_format=torch.channels_last)
    optimizer = _optimizer(model, opts)
    steps = len(_epoch_batches(len(rows.train), opts.batch_size, context.world, 0, opts.seed, 1))
    scheduler = _scheduler(optimizer, opts, steps * opts.epochs)
    return _Parts(completed, binding, state, model, optimizer, scheduler)


def _restore(parts: _Parts, checkpoint: Checkpoint | None, epochs: int,
             say: Callable[[str], None]) -> Progress:
    if checkpoint is None:
        return Progress()
    try:
        parts.model.load_state_dict(checkpoint.model)
        parts.optimizer.load_state_dict(checkpoint.optimizer)
        parts.scheduler.load_state_dict(checkpoint.scheduler)
    except (RuntimeError, KeyError, ValueError, TypeError, IndexError) as exc:
        text = first_line(exc, 200)
        raise CheckpointError(f"--resume: the checkpoint's weights do not fit the model of its"
                              f" spec ({text}); start the run again without --resume, or give"
                              " another --run-dir") from None
    say(f"resuming after epoch {checkpoint.progress.epoch} of {epochs}")
    return checkpoint.progress


def _runner(parts: _Parts, opts: TrainingOptions, context: distributed.Context) -> None:
    """Wrap the restored model for training: compiled, data-parallel; fp16's loss scaler."""
    parts.scaler = torch.amp.GradScaler("cuda") if opts.precision == "fp16" else None
    runner: Any = parts.model
    if opts.compile:
        runner = torch.compile(parts.model)
    if context.distributed:
        from torch.nn.parallel import DistributedDataParallel

        runner = DistributedDataParallel(
            runner, device_ids=[context.device.index] if context.device.type == "cuda" else None,
            find_unused_parameters=True)
    parts.runner = runner


def _datasets(rows: _Data, parts: _Parts, opts: TrainingOptions,
              feeding: loading.Loading) -> tuple[BatchDataset, BatchDataset]:
    """The training rows (augmented) and the validation rows, encoded batch by batch (from
    memory where their decoded rows are kept)."""
    train = BatchDataset(rows.train, parts.binding, parts.state, targets=True, augment=True,
                         seed=opts.seed, cache=feeding.train_cache)
    val = BatchDataset(rows.val, parts.binding, parts.state, targets=True,
                       cache=feeding.val_cache)
    return train, val


class _Epochs:
    """Runs a run's epochs: training and validation batches from loaders whose worker
    processes are kept from epoch to epoch."""

    def __init__(self, parts: _Parts, rows: _Data, opts: TrainingOptions,
                 context: distributed.Context, policy: str, progress: bool,
                 on_step: Callable[[int, int], None] | None, feeding: loading.Loading):
        self.parts, self.rows, self.opts, self.context = parts, rows, opts, context
        self.policy, self.progress, self.on_step = policy, progress, on_step
        self.weights = {h: opts.loss_weights.get(h, 1.0) for h in parts.spec.heads}
        # Parameters a component froze itself stay frozen when training.freeze_backbones ends.
        self.trainable = {id(p) for p in parts.model.parameters() if p.requires_grad}
        self.first: int | None = None  # the first epoch this process runs
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
        torch.manual_seed(derive_seed(opts.seed, epoch, 2))
        batches = _epoch_batches(len(self.rows.train), opts.batch_size, context.world,
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
        fail_on(encoded.bad, self.policy, len(encoded.positions) + len(encoded.bad))
        self.rows.report.add(encoded)
        inputs = to_device(encoded.inputs, device, opts.channels_last)
        targets = device_targets(encoded.targets, device)
        present = to_device(encoded.present, device) or None
        with autocast(device, opts.precision):
            outputs = parts.runner(inputs, present)
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
                                opts.precision, opts.channels_last)
        finally:
            parts.model.auxiliary_outputs = False
        per_head = head_metrics(collected, parts.binding, parts.state)
        return Validation(objective.weighted_loss(per_head, opts.loss_weights), per_head,
                          presence_metrics(collected, parts.binding, parts.state),
                          auxiliary_metrics(collected, parts.binding, parts.state))


def _finite_gradients(model: torch.nn.Module) -> bool:
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    # A norm is finite exactly when every value it sums is (or it overflows: as bad a step).
    return not grads or bool(torch.isfinite(torch.stack(torch._foreach_norm(grads))).all())


def _write_epoch(parts: _Parts, progress: Progress, improved: bool, output: Path, run_dir: Path,
                 spec: ModelSpec, rows: _Data) -> None:
    """An epoch's files: the model file if the epoch is the best so far, the logs, the
    checkpoint (last, so that a run killed before it repeats the epoch on resume)."""
    if improved:
        from .._modelfile import save

        save(parts.model, output)
    write_logs(run_dir, progress.history)
    Checkpoint(parts.model.state_dict(), parts.optimizer.state_dict(), parts.scheduler.state_dict(),
               progress, _spec_json(spec), parts.state, rows.fingerprint).write(run_dir / CHECKPOINT)


@dataclass
class _Hooks:
    """What the caller of :func:`train` asked to be called with."""

    on_step: Callable[[int, int], None] | None
    on_epoch: Callable[[dict[str, Any], float], bool | str | None] | None

    def stop_after(self, record: EpochRecord, value: float) -> str | None:
        """Why the caller stops the run after ``record``'s epoch; None where it goes on."""
        answer = self.on_epoch(record.to_dict(), value) if self.on_epoch is not None else None
        if not answer:
            return None
        return answer if isinstance(answer, str) else "the caller asked"


def _announce(binding: Binding, rows: _Data, say: Callable[[str], None]) -> None:
    """What the table's rows show, said before training while it can still be fixed: notes on
    bad or unusual rows and on the validation split, and which inputs the rows hold."""
    notes = [*rows.report.note_lines(), *([rows.split_note] if rows.split_note else [])]
    for line in notes:
        say(f"note: {line}")
    for line in presence_lines(binding, rows.train, rows.val):
        say(line)


def _run(spec: ModelSpec, data: Any, val: Any, output: Path, run_dir: Path, policy: str,
         resume: bool, progress: bool, say: Callable[[str], None], hooks: _Hooks,
         context: distributed.Context, tracking: TrainTracking | None) -> TrainResult:
    binding = Binding(spec)
    rows = _prepare_data(binding, spec.training, data, val, policy)
    # The precision this device runs well; the spec keeps what was asked (auto).
    opts = spec.training.model_copy(update={"precision": hardware.choose_precision(
        spec.training.precision, context.device, say)})
    _announce(binding, rows, say)
    checkpoint = _restore_point(run_dir / CHECKPOINT, spec, rows, say) if resume else None
    if rows.held_out and context.main:
        _write_held_out(run_dir, rows, opts.group_by)
    parts = _build(binding, opts, rows, checkpoint, context)
    metric, higher = _monitor(opts, parts.binding, len(rows.val) > 0)
    run = _restore(parts, checkpoint, opts.epochs, say)
    _runner(parts, opts, context)
    feeding = loading.plan(parts.binding, parts.state, rows.train, rows.val, opts, context.device,
                           context.world, say)
    if tracking is not None:
        tracking.start(spec, opts, context.device, torch.get_num_threads())
    epochs = _Epochs(parts, rows, opts, context, policy, progress, hooks.on_step, feeding)
    say(f"training on {len(rows.train)} rows, validating on {len(rows.val)}"
        f" ({context.world} process(es), {context.device.type}); logs in {run_dir}")
    stopped_early = run.epoch > 0 and run.out_of_patience(opts.early_stopping.patience)
    if stopped_early:
        say(f"the run had stopped early after epoch {run.epoch}: nothing left to train")
    for epoch in range(opts.epochs + 1 if stopped_early else run.epoch + 1, opts.epochs + 1):
        record = epochs.train(epoch, say)
        if parts.scaler is None:  # fp16's scaler skips the steps that overflow on its own
            _check_finite(record, opts, run)
        record.val = epochs.validate()
        improved = run.add(record, record.value(metric), higher)
        if context.main:
            _write_epoch(parts, run, improved, output, run_dir, spec, rows)
        if tracking is not None:
            tracking.epoch(record.to_dict())
        say(_epoch_line(record, improved))
        distributed.barrier(context)
        if run.out_of_patience(opts.early_stopping.patience):
            stopped_early = True
            say(f"early stop: {metric} has not improved for {run.stale} epoch(s)")
            break
        stop = hooks.stop_after(record, record.value(metric))
        if stop:
            stopped_early = True
            say(f"stopped after epoch {epoch}: {stop}")
            break
    best = next((r for r in run.dicts() if r["epoch"] == run.best_epoch), None)
    for line in auxiliary_lines(best or {}, binding):
        say(line)
    if tracking is not None:
        tracking.trained(output, run_dir, spec)
    result = _finish(run, rows.report, output, run_dir, metric, stopped_early, context, say)
    if tracking is not None:
        result.tracking = tracking.finish(run_dir)
        for line in result.tracking:
            say(line)
    return result


#: An input alone this much below the fused head (a metric where higher is better; where
#: lower is, 1.5 times the fused value) is noted.
FAR_BELOW = 0.1


def auxiliary_lines(best: Mapping[str, Any], binding: Binding) -> list[str]:
    """How each head does from each input alone (``fusion.auxiliary``) at the best epoch, by
    its first declared metric on the validation rows, and a note where one is far below."""
    by_head: dict[str, dict[str, dict[str, float]]] = {}
    for key, values in best.get("val_auxiliary", {}).items():
        head, _, name = key.partition("@")
        by_head.setdefault(head, {})[name] = values
    lines = []
    for head, inputs in by_head.items():
        declared = binding.head_codec(head).declared_metrics
        metric = declared[0].name if declared else "loss"
        higher = binding.higher_is_better(f"{head}.{metric}")
        fused = float(best["val"][head][metric])
        alone = {name: float(values[metric]) for name, values in inputs.items()}
        lines.append(f"head {head} from each input alone (fusion.auxiliary), {metric} on the"
                     " validation rows: " + ", ".join(f"{n} {v:.4f}" for n, v in alone.items())
                     + f"; fused {fused:.4f}")
        for name, value in alone.items():
            far = fused - value > FAR_BELOW if higher else value > 1.5 * fused
            if far:
                lines.append(f"note: head {head} from {name} alone: {metric} {value:.4f}, against"
                             f" {fused:.4f} fused: {name} says little about {head} on its own (a"
                             " weak input, or one that matters only with the others);"
                             " `polymodal explain` shows what it adds to the fused head")
    return lines


def _check_finite(record: EpochRecord, opts: TrainingOptions, run: Progress) -> None:
    """Stop where the training loss is no longer a number: every later step would learn from
    it, and the model file still holds the best epoch before it."""
    if math.isfinite(record.train_loss):
        return
    kept = (f" The model file holds epoch {run.best_epoch}, the best before it."
            if run.best_epoch else " No epoch was saved.")
    precision = (f", or precision: fp32 (this run trained in {opts.precision})"
                 if opts.precision != "fp32" else "")
    raise DivergedError(
        f"epoch {record.epoch}: the mean training loss is {record.train_loss}: training diverged"
        f" and stopped.{kept} Try a lower lr (now {opts.lr:g}){precision}; a column with extreme"
        " values can cause it too.")


def _finish(run: Progress, report: RowReport, output: Path, run_dir: Path, metric: str,
            stopped_early: bool, context: distributed.Context,
            say: Callable[[str], None]) -> TrainResult:
    if context.main and run.history:
        say(plot_curves(run_dir, run.history))
    distributed.barrier(context)
    from .._modelfile import load

    return TrainResult(load(output), output, run_dir, run.best_epoch, run.best_value, metric,
                       run.dicts(), report, stopped_early, context.main)


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


def _epoch_line(record: EpochRecord, improved: bool) -> str:
    parts = [f"epoch {record.epoch}: train loss {record.train_loss:.4f}"]
    if record.val is not None:
        parts.append(f"val loss {record.val.loss:.4f}")
        for head, values in record.val.heads.items():
            shown = [f"{k} {v:.4f}" for k, v in values.items() if k != "loss" and not math.isnan(v)]
            parts.append(f"{head}: {', '.join(shown)}")
    parts.append(f"{record.rows_per_s:.0f} rows/s")
    line = "; ".join(parts)
    return line + ("  *best*" if improved else "")


def final_table(result: TrainResult) -> str:
    best = result.best
    lines = [f"best epoch {result.best_epoch} of {len(result.history)} by {result.metric}"
             f" = {result.best_value:.4f}; saved {result.output}"]
    metrics = {h: v for h, v in best.get("val", {}).items() if isinstance(v, dict)}
    if metrics:
        lines.append(summary_table(metrics))
    for head, kinds in best.get("val_by_presence", {}).items():
        lines += [f"head {head} on the validation rows, by the inputs each row holds:",
                  presence_table(kinds)]
    return "\n".join(lines)

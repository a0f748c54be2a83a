"""The training engine behind ``polymodal train`` and :func:`polymodal.train`.

A run: read and check the table (bad rows fail or are skipped and reported), split off the
validation rows, fit the codecs' preprocessing on the training rows, complete the spec from the
data, build the model, then train epoch by epoch. After each epoch the metrics are logged, the
model file is rewritten if the epoch is the best so far, and a checkpoint is written
atomically. Every random choice is derived from ``(seed, epoch, step)``, so ``resume`` from the
last checkpoint repeats the interrupted epoch exactly and ends with the same weights as an
uninterrupted run.
"""

from __future__ import annotations

import functools
import json
import math
import os
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .._assembly import PolymodalModel, build
from .._data.binding import Binding, State
from .._data.loader import BatchDataset, BatchPlan, derive_seed, loader
from .._data.table import Table, read_table
from .._errors import DataError, SpecError, did_you_mean
from .._spec import ModelSpec, load_spec, unknown_metric
from . import distributed, hardware
from .folds import split_hint
from .inference import (
    RowReport,
    autocast,
    check_policy,
    collect,
    device_targets,
    fail_on,
    head_losses,
    head_metrics,
    to_device,
)
from .options import TrainingOptions
from .report import plot_curves, summary_table, write_logs, write_validation_rows

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

    @property
    def best(self) -> dict[str, Any]:
        return next(r for r in self.history if r["epoch"] == self.best_epoch)

    def summary(self) -> dict[str, Any]:
        return {"output": str(self.output), "run_dir": str(self.run_dir),
                "best_epoch": self.best_epoch, "metric": self.metric,
                "best_value": self.best_value, "epochs_run": len(self.history),
                "stopped_early": self.stopped_early, "best": self.best,
                **self.report.to_json()}


def _options(spec: ModelSpec, overrides: Mapping[str, Any] | None) -> ModelSpec:
    if not overrides:
        return spec
    from pydantic import ValidationError

    from .._spec import _monitored_metric_problems, _pydantic_problems

    data = {**spec.training.model_dump(), **{k: v for k, v in overrides.items() if v is not None}}
    try:
        options = TrainingOptions.model_validate(data)
    except ValidationError as exc:
        raise SpecError(_pydantic_problems(exc, "training", TrainingOptions)) from None
    problems = _monitored_metric_problems(options, spec.heads, None)
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
    if group_by not in table.columns:
        raise DataError(f"{table.source}: no column {group_by!r} to group the validation split by."
                        f"{did_you_mean(group_by, table.names)}")
    keys = np.array([str(v) for v in table.columns[group_by]], dtype=object)
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
    fail_on(issues.bad, policy)
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


#: Metrics where lower is better; every other metric is better higher.
LOWER_IS_BETTER = frozenset({"loss", "rmse", "mae", "mse"})


def higher_is_better(metric: str) -> bool:
    """Whether larger values of ``metric`` (``loss`` or ``head.name``) are better."""
    return metric.rsplit(".", 1)[-1] not in LOWER_IS_BETTER


def _monitor(options: TrainingOptions, spec: ModelSpec, has_val: bool) -> tuple[str, bool]:
    metric = options.early_stopping.metric
    if metric != "loss":
        if not has_val:
            raise SpecError([("training.early_stopping.metric", f"{metric} needs validation rows"
                              " (a --val table or val_fraction > 0)")])
    mode = options.early_stopping.mode
    higher = higher_is_better(metric) if mode == "auto" else mode == "max"
    return metric, higher


def _value(row: dict[str, Any], metric: str) -> float:
    if "val" not in row:
        return row["train_loss"]
    if metric == "loss":
        return row["val"]["loss"]
    head, name = metric.split(".", 1)
    value = row["val"].get(head, {}).get(name)
    if value is None:
        raise SpecError([unknown_metric(head, name, sorted(row["val"].get(head, {})))])
    return float(value)


def _differences(was: Any, now: Any, path: str = "") -> list[str]:
    """Where two specs (as plain data) differ: ``training.epochs 12 -> 14``."""
    if isinstance(was, dict) and isinstance(now, dict):
        return [d for k in dict.fromkeys([*was, *now])
                for d in _differences(was.get(k), now.get(k), f"{path}.{k}" if path else k)]
    return [] if was == now else [f"{path} {json.dumps(was)} -> {json.dumps(now)}"]


def _save_checkpoint(path: Path, payload: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        torch.save(payload, tmp)
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _fingerprint(table: Table, positions: np.ndarray) -> str:
    import hashlib

    digest = hashlib.sha256(table.rows[positions].astype(np.int64).tobytes())
    digest.update(table.source.encode())
    return digest.hexdigest()[:16]


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
    on_epoch: Callable[[dict[str, Any], float], bool | None] | None = None,
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
    return stops the run there, like early stopping. In a data-parallel run every process calls
    it and must return the same answer.
    """
    check_policy(on_bad_row)
    spec = _options(load_spec(spec), {**(options or {}), "val_fraction": val_fraction,
                                      "group_by": group_by})
    opts = spec.training
    output = Path(output)
    run_dir = Path(run_dir) if run_dir is not None else default_run_dir(output)
    say = log or (lambda _: None)
    context = distributed.start(opts.device)
    autotune = torch.backends.cudnn.benchmark
    # Batches keep one shape, so cuDNN's per-shape search for the fastest convolution pays off.
    torch.backends.cudnn.benchmark = autotune or context.device.type == "cuda"
    try:
        with hardware.threads(opts.threads):
            return _run(spec, opts, data, val, output, run_dir, on_bad_row, resume, progress,
                        say if context.main else (lambda _: None), on_step, on_epoch, context)
    finally:
        torch.backends.cudnn.benchmark = autotune
        distributed.stop(context)


def _run(spec: ModelSpec, opts: TrainingOptions, data: Any, val: Any, output: Path, run_dir: Path,
         policy: str, resume: bool, progress: bool, say: Callable[[str], None],
         on_step: Callable[[int, int], None] | None,
         on_epoch: Callable[[dict[str, Any], float], bool | None] | None,
         context: distributed.Context) -> TrainResult:
    # The precision this device runs well; the spec keeps what was asked (auto).
    opts = opts.model_copy(update={"precision": hardware.choose_precision(
        opts.precision, context.device, say)})
    binding = Binding(spec)
    report = RowReport()
    table = _checked(read_table(data), binding, policy, report)
    if val is not None:
        train_table = table
        val_table = _checked(read_table(val), binding, policy, report)
    else:
        train_pos, val_pos = split_rows(table, opts.val_fraction, opts.group_by, opts.seed)
        train_table, val_table = table.take(train_pos), table.take(val_pos)
        hint = split_hint(table, binding) if opts.group_by is None and len(val_pos) else None
        if hint:
            say(f"note: {hint}")
    if len(train_table) == 0:
        raise DataError(f"{table.source}: no training rows left")
    for line in report.note_lines():  # before training, while it can still be fixed
        say(f"note: {line}")
    fingerprint = _fingerprint(train_table, np.arange(len(train_table)))
    checkpoint_path = run_dir / CHECKPOINT
    checkpoint = None
    if resume:
        if checkpoint_path.is_file():
            checkpoint = torch.load(checkpoint_path, map_location="cpu", weights_only=True)
            if checkpoint["spec"] != json.dumps(spec.to_dict()):
                changed = "; ".join(_differences(json.loads(checkpoint["spec"]), spec.to_dict()))
                raise SpecError([("", f"--resume: {checkpoint_path} belongs to a run of another"
                                  f" spec ({changed}); a resumed run must be the same run. Start"
                                  " a new run without --resume or give another -o/--run-dir")])
            if checkpoint["fingerprint"] != fingerprint:
                raise DataError(f"--resume: the training rows differ from those of the run in"
                                f" {checkpoint_path}; resume with the same table")
        else:
            say(f"no checkpoint in {run_dir}: starting from the beginning")
    if val is None and len(val_table) and context.main:
        write_validation_rows(run_dir, val_table.rows, opts.group_by and val_table.columns[opts.group_by],
                              opts.group_by)
    state: State = json.loads(checkpoint["state"]) if checkpoint else binding.fit(train_table)
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
    batches_per_epoch = len(_epoch_batches(len(train_table), opts.batch_size, context.world, 0,
                                           opts.seed, 1))
    scheduler = _scheduler(optimizer, opts, batches_per_epoch * opts.epochs)
    metric, higher = _monitor(opts, completed, len(val_table) > 0)
    history: list[dict[str, Any]] = []
    best_epoch, best_value, stale, start_epoch = 0, math.nan, 0, 1
    if checkpoint is not None:
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        scheduler.load_state_dict(checkpoint["scheduler"])
        history = json.loads(checkpoint["history"])
        best_epoch, best_value, stale = checkpoint["best_epoch"], checkpoint["best_value"], checkpoint["stale"]
        start_epoch = checkpoint["epoch"] + 1
        say(f"resuming after epoch {checkpoint['epoch']} of {opts.epochs}")
    scaler = torch.amp.GradScaler("cuda") if opts.precision == "fp16" else None
    runner: Any = model
    if opts.compile:
        runner = torch.compile(model)
    if context.distributed:
        from torch.nn.parallel import DistributedDataParallel

        runner = DistributedDataParallel(
            runner, device_ids=[context.device.index] if context.device.type == "cuda" else None,
            find_unused_parameters=True)
    dataset = BatchDataset(train_table, binding, state, targets=True, augment=opts.augment,
                           seed=opts.seed)
    val_dataset = BatchDataset(val_table, binding, state, targets=True)
    weights = {h: opts.loss_weights.get(h, 1.0) for h in completed.heads}
    say(f"training on {len(train_table)} rows, validating on {len(val_table)}"
        f" ({context.world} process(es), {context.device.type}); logs in {run_dir}")
    stopped_early = False
    if start_epoch > 1 and opts.early_stopping.patience and stale >= opts.early_stopping.patience:
        start_epoch = opts.epochs + 1
        stopped_early = True
        say(f"the run had stopped early after epoch {len(history)}: nothing left to train")
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    pinned = context.device.type == "cuda"
    plan = BatchPlan()
    batches_of = loader(dataset, plan, opts.workers, pin_memory=pinned, keep_workers=True)
    val_batches = [np.arange(i, min(i + 256, len(val_table))) for i in range(0, len(val_table), 256)]
    val_batches_of = loader(val_dataset, BatchPlan(0, val_batches), opts.workers,
                            pin_memory=pinned, keep_workers=True)
    for epoch in range(start_epoch, opts.epochs + 1):
        frozen = opts.freeze_backbones and (opts.unfreeze_at is None or epoch < opts.unfreeze_at)
        if opts.freeze_backbones and (epoch == start_epoch or epoch == opts.unfreeze_at):
            say(f"epoch {epoch}: backbones {'frozen' if frozen else 'train from now on'}")
        _set_frozen(model, frozen, trainable)
        _train_mode(model, frozen)
        torch.manual_seed(derive_seed(opts.seed, epoch, 2))
        batches = _epoch_batches(len(train_table), opts.batch_size, context.world, context.rank,
                                 opts.seed, epoch)
        plan.start(epoch, batches)
        lr_at_start = optimizer.param_groups[0]["lr"]  # the epoch's (first) learning rate
        started = shown = time.perf_counter()
        # Summed on the device: reading a loss every step would make the host wait for the GPU.
        loss_sum, seen = torch.zeros((), device=context.device), 0
        bar = _progress(progress and context.main, len(batches), f"epoch {epoch}/{opts.epochs}")
        for step, encoded in enumerate(batches_of):
            fail_on(encoded.bad, policy)
            report.add(encoded)
            inputs = to_device(encoded.inputs, context.device, opts.channels_last)
            targets = device_targets(encoded.targets, context.device)
            with autocast(context.device, opts.precision):
                outputs = runner(inputs)
            losses = head_losses(model, outputs, targets)
            loss = sum(weights[h] * l.float() for h, (l, _, _) in losses.items())
            if not isinstance(loss, torch.Tensor):  # no head had a target in this batch
                continue
            optimizer.zero_grad(set_to_none=True)
            if scaler is not None:
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
            else:
                loss.backward()
                optimizer.step()
            scheduler.step()
            rows = len(encoded.positions)
            loss_sum += loss.detach() * rows
            seen += rows
            if bar is not None:
                now = time.perf_counter()
                if now - shown >= 0.5 or step + 1 == len(batches):
                    shown = now
                    bar.set_postfix(loss=f"{loss_sum.item() / seen:.4f}",
                                    rows_s=f"{seen * context.world / max(now - started, 1e-9):.0f}")
                bar.update(1)
            if on_step is not None:
                on_step(epoch, step)
        if bar is not None:
            bar.close()
        seconds = time.perf_counter() - started
        loss_total, rows_total = distributed.summed(context, loss_sum, seen)  # every process's rows
        row: dict[str, Any] = {"epoch": epoch, "train_loss": loss_total / max(rows_total, 1),
                               "lr": lr_at_start, "seconds": round(seconds, 3),
                               "rows_per_s": round(rows_total / max(seconds, 1e-9), 1)}
        if len(val_table):
            collected = collect(model, val_batches_of, context.device, opts.precision,
                                opts.channels_last)
            per_head = head_metrics(collected, binding, state)
            row["val"] = {"loss": sum(weights[h] * m["loss"] for h, m in per_head.items()), **per_head}
        history.append(row)
        value = _value(row, metric)
        improved = best_epoch == 0 or (value > best_value if higher else value < best_value)
        if improved:
            best_epoch, best_value, stale = epoch, value, 0
        else:
            stale += 1
        if context.main:
            if improved:
                from .._modelfile import save

                save(model, output)
            write_logs(run_dir, history)
            _save_checkpoint(checkpoint_path, {
                "epoch": epoch, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "history": json.dumps(history),
                "best_epoch": best_epoch, "best_value": best_value, "stale": stale,
                "spec": json.dumps(spec.to_dict()), "state": json.dumps(state),
                "fingerprint": fingerprint,
            })
        say(_epoch_line(row, metric, value, improved))
        distributed.barrier(context)
        if opts.early_stopping.patience and stale >= opts.early_stopping.patience:
            stopped_early = True
            say(f"early stop: {metric} has not improved for {stale} epoch(s)")
            break
        if on_epoch is not None and on_epoch(row, value):
            stopped_early = True
            say(f"stopped after epoch {epoch}, as the caller asked")
            break
    if context.main and history:
        say(plot_curves(run_dir, history))
    distributed.barrier(context)
    from .._modelfile import load

    best_model = load(output)
    return TrainResult(best_model, output, run_dir, best_epoch, best_value, metric, history,
                       report, stopped_early, context.main)


def _progress(enabled: bool, total: int, desc: str):
    # Only on a terminal: redirected to a file, a bar's redraws would bury the epoch lines.
    if not enabled or not sys.stderr.isatty():
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="batch", leave=False, file=sys.stderr,
                dynamic_ncols=True)


def _epoch_line(row: dict[str, Any], metric: str, value: float, improved: bool) -> str:
    parts = [f"epoch {row['epoch']}: train loss {row['train_loss']:.4f}"]
    for head, values in row.get("val", {}).items():
        if head == "loss":
            parts.append(f"val loss {values:.4f}")
            continue
        shown = [f"{k} {v:.4f}" for k, v in values.items() if k != "loss" and not math.isnan(v)]
        parts.append(f"{head}: {', '.join(shown)}")
    parts.append(f"{row['rows_per_s']:.0f} rows/s")
    line = "; ".join(parts)
    return line + ("  *best*" if improved else "")


def final_table(result: TrainResult) -> str:
    best = result.best
    lines = [f"best epoch {result.best_epoch} of {len(result.history)} by {result.metric}"
             f" = {result.best_value:.4f}; saved {result.output}"]
    metrics = {h: v for h, v in best.get("val", {}).items() if isinstance(v, dict)}
    if metrics:
        lines.append(summary_table(metrics))
    return "\n".join(lines)

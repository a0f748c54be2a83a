"""The training engine behind ``polymodal train`` and :func:`polymodal.train`.

A run is a few steps, each a function below: lock the outputs (one run per output at a time);
prepare the data (read and check the table, split off the validation rows); restore the
checkpoint when resuming; build the model (fit the codecs' preprocessing on the training rows,
complete the spec from the data, make the optimiser and schedule); then, epoch by epoch, train,
validate, and write the epoch's files (the model file when the epoch is the best so far, the
logs, the checkpoint), each atomically, on a thread of their own while the next epoch trains
(:mod:`.epoch_files`); finish with the plot and the best model. An epoch's
outcome is an :class:`EpochRecord`; where the run stands is its :class:`Progress`. The rows are
read and split in :mod:`.rows`, the epochs trained in :mod:`.epochs`; what a command asks of its
runs (overrides, bad rows, tracking) is a :class:`~.settings.RunSettings`.

Every random choice is derived from ``(seed, epoch, step)``, so ``resume`` from the last
checkpoint repeats the interrupted epoch exactly and ends with the same weights as an
uninterrupted run.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import json
import math
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, NoReturn

import torch

from .._assembly import PolymodalModel, build
from .._data.binding import Binding, State
from .._data.table import Table
from .._errors import (
    CheckpointError,
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
from .checkpoint import Checkpoint
from .epoch_files import EpochFiles
from .epochs import Epochs, Parts, backbone_parameters, epoch_batches
from .history import EpochRecord, Progress
from .inference import (
    RowReport,
    check_on_bad_row,
    presence_table,
)
from .presence import presence_lines
from .report import plot_curves, summary_table, write_logs
from .rows import RunRows, prepare_rows, write_held_out
from .settings import RunSettings
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


def _optimizer(model: PolymodalModel, options: TrainingOptions) -> torch.optim.Optimizer:
    backbone = {id(p) for p in backbone_parameters(model)}
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
    spec: ModelSpec | str | Path | Mapping[str, Any], data: Any, output: str | Path, *,
    val: Any = None, val_fraction: float | None = None, group_by: str | None = None,
    on_bad_row: str = "fail", resume: bool = False, run_dir: str | Path | None = None,
    options: Mapping[str, Any] | None = None, progress: bool = True,
    log: Callable[[str], None] | None = None, on_step: Callable[[int, int], None] | None = None,
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
    settings = RunSettings({**(options or {}), "val_fraction": val_fraction, "group_by": group_by},
                           on_bad_row, output=output, track=track, progress=progress)
    return train_with(spec, data, settings, val=val, resume=resume, run_dir=run_dir, log=log,
                      hooks=Hooks(on_step, on_epoch))


def train_with(spec: ModelSpec | str | Path | Mapping[str, Any], data: Any,
               settings: RunSettings, *, val: Any = None, resume: bool = False,
               run_dir: str | Path | None = None, log: Callable[[str], None] | None = None,
               hooks: Hooks | None = None) -> TrainResult:
    """:func:`train` with its settings as an object (as ``polymodal train`` maps its options;
    ``settings.output`` is the model file)."""
    check_on_bad_row(settings.on_bad_row)
    if settings.output is None:
        raise TypeError("train_with needs settings.output, the model file to write")
    output = Path(settings.output)
    refuse_overwriting_inputs(output, {"the spec": spec, "the training table": data,
                                       "the validation table": val})
    run = TrainCall(output, Path(run_dir) if run_dir is not None else default_run_dir(output),
                    val, resume, log or _silent, hooks or Hooks())
    return run_training(load_spec(spec), data, settings, run)


def _silent(line: str) -> None:
    pass


@dataclass
class Hooks:
    """What the caller of :func:`train` asked to be called with."""

    on_step: Callable[[int, int], None] | None = None
    on_epoch: Callable[[dict[str, Any], float], bool | str | None] | None = None

    def stop_after(self, record: EpochRecord, value: float) -> str | None:
        """Why the caller stops the run after ``record``'s epoch; None where it goes on."""
        answer = self.on_epoch(record.to_dict(), value) if self.on_epoch is not None else None
        if not answer:
            return None
        return answer if isinstance(answer, str) else "the caller asked"


@dataclass(frozen=True)
class TrainCall:
    """Where one training run writes and what it is told, beside its :class:`RunSettings`:
    its model file and run folder, a validation table, whether it resumes from the folder's
    checkpoint, where its lines go, and what it calls back."""

    output: Path
    run_dir: Path
    val: Any = None
    resume: bool = False
    say: Callable[[str], None] = _silent
    hooks: Hooks = field(default_factory=Hooks)


def run_training(spec: ModelSpec, data: Any, settings: RunSettings, run: TrainCall) -> TrainResult:
    """Train ``spec`` (its ``training`` section resolved with ``settings``' overrides) on
    ``data`` as ``run`` says."""
    check_on_bad_row(settings.on_bad_row)
    spec = settings.resolved(spec)
    context = distributed.start(spec.training.device)
    if not context.main:
        run = replace(run, say=_silent)
    autotune = torch.backends.cudnn.benchmark
    # Batches keep one shape, so cuDNN's per-shape search for the fastest convolution pays off.
    torch.backends.cudnn.benchmark = autotune or context.device.type == "cuda"
    try:
        return _guarded(spec, data, settings, run, context)
    finally:
        torch.backends.cudnn.benchmark = autotune
        distributed.stop(context)


def train_part(spec: ModelSpec, table: Table, settings: RunSettings, run: TrainCall,
               split_by: str | None, track: Any) -> TrainResult:
    """One of a command's runs (a fold, a trial): the command's settings, with the column its
    validation split keeps groups whole by and where the run is tracked."""
    overrides = {**settings.overrides, "group_by": split_by}
    return run_training(spec, table, replace(settings, overrides=overrides, track=track), run)


def _guarded(spec: ModelSpec, data: Any, settings: RunSettings, run: TrainCall,
             context: distributed.Context) -> TrainResult:
    """The run with its outputs locked and its threads set; a tracker told how it ended, and
    a run folder this run made removed when it fails before an epoch."""
    fresh = not run.run_dir.exists()
    tracking: TrainTracking | None = None
    try:
        with _locked_outputs(context, run.output, run.run_dir, run.say), \
                hardware.threads(spec.training.threads):
            tracking = TrainTracking.open(settings.track, spec, run.output, run.run_dir,
                                          run.resume and (run.run_dir / CHECKPOINT).is_file(),
                                          context.main, run.say)
            return _run(spec, data, settings, run, context, tracking)
    except BaseException as exc:
        if tracking is not None:
            for line in tracking.finish(run.run_dir, exc):
                run.say(line)
        if fresh and context.main and not isinstance(exc, OutputLockedError):
            from .report import discard_unstarted_run

            discard_unstarted_run(run.run_dir, CHECKPOINT)
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


def _restore_point(path: Path, spec: ModelSpec, rows: RunRows,
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


def _build(binding: Binding, opts: TrainingOptions, rows: RunRows, checkpoint: Checkpoint | None,
           context: distributed.Context) -> Parts:
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
    steps = len(epoch_batches(len(rows.train), opts.batch_size, context.world, 0, opts.seed, 1))
    scheduler = _scheduler(optimizer, opts, steps * opts.epochs)
    return Parts(completed, binding, state, model, optimizer, scheduler)


def _restore(parts: Parts, checkpoint: Checkpoint | None, epochs: int,
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


def _wrap_for_training(parts: Parts, opts: TrainingOptions, context: distributed.Context) -> None:
    """Wrap the restored model for training: compiled, data-parallel; fp16's loss scaler."""
    parts.scaler = torch.amp.GradScaler("cuda") if opts.precision == "fp16" else None
    forward: Any = parts.model
    if opts.compile:
        forward = torch.compile(parts.model)
    if context.distributed:
        from torch.nn.parallel import DistributedDataParallel

        forward = DistributedDataParallel(
            forward, device_ids=[context.device.index] if context.device.type == "cuda" else None,
            find_unused_parameters=True)
    parts.forward = forward


def _epoch_job(parts: Parts, progress: Progress, improved: bool, output: Path, run_dir: Path,
               spec: ModelSpec, rows: RunRows) -> Callable[[], None]:
    """An epoch's files, written by :class:`EpochFiles` while the next epoch trains, from
    copies made now (the next steps change the weights in place): the model file if the epoch
    is the best so far, the logs, the checkpoint (last, so that a run killed before it repeats
    the epoch on resume)."""
    from .._modelfile import file_metadata, write_weights

    weights = copy.deepcopy(parts.model.state_dict())  # weights tied in the model stay tied
    metadata = file_metadata(parts.model) if improved else None
    checkpoint = Checkpoint(weights, copy.deepcopy(parts.optimizer.state_dict()),
                            copy.deepcopy(parts.scheduler.state_dict()),
                            replace(progress, history=list(progress.history)), _spec_json(spec),
                            parts.state, rows.fingerprint)

    def write() -> None:
        if metadata is not None:
            write_weights(weights, metadata, output)
        write_logs(run_dir, checkpoint.progress.history)
        checkpoint.write(run_dir / CHECKPOINT)

    return write


def _announce(binding: Binding, rows: RunRows, say: Callable[[str], None]) -> None:
    """What the table's rows show, said before training while it can still be fixed: notes on
    bad or unusual rows and on the validation split, and which inputs the rows hold."""
    notes = [*rows.report.note_lines(), *([rows.split_note] if rows.split_note else [])]
    for line in notes:
        say(f"note: {line}")
    for line in presence_lines(binding, rows.train, rows.val):
        say(line)


def _run(spec: ModelSpec, data: Any, settings: RunSettings, call: TrainCall,
         context: distributed.Context, tracking: TrainTracking | None) -> TrainResult:
    say, output, run_dir, hooks = call.say, call.output, call.run_dir, call.hooks
    binding = Binding(spec)
    rows = prepare_rows(binding, spec.training, data, call.val, settings.on_bad_row)
    # The precision this device runs well; the spec keeps what was asked (auto).
    precision = hardware.choose_precision(spec.training.precision, context.device, say)
    opts = spec.training.model_copy(update={"precision": precision, "channels_last":
        hardware.choose_channels_last(spec.training.channels_last, context.device, precision)})
    _announce(binding, rows, say)
    checkpoint = _restore_point(run_dir / CHECKPOINT, spec, rows, say) if call.resume else None
    if rows.held_out and context.main:
        write_held_out(run_dir, rows, opts.group_by)
    parts = _build(binding, opts, rows, checkpoint, context)
    metric, higher = _monitor(opts, parts.binding, len(rows.val) > 0)
    run = _restore(parts, checkpoint, opts.epochs, say)
    _wrap_for_training(parts, opts, context)
    feeding = loading.plan(parts.binding, parts.state, rows.train, rows.val, opts, context.device,
                           context.world, say)
    if tracking is not None:
        tracking.start(spec, opts, context.device, torch.get_num_threads())
    epochs = Epochs(parts, rows, opts, context, settings, hooks.on_step, feeding)
    say(f"training on {len(rows.train)} rows, validating on {len(rows.val)}"
        f" ({context.world} process(es), {context.device.type}); logs in {run_dir}")
    stopped_early = run.epoch > 0 and run.out_of_patience(opts.early_stopping.patience)
    if stopped_early:
        say(f"the run had stopped early after epoch {run.epoch}: nothing left to train")
    warned = False  # of a training loss that explodes: once a run
    with EpochFiles() as files:  # leaving it waits for the last epoch's files
        for epoch in range(opts.epochs + 1 if stopped_early else run.epoch + 1, opts.epochs + 1):
            record = epochs.train(epoch, say)
            if parts.scaler is None:  # fp16's scaler skips the steps that overflow on its own
                _check_finite(record, opts, run)
            record.val = epochs.validate()
            _check_outputs(record, opts, run)
            exploding = None if warned else exploding_note(record, run, opts)
            if exploding is not None:
                say(exploding)
                warned = True
            improved = run.add(record, record.value(metric), higher)
            if context.main:
                files.write(_epoch_job(parts, run, improved, output, run_dir, spec, rows))
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
    if not math.isfinite(record.train_loss):
        _diverged(f"epoch {record.epoch}: the mean training loss is {record.train_loss}", opts, run)


#: A mean training loss this many times the lowest of the epochs before it marks a run that
#: diverges while its loss stays a number (too high an lr, a huge weight_decay): noted, once.
EXPLODING = 100.0


def exploding_note(record: EpochRecord, run: Progress, opts: TrainingOptions) -> str | None:
    """The note for an epoch whose mean training loss is :data:`EXPLODING` times the lowest
    of the epochs before it, or None. Not a stop: the run goes on, and the model file keeps
    its best epoch, which the validation metric picks."""
    earlier = [r for r in run.history if math.isfinite(r.train_loss) and r.train_loss > 0]
    lowest = min(earlier, key=lambda r: r.train_loss, default=None)
    if lowest is None or not record.train_loss >= EXPLODING * lowest.train_loss:
        return None
    decay = (f" or a lower weight_decay (now {opts.weight_decay:g})"
             if opts.weight_decay > 1 else "")
    return (f"note: epoch {record.epoch}: the mean training loss ({record.train_loss:.4g}) is"
            f" {record.train_loss / lowest.train_loss:,.0f}x epoch {lowest.epoch}'s"
            f" ({lowest.train_loss:.4g}): training is diverging. Try a lower lr (now"
            f" {opts.lr:g}){decay}; the model file keeps the best epoch by the validation"
            " metric")


def _check_outputs(record: EpochRecord, opts: TrainingOptions, run: Progress) -> None:
    """Stop where the model's outputs on the validation rows are no longer numbers (its
    training loss may still be one): such an epoch is never the best, whatever its metrics
    (a class picked from NaN scores), and is not saved."""
    if record.val is not None and record.val.nonfinite_rows:
        _diverged(f"epoch {record.epoch}: the model's outputs on {record.val.nonfinite_rows}"
                  " validation row(s) are not numbers (NaN or infinite)", opts, run)


def _diverged(what: str, opts: TrainingOptions, run: Progress) -> NoReturn:
    kept = (f" The model file holds epoch {run.best_epoch}, the best before it."
            if run.best_epoch else " No epoch was saved.")
    precision = (f", or precision: fp32 (this run trained in {opts.precision})"
                 if opts.precision != "fp32" else "")
    decay = (f" or a lower weight_decay (now {opts.weight_decay:g})"
             if opts.weight_decay > 1 else "")  # a decay above 1 alone can blow the weights up
    raise DivergedError(
        f"{what}: training diverged and stopped.{kept} Try a lower lr (now {opts.lr:g}){decay}"
        f"{precision}; a column with extreme values can cause it too.")


def _finish(run: Progress, report: RowReport, output: Path, run_dir: Path, metric: str,
            stopped_early: bool, context: distributed.Context,
            say: Callable[[str], None]) -> TrainResult:
    if context.main and run.history:
        say(plot_curves(run_dir, run.history))
    distributed.barrier(context)
    from .._modelfile import load

    return TrainResult(load(output), output, run_dir, run.best_epoch, run.best_value, metric,
                       run.dicts(), report, stopped_early, context.main)


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

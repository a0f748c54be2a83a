"""The ``polymodal`` command.

Bad input ends in one message on stderr and a non-zero exit; ``--debug`` shows the traceback.
Listing commands read static manifests and import neither torch nor any plugin.
This module holds the group, its error handling and the training commands (train, cv, tune);
the other commands are defined in :mod:`polymodal._commands` and added here.

Exit codes: 1 for every error of the input, a plugin included (a spec, a file, a table, a plugin
that refuses or fails); 2 for a wrong command line; 3 for a bug in polymodal itself.
"""

from __future__ import annotations

import errno
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from ._commands import components, models, plugins, predicting, reference, serving, specs
from ._commands.common import BAD_ROW as _BAD_ROW, load_spec as _load_spec
from ._errors import PolymodalError
from ._run_flags import override_options, overrides

EXIT_BAD_INPUT = 1
EXIT_INTERNAL = 3


class _Group(click.Group):
    """Turns PolymodalError into a one-line message; keeps tracebacks for --debug."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.ClickException, click.Abort):
            raise
        except PolymodalError as exc:
            if ctx.obj and ctx.obj.get("debug"):
                _print_causes(exc)
                raise
            click.echo(f"error: {exc}", err=True)
            ctx.exit(EXIT_BAD_INPUT)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            ctx.exit(130)
        except BrokenPipeError:
            # The reader went away (`polymodal list | head`): stop quietly, as Unix tools do.
            # stdout is pointed at devnull so the interpreter's final flush cannot fail again.
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            ctx.exit(141)
        except Exception as exc:  # noqa: BLE001
            if ctx.obj and ctx.obj.get("debug"):
                raise
            blamed = (_plugin_blamed(exc) or _peer_lost(exc) or _file_system_refused(exc)
                      or _path_refused(exc))
            if blamed is not None:
                click.echo(f"error: {blamed}", err=True)
                ctx.exit(EXIT_BAD_INPUT)
            click.echo(
                f"internal error: {type(exc).__name__}: {exc}\n"
                "This is a bug in polymodal; rerun with --debug for the traceback.",
                err=True,
            )
            ctx.exit(EXIT_INTERNAL)


#: What the process groups of torch.distributed say when another process of the job is gone.
_PEER_GONE = ("Connection reset by peer", "Connection closed by peer", "Broken pipe",
              "connection refused", "timed out", "Socket Timeout", "NCCL communicator was aborted")


def _peer_lost(exc: Exception) -> str | None:
    """Under torchrun, the message for a collective that failed because another process of the
    job died or hung: not a bug here, and its own output says why."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return None
    distributed = sys.modules.get("torch.distributed")
    dist_error = getattr(distributed, "DistError", ()) if distributed is not None else ()
    text = str(exc)
    if not (isinstance(exc, dist_error) or any(s.lower() in text.lower() for s in _PEER_GONE)):
        return None
    rank = os.environ.get("RANK", "?")
    first = (text.strip().splitlines() or [type(exc).__name__])[0][:200]
    return (f"process {rank} of this torchrun job lost contact with another process of the job"
            f" ({type(exc).__name__}: {first}); that process's own output says why it stopped."
            " Rerun with --resume to continue from the last saved epoch")


def _file_system_refused(exc: Exception) -> str | None:
    """The message for a write the file system refused (a full disk, a read-only one) that no
    write of polymodal's own reported: the user's to fix, not a bug."""
    from ._files import write_refusal

    target = getattr(exc, "filename", None) or "a file"
    refused = write_refusal(target, exc)
    return str(refused) if refused is not None else None


#: Paths the operating system refuses whatever the data: the user's to fix, not a bug.
_PATH_ERRNOS = {errno.ENAMETOOLONG: "its name is too long for the file system (most allow 255"
                " bytes a name)", errno.ELOOP: "it is a loop of symbolic links",
                errno.ENOTDIR: "a part of it that should be a folder is a file"}


def _path_refused(exc: Exception) -> str | None:
    """The message for a path the operating system refuses (a name too long, a link loop)."""
    if not isinstance(exc, OSError) or exc.errno not in _PATH_ERRNOS:
        return None
    name = exc.filename if exc.filename is not None else "a path"
    shown = name if len(str(name)) <= 120 else f"{str(name)[:60]}...{str(name)[-40:]}"
    return f"{shown}: {_PATH_ERRNOS[exc.errno]}; give another path"


def _plugin_blamed(exc: Exception) -> str | None:
    """The message naming the third-party plugin whose code raised ``exc``, if one did."""
    from . import _registry

    registry = _registry._REGISTRY  # only plugins already imported can have raised it
    return registry.blame(exc) if registry is not None else None


def _print_causes(exc: PolymodalError) -> None:
    """With --debug: the tracebacks of the component errors a spec error reports."""
    import traceback

    for cause in getattr(exc, "causes", []):
        if cause is not exc:
            traceback.print_exception(cause)
            click.echo("", err=True)


def _version() -> str:
    from ._version import __version__

    return __version__


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="Show tracebacks for errors.")
@click.version_option(version=_version(), prog_name="polymodal")
@click.pass_context
def cli(ctx: click.Context, debug: bool) -> None:
    """Multimodal PyTorch models from a spec file: images of any channel count and tables."""
    ctx.ensure_object(dict)
    ctx.obj["debug"] = debug


# The other commands, each module one concept; the training ones follow below.
for _command in (components.list_cmd, components.show, plugins.plugins, specs.validate,
                 specs.build, models.export_cmd, models.inspect, reference.docs, reference.schema,
                 plugins.manifest, plugins.install, plugins.uninstall, predicting.evaluate,
                 predicting.predict, serving.serve, predicting.explain):
    cli.add_command(_command)


def _tracking(command):
    """Where train, cv and tune record their runs besides their own files."""
    for option in reversed([
        click.option("--track", type=click.Choice(["mlflow", "tensorboard", "none"]),
                     help="Record the run(s) in MLflow or TensorBoard too (overrides the spec's"
                     " training.track; none: not even there). docs/tracking.md"),
        click.option("--track-uri", help="With --track: the MLflow tracking URI, or the"
                     " TensorBoard log folder (default: a local store beside the run folder)."),
        click.option("--experiment", help="With --track mlflow: the experiment (default: the"
                     " spec's name)."),
    ]):
        command = option(command)
    return command


def _track(track: str | None, uri: str | None, experiment: str | None) -> Any:
    """``train``'s ``track`` from the command line's options (None: the spec's)."""
    from ._training.tracking import TrackingError

    if track is None:
        if uri is not None or experiment is not None:
            raise TrackingError(f"{'--track-uri' if uri is not None else '--experiment'} needs"
                                " --track mlflow (or tensorboard)")
        return None
    if track == "none":
        if uri is not None or experiment is not None:
            raise TrackingError("--track none records nowhere: leave out --track-uri and"
                                " --experiment")
        return "none"
    if track == "tensorboard" and experiment is not None:
        raise TrackingError("--experiment is an option of --track mlflow (TensorBoard has no"
                            " experiments: give --track-uri a log folder of its own)")
    return {"to": track, "uri": uri, "experiment": experiment}


def _tracking_lines(lines: list[str], log: Any) -> None:
    """Where the runs were recorded and what was not, on stderr where progress lines (which
    said it already) were off."""
    if log is None:
        for line in lines:
            click.echo(line, err=True)


def _human(as_json: bool, quiet: bool):
    """Where progress lines go: stderr, or nowhere for --quiet and --json."""
    if quiet or as_json:
        return None
    return lambda line: click.echo(line, err=True)


@cli.command()
@click.argument("spec_path", metavar="SPEC", type=click.Path(dir_okay=False))
@click.option("--data", required=True, help="Training table (.csv, .tsv, .parquet).")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False),
              help="Model file to write: the best epoch, with its fitted preprocessing.")
@click.option("--val", "val_data", help="Validation table (default: hold out --val-fraction).")
@click.option("--val-fraction", type=float, help="Fraction of rows held out for validation"
              " (overrides training.val_fraction).")
@click.option("--group-by", help="Keep each group of this column on one side of the split.")
@override_options(("epochs", "batch_size", "lr", "seed", "device", "workers", "precision",
                   "channels_last"))
@click.option("--on-bad-row", type=_BAD_ROW, default="fail", show_default=True,
              help="A row with a bad value stops the run, or is left out and reported.")
@click.option("--run-dir", type=click.Path(file_okay=False),
              help="Logs, plot and checkpoint (default: <output stem>.run beside the output).")
@click.option("--resume", is_flag=True, help="Continue the run in --run-dir from its checkpoint.")
@click.option("--quiet", is_flag=True, help="No progress bar or epoch lines: the final summary"
              " only.")
@click.option("--json", "as_json", is_flag=True, help="Print the run's summary as JSON only.")
@_tracking
def train(spec_path: str, data: str, output: str, val_data: str | None, val_fraction: float | None,
          group_by: str | None, on_bad_row: str, run_dir: str | None, resume: bool, quiet: bool,
          as_json: bool, track: str | None, track_uri: str | None, experiment: str | None,
          **training: Any) -> None:
    """Train the model SPEC describes on a table; save the best epoch to -o."""
    from ._errors import SpecError
    from ._files import refuse_overwriting_inputs
    from ._training.engine import default_run_dir, final_table, train_with
    from ._training.report import json_safe
    from ._training.settings import RunSettings

    refuse_overwriting_inputs(output, {"the spec": spec_path})
    log = _human(as_json, quiet)
    if log is not None and not resume and Path(output).is_file():
        log = _said_first(log, f"note: {output} exists: this run replaces it once its first"
                          " epoch ends, and its run folder's logs and checkpoint (-o another"
                          " file keeps them)")
    settings = RunSettings({**overrides(training), "val_fraction": val_fraction,
                            "group_by": group_by}, on_bad_row, output=output,
                           track=_track(track, track_uri, experiment), progress=log is not None)
    try:
        result = train_with(_load_spec(spec_path), data, settings, val=val_data, resume=resume,
                            run_dir=run_dir, log=log)
    except SpecError as exc:
        raise exc.with_source(spec_path) from None
    except KeyboardInterrupt:
        _say_resumable(Path(run_dir) if run_dir else default_run_dir(output))
        raise
    if not result.is_main:
        return  # one report per run: the other data-parallel processes stay silent
    if as_json:
        click.echo(json.dumps(json_safe(result.summary()), indent=2))
        return
    for line in result.report.lines():
        click.echo(line, err=True)
    _tracking_lines(result.tracking, log)
    click.echo(final_table(result))


def _said_first(log: Callable[[str], None], line: str) -> Callable[[str], None]:
    """``log``, saying ``line`` before its first line: a note for a run that gets as far as
    saying anything (past its output's lock), not for one refused before."""
    pending = [line]

    def say(text: str) -> None:
        while pending:
            log(pending.pop())
        log(text)

    return say


def _say_resumable(run_dir: Path) -> None:
    """After an interrupted ``train``: how to go on, where a finished epoch was kept."""
    from ._training.engine import CHECKPOINT

    if (run_dir / CHECKPOINT).is_file():
        click.echo(f"the checkpoint in {run_dir} holds the last finished epoch: the same command"
                   " with --resume continues from it", err=True)


def _overrides(command):
    """The training options cv and tune override for every spec (and trial)."""
    for option in reversed([
        override_options(("epochs", "batch_size", "seed", "device", "workers", "precision",
                          "channels_last"),
                         {"seed": " (it also draws the folds)"}),
        click.option("--on-bad-row", type=_BAD_ROW, default="fail", show_default=True,
                     help="A row with a bad value stops the run, or is left out and reported."),
        click.option("--keep-checkpoints", is_flag=True, help="Keep each fold's (trial's)"
                     " checkpoint; by default it is removed when the fold (trial) ends."),
        click.option("--quiet", is_flag=True, help="No progress lines: the summary only."),
        click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON only."),
    ]):
        command = option(command)
    return command


def _folding(command):
    """How cv and tune cut the table into folds."""
    for option in reversed([
        click.option("--group-by", help="Keep each group of this column in one fold (and on one"
                     " side of each fold's validation split)."),
        click.option("--fold-column", help="Column naming each row's fold (instead of drawing"
                     " them)."),
        click.option("--stratify", is_flag=True, help="Give each fold the same share of every"
                     " class of the first head's target."),
    ]):
        command = option(command)
    return command


@cli.command()
@click.argument("spec_path", metavar="SPEC", type=click.Path(dir_okay=False))
@click.option("--data", required=True, help="Table to cross-validate on (.csv, .tsv, .parquet).")
@click.option("--folds", type=int, help="Number of folds (default 5; with --fold-column, the"
              " column's).")
@_folding
@click.option("--compare", multiple=True, type=click.Path(dir_okay=False),
              help="Another spec to run on the same folds, compared fold by fold with SPEC"
              " (repeatable).")
@click.option("--explain", is_flag=True, help="Also explain each fold's model on its held-out"
              " fold: what each input contributes (absent, permuted), mean ± sd over folds.")
@click.option("-o", "--output", type=click.Path(file_okay=False),
              help="Folder for the report, predictions and fold models (default: <spec name>.cv).")
@_overrides
@_tracking
def cv(spec_path: str, data: str, folds: int | None, group_by: str | None,
       fold_column: str | None, stratify: bool, compare: tuple[str, ...], explain: bool,
       output: str | None, on_bad_row: str, keep_checkpoints: bool, quiet: bool, as_json: bool,
       track: str | None, track_uri: str | None, experiment: str | None, **training: Any) -> None:
    """Cross-validate SPEC: K models, each scored on the fold it did not see; mean ± sd of
    every head metric, and with --compare, other specs side by side on the same folds."""
    from ._training.cv import cross_validate
    from ._training.explain import DEFAULT_REPEATS
    from ._training.settings import FoldSettings, RunSettings

    log = _human(as_json, quiet)
    try:
        result = cross_validate(
            [spec_path, *compare], data, FoldSettings(folds, group_by, fold_column, stratify),
            RunSettings(overrides(training), on_bad_row, keep_checkpoints, output,
                        _track(track, track_uri, experiment)),
            explain=DEFAULT_REPEATS if explain else 0, log=log)
    except KeyboardInterrupt:
        click.echo("the folds that finished are kept, and a fold cut short keeps its last"
                   " finished epoch: the same command continues from them", err=True)
        raise
    if as_json:
        click.echo(json.dumps({**result.summary(), **({"tracking": result.tracking}
                                                      if result.tracking else {})}, indent=2))
        return
    _tracking_lines(result.tracking, log)
    click.echo(result.table())
    click.echo(f"\nreport: {result.output / 'report.json'}; out-of-fold predictions: "
               + ", ".join(str(s.predictions) for s in result.scores))


@cli.command()
@click.argument("spec_path", metavar="SPEC", type=click.Path(dir_okay=False))
@click.option("--data", required=True, help="Training table (.csv, .tsv, .parquet).")
@click.option("--trials", required=True, type=int, help="Finished trials the study should"
              " reach (rerunning continues it up to this number).")
@click.option("--folds", type=int, help="Score each trial by cross-validation over this many"
              " folds (the mean over the held-out folds) instead of one validation split.")
@_folding
@click.option("--storage", help="Optuna RDB URL of the study (default: sqlite:///<output>/study.db);"
              " processes given the same URL and --study share the study.")
@click.option("--study", "study_name", help="Name of the study (default: the spec's name).")
@click.option("--timeout", type=click.FloatRange(0, min_open=True),
              help="Start no trial after this many seconds.")
@click.option("-o", "--output", type=click.Path(file_okay=False),
              help="Run folder: best spec and model, trials.csv, plots (default: <spec name>.tune).")
@click.option("--no-pruning", is_flag=True, help="Let every trial run to the end.")
@click.option("--sampler-seed", type=int, help="Seed of Optuna's sampler (default: random).")
@click.option("--heartbeat", type=click.IntRange(1), default=60, show_default=True,
              help="Seconds between a running trial's signs of life in the storage; a trial"
              " silent for twice this is failed and retried.")
@_overrides
@_tracking
def tune(spec_path: str, data: str, trials: int, folds: int | None, group_by: str | None,
         fold_column: str | None, stratify: bool, storage: str | None, study_name: str | None,
         timeout: float | None, output: str | None, no_pruning: bool, sampler_seed: int | None,
         heartbeat: int, on_bad_row: str, keep_checkpoints: bool, quiet: bool, as_json: bool,
         track: str | None, track_uri: str | None, experiment: str | None,
         **training: Any) -> None:
    """Search the hyperparameters in SPEC's `search` section with Optuna; writes the best spec
    and its model."""
    from ._errors import SpecError
    from ._training.settings import FoldSettings, RunSettings
    from ._training.study import SearchSettings
    from ._training.tune import run_search

    log = _human(as_json, quiet)
    try:
        result = run_search(
            _load_spec(spec_path), data,
            SearchSettings(trials, storage, study_name, timeout, not no_pruning, sampler_seed,
                           heartbeat),
            FoldSettings(folds, group_by, fold_column, stratify),
            RunSettings(overrides(training), on_bad_row, keep_checkpoints, output,
                        _track(track, track_uri, experiment)), log=log)
    except SpecError as exc:
        raise exc.with_source(spec_path) from None
    except KeyboardInterrupt:
        click.echo("the study keeps the trials that finished (trials.csv has them): the same"
                   " command goes on to --trials", err=True)
        raise
    if not result.is_main:
        return  # under torchrun, the first process reports
    if not as_json:
        _tracking_lines(result.tracking, log)
    click.echo(json.dumps(result.summary(), indent=2) if as_json else result.text())


def main(argv: list[str] | None = None) -> int:
    try:
        result = cli.main(args=argv, prog_name="polymodal", standalone_mode=False)
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    except click.Abort:
        click.echo("aborted", err=True)
        return 1
    # Without standalone mode click returns ctx.exit()'s code as the result.
    return result if isinstance(result, int) else 0


if __name__ == "__main__":
    sys.exit(main())

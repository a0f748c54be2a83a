"""The ``polymodal`` command.

Bad input ends in one message on stderr and a non-zero exit; ``--debug`` shows the traceback.
Listing commands read static manifests and import neither torch nor any plugin.

Exit codes: 1 for every error of the input, a plugin included (a spec, a file, a table, a plugin
that refuses or fails); 2 for a wrong command line; 3 for a bug in polymodal itself.
"""

from __future__ import annotations

import errno
import json
import math
import os
import sys
from pathlib import Path
from typing import Any

import click

from ._errors import ModelFileError, PolymodalError
from ._manifest import KINDS

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


def _registry():
    from ._registry import get_registry

    return get_registry()


def _table(rows: list[list[str]], headers: list[str]) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(headers, *rows)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths)).rstrip()]
    lines += ["  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows]
    return "\n".join(lines)


@cli.command("list")
@click.option("--kind", type=click.Choice(KINDS), help="Only components of this kind.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def list_cmd(kind: str | None, as_json: bool) -> None:
    """Every available component: kind, type, plugin package, summary."""
    registry = _registry()
    records = registry.components(kind)
    if as_json:
        click.echo(json.dumps([
            {"kind": r.kind, "type": r.type, "id": r.canonical, "package": r.package,
             "version": r.version, "summary": r.summary}
            for r in records
        ], indent=2))
        return
    duplicates = registry.duplicates()
    rows = [[r.kind, r.canonical if (r.kind, r.type) in duplicates else r.type,
             f"{r.package} {r.version}", r.summary] for r in records]
    click.echo(_table(rows, ["KIND", "TYPE", "PACKAGE", "SUMMARY"]) if rows else "no components")
    failures = registry.failures()
    if failures:
        names = ", ".join(dict.fromkeys(f"{p.package} {p.version}" for p in failures))
        click.echo(f"\n{len(failures)} plugin(s) failed to load; see `polymodal plugins`"
                   f" ({names}).", err=True)


@cli.command()
@click.argument("kind", type=click.Choice(KINDS))
@click.argument("type_name", metavar="TYPE")
@click.option("--json", "as_json", is_flag=True, help="The config's JSON Schema.")
def show(kind: str, type_name: str, as_json: bool) -> None:
    """One component: its options with types, defaults and descriptions."""
    from ._components import SchemaWithDefaults
    from ._docs import option_rows

    registry = _registry()
    record = registry.resolve(kind, type_name)
    cls = registry.load(record)
    if as_json:
        click.echo(json.dumps(cls.Config.model_json_schema(schema_generator=SchemaWithDefaults),
                              indent=2))
        return
    click.echo(f"{kind} {record.canonical}  ({record.package} {record.version})")
    doc = (cls.__doc__ or "").strip()
    if doc:
        click.echo("")
        click.echo(_dedent(doc))
    rows = option_rows(cls.Config)
    click.echo("\nOptions:")
    if not rows:
        click.echo("  (none)")
    for row in rows:
        click.echo(f"  {row.name}: {row.type} = {row.default}{'  (required)' if row.required else ''}")
        if row.constraints:
            click.echo(f"      constraints: {row.constraints}")
        if row.description:
            click.echo(f"      {row.description}")


def _dedent(doc: str) -> str:
    import inspect

    return inspect.cleandoc(doc)


@cli.command()
@click.option("--available", is_flag=True, help="Also list known plugin packages to install.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def plugins(available: bool, as_json: bool) -> None:
    """Installed plugins, their versions and components, and any that failed to load and why.

    Third-party plugins listed by a static manifest are imported here, so that one that fails
    to import or disagrees with its manifest shows as failed."""
    registry = _registry()
    registry.verify()
    data = [
        {"entry_point": p.name, "package": p.package, "version": p.version, "module": p.value,
         "status": p.status, "error": p.error,
         "components": [f"{c.kind}:{c.type}" for c in p.components]}
        for p in registry.plugins
    ]
    installed = {p.package for p in registry.plugins}
    extras = [
        {"package": e.package, "requirement": e.requirement, "summary": e.summary,
         "components": [f"{k}:{t}" for k, t in e.components], "installed": e.package in installed}
        for e in registry.catalog.extras
    ]
    if as_json:
        click.echo(json.dumps({"plugins": data, **({"available": extras} if available else {})},
                              indent=2))
        return
    for p in data:
        state = "" if p["status"] in ("loaded", "lazy") else f"  [{p['status'].upper()}]"
        click.echo(f"{p['package']} {p['version']}  entry point {p['entry_point']!r} -> {p['module']}{state}")
        if p["components"]:
            click.echo(f"    provides: {', '.join(p['components'])}")
        if p["error"]:
            click.echo(f"    reason: {p['error']}")
    for (kind, type_name), recs in registry.duplicates().items():
        click.echo(f"\nconflict: {kind} {type_name!r} is provided by "
                   + " and ".join(f"{r.package} {r.version} (entry point {r.plugin!r})" for r in recs)
                   + "; the short name is ambiguous, specs must write "
                   + " or ".join(repr(r.canonical) for r in recs))
    if available:
        click.echo("\nAvailable plugin packages:")
        for e in extras:
            mark = " (installed)" if e["installed"] else ""
            click.echo(f"  {e['package']}{mark}: {e['summary']}")
            click.echo(f"      provides {', '.join(e['components'])};"
                       f" install: polymodal install {e['package']}")


def _load_spec(path: str):
    from ._spec import load_spec

    return load_spec(path)


@cli.command()
@click.argument("spec_path", metavar="SPEC", type=click.Path(dir_okay=False))
@click.option("--diagram", is_flag=True, help="Print the model as a Mermaid flowchart instead.")
def validate(spec_path: str, diagram: bool) -> None:
    """Check a spec, connections included; exit 0 or print what is wrong."""
    from ._assembly import plan
    from ._errors import SpecError

    spec = _load_spec(spec_path)
    try:
        the_plan = plan(spec)
    except SpecError as exc:
        raise exc.with_source(spec_path) from None
    if diagram:
        from ._diagram import mermaid

        click.echo(mermaid(spec), nl=False)
        return
    from ._assembly import measured

    try:
        footprint = measured(spec)
    except SpecError as exc:
        raise exc.with_source(spec_path) from None
    click.echo(f"{spec_path}: ok ({len(spec.inputs)} input(s), {len(spec.heads)} head(s))")
    click.echo(f"  model: {footprint if isinstance(footprint, str) else footprint.describe()}")
    for name, signal in the_plan.features.items():
        click.echo(f"  input {name}: {signal.describe()}")
    for inputs, heads in the_plan.groups.items():
        click.echo(f"  heads {', '.join(heads)} <- {' + '.join(inputs)}: {the_plan.fused[inputs].describe()}")


@cli.command()
@click.argument("spec_path", metavar="SPEC", type=click.Path(dir_okay=False))
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False),
              help="Model file to write (.safetensors).")
@click.option("--no-pretrained", is_flag=True, help="Skip loading pretrained weights.")
def build(spec_path: str, output: str, no_pretrained: bool) -> None:
    """Assemble the model a spec describes and save it as one model file."""
    from ._assembly import build as build_model
    from ._errors import SpecError
    from ._files import output_lock, refuse_overwriting_inputs
    from ._modelfile import save

    refuse_overwriting_inputs(output, {"the spec": spec_path})
    spec = _load_spec(spec_path)
    try:
        model = build_model(spec, pretrained=not no_pretrained)
    except SpecError as exc:
        raise exc.with_source(spec_path) from None
    with output_lock(output):  # a running train's model file is not replaced under it
        save(model, output)
    total = sum(p.numel() for p in model.parameters())
    click.echo(f"wrote {output} ({total:,} parameters)")


@cli.command("export")
@click.argument("model_path", metavar="MODEL", type=click.Path(dir_okay=False))
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False),
              help="File to write (.onnx or .pt2).")
@click.option("--format", "fmt", type=click.Choice(["onnx", "torch-export"]),
              help="onnx (ONNX Runtime) or torch-export (a .pt2 ExportedProgram); default: from"
              " the output's suffix.")
@click.option("--no-check", is_flag=True, help="Skip running the file on a random batch against"
              " the model.")
@click.option("--quantize", type=click.Choice(["int8"]), help="An int8 ONNX file for CPU serving"
              " (ONNX Runtime's quantization: dynamic, or static with --calibration).")
@click.option("--calibration", help="Table of rows to calibrate a static int8 quantization"
              " with (read through the model's codecs; the first 512 rows).")
def export_cmd(model_path: str, output: str, fmt: str | None, no_check: bool,
               quantize: str | None, calibration: str | None) -> None:
    """A deployable model: ONNX or torch.export, with the fitted preprocessing in its metadata."""
    from ._export import export

    result = export(model_path, output, format=fmt, check=not no_check, quantize=quantize,
                    calibration=calibration)
    opset = result.layout.exporter.get("opset")
    click.echo(f"wrote {output} ({result.format}{f', opset {opset}' if opset else ''}"
               f"{f', {quantize}' if quantize else ''})")
    inputs = [f"{i.name} {i.dtype} [{', '.join(map(str, i.shape))}]"
              + (" (optional: marks missing inputs)" if i.present else "")
              for i in result.layout.inputs]
    click.echo("  inputs: " + "; ".join(inputs))
    click.echo("  outputs: " + "; ".join(f"{h} [{', '.join(map(str, shape))}]"
                                        for h, shape in result.layout.outputs.items()))
    if result.difference is not None:
        click.echo(f"  checked with {result.checked_with} on a random batch: outputs within"
                   f" {result.difference:.2g} of the model's")
    elif not no_check:
        click.echo("  not checked: ONNX Runtime is not installed (pip install 'polymodal[onnx]')")


def parameter_counts(model) -> list[tuple[str, int, int]]:
    """(part, parameters, trainable) for each component of a model, shared ones once."""
    rows = []
    for group in ("adapters", "input_backbones", "backbones", "fusions", "heads"):
        for name, module in getattr(model, group).items():
            params = list(module.parameters())
            rows.append((f"{group}.{name}", sum(p.numel() for p in params),
                         sum(p.numel() for p in params if p.requires_grad)))
    return rows


@cli.command()
@click.argument("model_path", metavar="FILE", type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--diagram", is_flag=True, help="Print the model as a Mermaid flowchart instead.")
def inspect(model_path: str, as_json: bool, diagram: bool) -> None:
    """A saved model: its spec, versions, and parameter counts per part."""
    from ._modelfile import load, read_metadata, spec_of, versions_of

    metadata = read_metadata(model_path)
    if diagram:
        from ._diagram import mermaid

        click.echo(mermaid(spec_of(model_path)), nl=False)
        return
    versions = versions_of(metadata)
    try:
        model = load(model_path)
    except ModelFileError as exc:
        # What the file says of itself needs no plugin: show it, then why it cannot be loaded.
        _inspect_unloadable(model_path, metadata, versions, as_json)
        raise exc from None
    counts = parameter_counts(model)
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    spec = model.spec.to_dict()
    fitted = model.fitted_state
    if as_json:
        click.echo(json.dumps({
            "file": model_path, "format": metadata["polymodal.format"], "versions": versions,
            "spec": spec, "parameters": {"total": total, "trainable": trainable,
                                         "parts": {n: {"total": t, "trainable": tr} for n, t, tr in counts}},
            "fitted": fitted,
        }, indent=2))
        return
    import yaml

    click.echo(f"{model_path}: polymodal model file, format {metadata['polymodal.format']}")
    click.echo("versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()))
    click.echo("\nspec:")
    click.echo("  " + yaml.safe_dump(spec, sort_keys=False).rstrip().replace("\n", "\n  "))
    click.echo("\nparameters:")
    rows = [[n, f"{t:,}", f"{tr:,}" if tr == t else f"{tr:,} ({t - tr:,} frozen)"] for n, t, tr in counts]
    rows.append(["total", f"{total:,}", f"{trainable:,}"])
    click.echo(_table(rows, ["PART", "PARAMETERS", "TRAINABLE"]))
    if fitted:
        click.echo("\nfitted on the training table (what predict applies to raw rows):")
        for section, parts in fitted.items():
            for name, state in parts.items():
                for key, value in state.items():
                    click.echo(f"  {section}.{name}.{key}: {_brief(value)}")


def _inspect_unloadable(model_path: str, metadata: dict[str, str], versions: dict[str, str],
                        as_json: bool) -> None:
    from safetensors import safe_open

    from ._modelfile import embedded_spec_data

    with safe_open(model_path, framework="pt") as handle:
        sizes: dict[str, int] = {}
        for key in handle.keys():
            part = ".".join(key.split(".")[:2])
            sizes[part] = sizes.get(part, 0) + math.prod(handle.get_slice(key).get_shape())
    try:
        spec: Any = embedded_spec_data(Path(model_path), metadata)
    except ModelFileError:
        spec = None
    if as_json:
        click.echo(json.dumps({"file": model_path, "format": metadata.get("polymodal.format"),
                               "versions": versions, "spec": spec, "stored_values": sizes,
                               "loadable": False}, indent=2))
        return
    import yaml

    click.echo(f"{model_path}: polymodal model file, format {metadata.get('polymodal.format')}"
               " (it cannot be loaded here; see below)")
    click.echo("versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()))
    if spec is not None:
        click.echo("\nspec (as stored):")
        click.echo("  " + yaml.safe_dump(spec, sort_keys=False).rstrip().replace("\n", "\n  "))
    click.echo("\nstored values (parameters and buffers):")
    rows = [[part, f"{count:,}"] for part, count in sizes.items()]
    rows.append(["total", f"{sum(sizes.values()):,}"])
    click.echo(_table(rows, ["PART", "VALUES"]))


def _brief(value: Any, items: int = 8) -> str:
    """A fitted value on one line: lists by their length and first items, numbers rounded."""
    if isinstance(value, dict):
        return "; ".join(f"{k} {_brief(v, items)}" for k, v in value.items())
    if isinstance(value, list):
        shown = ", ".join(_brief(v, items) for v in value[:items])
        return f"({len(value)}) {shown}" + (", ..." if len(value) > items else "")
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


@cli.command()
@click.option("-o", "--output", required=True, type=click.Path(file_okay=False),
              help="Directory for the reference (index.md and one page a component).")
@click.option("--package", "packages", multiple=True,
              help="Only components of this package (repeatable); default: every installed one.")
def docs(output: str, packages: tuple[str, ...]) -> None:
    """Write the component reference (Markdown) of every installed component."""
    from ._docs import write_reference

    written = write_reference(Path(output), packages=set(packages) if packages else None)
    click.echo(f"wrote {len(written)} page(s) to {output}")


@cli.command()
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="Write to a file.")
def schema(output: str | None) -> None:
    """JSON Schema of the spec, covering every installed component (for editors)."""
    from ._registry import get_registry
    from ._spec import spec_json_schema

    registry = get_registry()
    text = json.dumps(spec_json_schema(registry), indent=2)
    if output:
        from ._files import write_text

        write_text(output, text + "\n")
        click.echo(f"wrote {output}")
    else:
        click.echo(text)
    failures = registry.failures()
    if failures:  # their components are missing from the schema
        click.echo(f"{len(failures)} plugin(s) failed to load and are not in the schema; see"
                   " `polymodal plugins`.", err=True)


@cli.command()
@click.argument("distribution")
@click.option("-o", "--output", type=click.Path(dir_okay=False),
              help="Write to this file, keeping its leading comments and [[extra]] tables.")
def manifest(distribution: str, output: str | None) -> None:
    """The static manifest (polymodal.toml) of an installed plugin distribution.

    It imports the distribution's plugins and lists what they provide, so that `polymodal list`
    can read the file instead of importing them. `polymodal manifest polymodal -o registry.toml`
    regenerates the built-in entries of polymodal's catalog."""
    from ._files import write_text
    from ._manifest import merge_plugins, render_plugins
    from ._registry import plugin_entries

    text = render_plugins(*plugin_entries(distribution))
    if not output:
        click.echo(text, nl=False)
        return
    path = Path(output)
    existing = path.read_text(encoding="utf-8") if path.is_file() else ""
    write_text(path, merge_plugins(existing, text))
    click.echo(f"wrote {output}")


@cli.command(context_settings={"ignore_unknown_options": True})
@click.argument("name")
@click.argument("pip_args", nargs=-1, type=click.UNPROCESSED)
def install(name: str, pip_args: tuple[str, ...]) -> None:
    """Install a plugin package into polymodal's environment (runs pip).

    NAME is a package from `polymodal plugins --available`, a requirement of one
    (`polymodal-signal>=0.2`), or a local wheel, sdist or project directory. Further arguments go
    to pip (e.g. `--no-index --find-links DIR`)."""
    from ._install import install_plugin

    for line in install_plugin(name, list(pip_args)):
        click.echo(line)


@cli.command()
@click.argument("name")
def uninstall(name: str) -> None:
    """Uninstall a plugin package from polymodal's environment (runs pip)."""
    from ._install import uninstall_plugin

    for line in uninstall_plugin(name):
        click.echo(line)


_BAD_ROW = click.Choice(["fail", "skip"])


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
@click.option("--epochs", type=int, help="Override training.epochs.")
@click.option("--batch-size", type=int, help="Override training.batch_size.")
@click.option("--lr", type=float, help="Override training.lr.")
@click.option("--seed", type=int, help="Override training.seed.")
@click.option("--device", help="Override training.device (auto, cpu, cuda, cuda:N).")
@click.option("--workers", type=int, help="Override training.workers.")
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
          group_by: str | None, epochs: int | None, batch_size: int | None, lr: float | None,
          seed: int | None, device: str | None, workers: int | None, on_bad_row: str,
          run_dir: str | None, resume: bool, quiet: bool, as_json: bool, track: str | None,
          track_uri: str | None, experiment: str | None) -> None:
    """Train the model SPEC describes on a table; save the best epoch to -o."""
    from ._errors import SpecError
    from ._files import refuse_overwriting_inputs
    from ._training.engine import final_table, train as run_training
    from ._training.report import json_safe

    refuse_overwriting_inputs(output, {"the spec": spec_path})
    overrides = {"epochs": epochs, "batch_size": batch_size, "lr": lr, "seed": seed,
                 "device": device, "workers": workers}
    log = _human(as_json, quiet)
    tracked = _track(track, track_uri, experiment)
    try:
        result = run_training(
            _load_spec(spec_path), data, output, val=val_data, val_fraction=val_fraction,
            group_by=group_by, on_bad_row=on_bad_row, resume=resume, run_dir=run_dir,
            options=overrides, progress=log is not None, log=log, track=tracked)
    except SpecError as exc:
        raise exc.with_source(spec_path) from None
    if not result.is_main:
        return  # one report per run: the other data-parallel processes stay silent
    if as_json:
        click.echo(json.dumps(json_safe(result.summary()), indent=2))
        return
    for line in result.report.lines():
        click.echo(line, err=True)
    _tracking_lines(result.tracking, log)
    click.echo(final_table(result))


@cli.command()
@click.argument("model_path", metavar="MODEL", type=click.Path(dir_okay=False))
@click.option("--data", required=True, help="Table with the target columns.")
@click.option("--batch-size", type=click.IntRange(1), default=256, show_default=True)
@click.option("--device", default="cpu", show_default=True)
@click.option("--on-bad-row", type=_BAD_ROW, default="fail", show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def evaluate(model_path: str, data: str, batch_size: int, device: str, on_bad_row: str,
             as_json: bool) -> None:
    """Metrics of each head of a trained model on a table, and confusion matrices."""
    from ._modelfile import load
    from ._training.inference import RowReport, evaluate as run_evaluation, render_evaluation
    from ._training.report import json_safe

    model = load(model_path)
    result = run_evaluation(model, data, batch_size=batch_size, on_bad_row=on_bad_row,
                            device=device)
    if as_json:
        click.echo(json.dumps(json_safe(result), indent=2))
        return
    report = RowReport.from_json(result)
    for line in report.lines():
        click.echo(line, err=True)
    click.echo(render_evaluation(model, result))


@cli.command()
@click.argument("model_path", metavar="MODEL", type=click.Path(dir_okay=False))
@click.option("--data", required=True, help="Table of rows to predict (targets not needed).")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False),
              help="CSV file of predictions (written atomically).")
@click.option("--keep", multiple=True, help="Copy this column into the output (repeatable); one named like a"
              " prediction is written as NAME_kept.")
@click.option("--batch-size", type=click.IntRange(1), default=256, show_default=True)
@click.option("--device", default="cpu", show_default=True)
@click.option("--on-bad-row", type=_BAD_ROW, default="fail", show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary.")
def predict(model_path: str, data: str, output: str, keep: tuple[str, ...], batch_size: int,
            device: str, on_bad_row: str, as_json: bool) -> None:
    """Predict every row of a table: class names and probabilities, values; streamed.

    MODEL is a model file or an ONNX file that `polymodal export` wrote (run by ONNX Runtime)."""
    from ._training.inference import RowReport, predict as run_prediction

    result = run_prediction(model_path, data, output, batch_size=batch_size,
                            on_bad_row=on_bad_row, keep=keep, device=device)
    if as_json:
        click.echo(json.dumps(result, indent=2))
        return
    report = RowReport.from_json(result)
    for line in report.lines():
        click.echo(line, err=True)
    click.echo(f"wrote {result['rows']} prediction(s) to {output}")


@cli.command()
@click.argument("model_path", metavar="MODEL", type=click.Path(dir_okay=False))
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on (0.0.0.0: every interface).")
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True)
@click.option("--device", default="cpu", show_default=True)
@click.option("--max-batch", type=click.IntRange(1), default=64, show_default=True,
              help="Most rows predicted in one batch (a larger request runs in parts).")
@click.option("--max-wait-ms", type=click.FloatRange(0), default=5.0, show_default=True,
              help="Longest a batch waits for requests being read to join it.")
@click.option("--max-queue", type=click.IntRange(1), default=1024, show_default=True,
              help="Rows that may wait; a request beyond them is answered 503 with Retry-After.")
@click.option("--workers", type=click.IntRange(1), default=1, show_default=True,
              help="Processes, each with its own copy of the model.")
@click.option("--threads", type=click.IntRange(1), help="Torch threads per worker (default:"
              " every core, shared among the workers).")
@click.option("--data-root", type=click.Path(file_okay=False),
              help="Folder a request may name image paths in (else only sent files are read).")
@click.option("--max-body-mb", type=click.FloatRange(0.001), default=32.0, show_default=True)
@click.option("--max-rows", type=click.IntRange(1), default=1024, show_default=True,
              help="Most rows in one request.")
@click.option("--drain-timeout", type=click.FloatRange(0), default=30.0, show_default=True,
              help="Seconds SIGTERM waits for the requests in flight.")
def serve(model_path: str, host: str, port: int, device: str, max_batch: int, max_wait_ms: float,
          max_queue: int, workers: int, threads: int | None, data_root: str | None,
          max_body_mb: float, max_rows: int, drain_timeout: float) -> None:
    """Serve a model file or ONNX export over HTTP: POST /v1/predict, batched (pip install
    'polymodal[serve]'); see docs/serve.md."""
    from ._serve.limits import Limits
    from ._serve.options import ServeOptions
    from ._serve.server import serve as run_server

    limits = Limits(max_body_bytes=int(max_body_mb * 2**20), max_rows=max_rows)
    run_server(ServeOptions(model_path, host, port, device, max_batch, max_wait_ms, max_queue,
                            workers, data_root, drain_timeout, threads, limits),
               announce=lambda line: click.echo(line, err=True))


@cli.command()
@click.argument("model_path", metavar="MODEL", type=click.Path(dir_okay=False))
@click.option("--data", required=True, help="Table with the target columns.")
@click.option("-o", "--output", type=click.Path(file_okay=False),
              help="Folder for report.txt, report.json, importance.csv, rows.csv and a chart per"
              " head (default: <model stem>.explain beside the model).")
@click.option("--rows", "rows", default="0", show_default=True,
              help="Rows to show per row: a count (the first N) or row numbers (3,17,42).")
@click.option("--keep", multiple=True, help="Show this column beside each row (repeatable).")
@click.option("--repeats", type=int, default=5, show_default=True,
              help="Shuffles of each input (and part) across rows.")
@click.option("--no-parts", is_flag=True, help="Inputs only: no column or band one at a time.")
@click.option("--attribute", type=click.Choice(["integrated_gradients", "saliency",
                                                "input_x_gradient"]),
              help="Also draw what in each chosen row's images moved each head's output, with this"
              " Captum method (pip install 'polymodal[explain]').")
@click.option("--max-rows", type=click.IntRange(1), default=5000, show_default=True,
              help="Rows kept in memory to explain; a larger table is sampled with the seed.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--batch-size", type=click.IntRange(1), default=256, show_default=True)
@click.option("--device", default="cpu", show_default=True)
@click.option("--on-bad-row", type=_BAD_ROW, default="fail", show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print report.json only.")
def explain(model_path: str, data: str, output: str | None, rows: str, keep: tuple[str, ...],
            repeats: int, no_parts: bool, attribute: str | None, max_rows: int, seed: int,
            batch_size: int, device: str, on_bad_row: str, as_json: bool) -> None:
    """What each input, column and band of a trained model contributes, per head and metric."""
    from ._training.explain import explain as run_explain
    from ._training.inference import RowReport

    chosen: int | list[int] = _row_choice(rows)
    out = output or str(Path(model_path).with_name(Path(model_path).stem + ".explain"))
    log = _human(as_json, False)
    result = run_explain(model_path, data, out, repeats=repeats, rows=chosen, keep=keep,
                         seed=seed, batch_size=batch_size, device=device, on_bad_row=on_bad_row,
                         max_rows=max_rows, parts=not no_parts, attribute=attribute,
                         progress=log is not None, log=log)
    if as_json:
        click.echo(json.dumps(result.summary(), indent=2))
        return
    for line in RowReport.from_json(result.report.to_json()).lines():
        click.echo(line, err=True)
    click.echo(result.text())
    click.echo(f"\nwrote {out}")


def _row_choice(text: str) -> int | list[int]:
    """``--rows``: a count, or row numbers separated by commas."""
    from ._errors import DataError

    try:
        numbers = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise DataError(f"--rows {text!r}: give a count (10) or row numbers (3,17,42)") from None
    if any(n < 1 for n in numbers) and text.strip() != "0":
        raise DataError(f"--rows {text!r}: rows are numbered from 1, and a count is at least 1"
                        " (0, the default: no row)")
    if "," not in text and len(numbers) == 1:
        return numbers[0]
    return numbers


def _overrides(command):
    """The training options cv and tune override for every spec (and trial)."""
    for option in reversed([
        click.option("--epochs", type=int, help="Override training.epochs."),
        click.option("--batch-size", type=int, help="Override training.batch_size."),
        click.option("--seed", type=int, help="Override training.seed (it also draws the folds)."),
        click.option("--device", help="Override training.device (auto, cpu, cuda, cuda:N)."),
        click.option("--workers", type=int, help="Override training.workers."),
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
       output: str | None, epochs: int | None, batch_size: int | None, seed: int | None,
       device: str | None, workers: int | None, on_bad_row: str, keep_checkpoints: bool,
       quiet: bool, as_json: bool, track: str | None, track_uri: str | None,
       experiment: str | None) -> None:
    """Cross-validate SPEC: K models, each scored on the fold it did not see; mean ± sd of
    every head metric, and with --compare, other specs side by side on the same folds."""
    from ._training.cv import cv as run_cv
    from ._training.explain import DEFAULT_REPEATS

    overrides = {"epochs": epochs, "batch_size": batch_size, "seed": seed, "device": device,
                 "workers": workers}
    log = _human(as_json, quiet)
    result = run_cv(spec_path, data, folds=folds, group_by=group_by, fold_column=fold_column,
                    stratify=stratify, compare=compare, output=output, options=overrides,
                    on_bad_row=on_bad_row, keep_checkpoints=keep_checkpoints,
                    explain=DEFAULT_REPEATS if explain else 0, log=log,
                    track=_track(track, track_uri, experiment))
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
         heartbeat: int, epochs: int | None, batch_size: int | None, seed: int | None,
         device: str | None, workers: int | None, on_bad_row: str, keep_checkpoints: bool,
         quiet: bool, as_json: bool, track: str | None, track_uri: str | None,
         experiment: str | None) -> None:
    """Search the hyperparameters in SPEC's `search` section with Optuna; writes the best spec
    and its model."""
    from ._errors import SpecError
    from ._training.tune import tune as run_tune

    overrides = {"epochs": epochs, "batch_size": batch_size, "seed": seed, "device": device,
                 "workers": workers}
    log = _human(as_json, quiet)
    try:
        result = run_tune(
            _load_spec(spec_path), data, trials=trials, folds=folds, group_by=group_by,
            fold_column=fold_column, stratify=stratify, storage=storage, study=study_name,
            timeout=timeout, output=output, options=overrides, pruning=not no_pruning,
            sampler_seed=sampler_seed, heartbeat=heartbeat, on_bad_row=on_bad_row,
            keep_checkpoints=keep_checkpoints, log=log, track=_track(track, track_uri, experiment))
    except SpecError as exc:
        raise exc.with_source(spec_path) from None
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

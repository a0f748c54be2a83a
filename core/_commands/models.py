"""Commands that take a saved model file: ``export`` it for deployment and ``inspect`` it."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import click

from .._errors import ModelFileError
from .common import table


@click.command("export")
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
    from .._export import export

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
    if result.quantization:
        int8, candidates = result.quantization["int8_nodes"]
        click.echo(f"  int8 ({result.quantization['mode']}): {int8} of {candidates} convolutions"
                   " and matrix products; the rest stay fp32 (docs/deploy.md says which)")
    if result.difference is not None:
        rounding = ("; int8 rounding moves raw outputs, so judge the file by its predictions on"
                    " held-out rows (polymodal predict FILE.onnx), as docs/deploy.md does"
                    if result.quantization else "")
        click.echo(f"  checked with {result.checked_with} on a random batch: outputs within"
                   f" {result.difference:.2g} of the model's{rounding}")
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


@click.command()
@click.argument("model_path", metavar="FILE", type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--diagram", is_flag=True, help="Print the model as a Mermaid flowchart instead.")
def inspect(model_path: str, as_json: bool, diagram: bool) -> None:
    """A saved model: its spec, versions, and parameter counts per part."""
    from .._modelfile import load, read_metadata, spec_of, versions_of

    metadata = read_metadata(model_path)
    if diagram:
        from .._diagram import mermaid

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
    expects = _expects(model)
    if as_json:
        click.echo(json.dumps({
            "file": model_path, "format": metadata["polymodal.format"], "versions": versions,
            "spec": spec, "parameters": {"total": total, "trainable": trainable,
                                         "parts": {n: {"total": t, "trainable": tr} for n, t, tr in counts}},
            "fitted": fitted, "expects": expects,
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
    click.echo(table(rows, ["PART", "PARAMETERS", "TRAINABLE"]))
    if fitted:
        click.echo("\nfitted on the training table (what predict applies to raw rows):")
        for section, parts in fitted.items():
            for name, state in parts.items():
                for key, value in state.items():
                    click.echo(f"  {section}.{name}.{key}: {_brief(value)}")
    if expects:
        click.echo("\nwhat a row's value must be:")
        for name, said in expects.items():
            click.echo(f"  {name}: " + ", ".join(f"{k} {_brief(v)}" for k, v in said.items()))


def _expects(model: Any) -> dict[str, dict[str, Any]]:
    """What each input's codec says a row's value must be (an image's channels and size)."""
    from .._data.binding import Binding

    if not model.fitted_state:
        return {}
    binding = Binding(model.spec)
    found = {b.name: b.codec.expects(model.fitted_state["inputs"].get(b.name, {}))
             for b in binding.inputs}
    return {name: said for name, said in found.items() if said}


def _inspect_unloadable(model_path: str, metadata: dict[str, str], versions: dict[str, str],
                        as_json: bool) -> None:
    from safetensors import safe_open

    from .._modelfile import embedded_spec_data

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
    click.echo(table(rows, ["PART", "VALUES"]))


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

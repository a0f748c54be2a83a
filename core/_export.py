"""Exporting a model for deployment without polymodal: ONNX and torch.export.

The exported program takes flat, named tensors: one per model input (a tabular input: one per
column, ``report.make``), in the form each adapter states (:meth:`ModalityAdapter.export_form`),
plus, where the spec has a fusion, a boolean mask per input (``present.photo``) that marks the
samples whose input is missing. It returns one tensor per head, named after the head. The batch
size is free; every other size is the one the model was trained on.

The file carries what is not tensor math, in the form of the model file's metadata (the spec,
versions, the fitted vocabularies and statistics, class names), plus ``polymodal.export``: the
exported inputs and outputs in order, with their dtypes and shapes. ONNX files hold it in
``metadata_props``, ``.pt2`` files (``torch.export.save``) in their extra files.

onnx and onnxscript are imported only when exporting to ONNX; onnxruntime only to check an
ONNX export (and to predict from one, in :mod:`polymodal._training.onnx_model`).
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import torch
from torch import nn

from ._assembly import PolymodalModel
from ._components import ModalityAdapter
from ._errors import ExportError, PolymodalError, exception_summary, silenced
from ._export_layout import BATCH, KEY_EXPORT, ExportedInput, Layout
from ._files import atomic_write, refuse_overwriting_inputs
from ._output_lock import output_lock
from ._registry import Registry

#: The file formats and their usual suffix.
FORMATS = {"onnx": ".onnx", "torch-export": ".pt2"}
#: ONNX opset of exported files: the exporter's own opset, run by every ONNX Runtime since 1.14
#: (including its web and mobile builds), so no version conversion can change the graph.
OPSET = 18
#: Batch size of the example traced: 1 would fix the batch size to 1.
EXAMPLE_BATCH = 2
#: Largest difference between the model's outputs and the export's accepted when checking it.
TOLERANCE = 1e-4
PRESENT_PREFIX = "present."


@dataclass(frozen=True)
class ExportResult:
    """What :func:`export` wrote: the file, its format and layout, and how closely the file's
    outputs matched the model's on a random batch (None when not checked)."""

    path: Path
    format: str
    layout: Layout
    difference: float | None
    checked_with: str | None
    #: For an int8 file, what was done (as kept in its metadata): mode, int8 node counts...
    quantization: Mapping[str, Any] | None = None


# -- the exported module ------------------------------------------------------------------------


class FlatModel(nn.Module):
    """The model with flat tensor inputs and a tuple of head outputs: what is exported."""

    def __init__(self, model: PolymodalModel, inputs: Sequence[ExportedInput]):
        super().__init__()
        self.model = model
        self.inputs = list(inputs)
        self.heads = list(model.spec.heads)  # every head: the export takes every input

    def forward(self, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        batch: dict[str, Any] = {}
        present: dict[str, torch.Tensor] = {}
        for described, tensor in zip(self.inputs, tensors):
            if described.present:
                present[described.input] = tensor
            elif described.key is None:
                batch[described.input] = tensor
            else:
                batch.setdefault(described.input, {})[described.key] = tensor
        outputs = self.model(batch, present or None)
        return tuple(outputs[head] for head in self.heads)


def _flat_examples(model: PolymodalModel, state: Mapping[str, Any] | None,
                   batch_size: int) -> tuple[list[ExportedInput], list[torch.Tensor]]:
    """What the exported model takes, and a random example of it with ``batch_size`` samples."""
    described: list[ExportedInput] = []
    tensors: list[torch.Tensor] = []

    def add(name: str, input_name: str, key: str | None, value: Any, present: bool = False) -> None:
        if not isinstance(value, torch.Tensor):
            raise ExportError(
                f"inputs.{input_name}.adapter: its export_example gives {type(value).__name__}"
                f"{f' for {key!r}' if key else ''}; an export takes tensors, or a dict of them")
        shape: list[int | str] = [BATCH, *value.shape[1:]]
        described.append(ExportedInput(name, input_name, key, _dtype_name(value.dtype), shape,
                                       present))
        tensors.append(value)

    for name, adapter in model.adapters.items():
        fitted = (state or {}).get("inputs", {}).get(name)
        value = cast(ModalityAdapter, adapter).export_example(batch_size, fitted)
        if isinstance(value, Mapping):
            for key, tensor in value.items():
                add(f"{name}.{key}", name, str(key), tensor)
        else:
            add(name, name, None, value)
    if model.spec.fusion is not None:
        for name in model.adapters:
            add(PRESENT_PREFIX + name, name, None, torch.ones(batch_size, dtype=torch.bool), True)
    names = [d.name for d in described]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ExportError(f"two exported inputs would be named {', '.join(map(repr, twice))}; rename"
                          " the input or column")
    return described, tensors


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


# -- which component cannot export --------------------------------------------------------------


def located_components(model: PolymodalModel) -> list[tuple[str, nn.Module]]:
    """Every component module of ``model`` with its spec location (a shared backbone once)."""
    found: list[tuple[str, nn.Module]] = [(f"inputs.{n}.adapter", m) for n, m in model.adapters.items()]
    found += [(f"inputs.{n}.backbone", m) for n, m in model.input_backbones.items()]
    found += [(f"backbones.{n}", m) for n, m in model.backbones.items()]
    found += [("fusion", m) for m in model.fusions.values()][:1]
    found += [(f"heads.{n}", m) for n, m in model.heads.items()]
    return found


def _label(where: str, module: nn.Module) -> str:
    config = getattr(module, "config", None)
    what = config.describe() if config is not None else type(module).__name__
    return f"{where} ({what}, {type(module).__module__.split('.')[0]}.{type(module).__qualname__})"


def refusal(cls: type) -> str | None:
    """Why a component class states it cannot be exported; None when it does not say so."""
    stated = getattr(cls, "exportable", None)
    if stated is False:
        return "its plugin states that it cannot be exported"
    return stated if isinstance(stated, str) else None


def refusals(model: PolymodalModel) -> list[str]:
    """Components of ``model`` that state they cannot be exported, each with its reason."""
    return [f"{_label(where, module)}: {refusal(type(module))}"
            for where, module in located_components(model) if refusal(type(module))]


def _culprit(exc: BaseException, located: Sequence[tuple[str, nn.Module]]) -> tuple[str, nn.Module] | None:
    """The innermost component whose code the failure went through, following the chain of
    causes (the tracer re-raises errors of the code it runs)."""
    by_id = {id(module): (where, module) for where, module in located}
    found = None
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        tb = exc.__traceback__
        while tb is not None:
            owner = tb.tb_frame.f_locals.get("self")
            if id(owner) in by_id:
                found = by_id[id(owner)]
            tb = tb.tb_next
        exc = exc.__cause__ or exc.__context__  # type: ignore[assignment]
    return found


def _failure(exc: BaseException, located: Sequence[tuple[str, nn.Module]], step: str) -> ExportError:
    culprit = _culprit(exc, located)
    if culprit is None:
        return ExportError(f"{step} failed: {exception_summary(exc)}")
    where, module = culprit
    stated = getattr(type(module), "exportable", None)
    note = (" (its plugin states it exports: a bug in the plugin)" if stated is True
            else " (its plugin does not state whether it exports)")
    return ExportError(f"{step} failed in {_label(where, module)}{note}: {exception_summary(exc)}")


# -- export ---------------------------------------------------------------------------------------


def _source(model: Any, registry: Registry | None) -> tuple[PolymodalModel, dict[str, str], str]:
    """The model, the metadata its file holds, and a name for messages."""
    from ._modelfile import file_metadata, load, read_metadata

    if isinstance(model, (str, Path)):
        return load(model, registry=registry), dict(read_metadata(model)), str(model)
    if not isinstance(model, PolymodalModel):
        raise TypeError(f"polymodal.export takes a model file or a model built by polymodal, not"
                        f" {type(model).__name__}")
    return model, file_metadata(model, registry=registry), "the model"


def _format_of(output: Path, format: str | None) -> str:
    if format is None:
        found = next((f for f, suffix in FORMATS.items() if output.suffix.lower() == suffix), None)
        if found is None:
            raise ExportError(f"{output}: give the format (--format {' or '.join(FORMATS)}), or an"
                              f" output name ending in {' or '.join(FORMATS.values())}")
        return found
    if format not in FORMATS:
        raise ExportError(f"unknown export format {format!r}; use {' or '.join(FORMATS)}")
    named = next((f for f, suffix in FORMATS.items() if output.suffix.lower() == suffix), format)
    if named != format:
        raise ExportError(f"{output}: a name ending in {output.suffix} says {named}, not {format};"
                          f" name the file {output.stem}{FORMATS[format]}")
    return format


def trace(model: PolymodalModel, state: Mapping[str, Any] | None = None, *,
          batch_size: int = EXAMPLE_BATCH) -> tuple[torch.export.ExportedProgram, Layout, list[torch.Tensor]]:
    """The model as an ExportedProgram with a free batch size, its layout, and the example
    traced. Raises :class:`ExportError` naming a component that cannot be exported."""
    refused = refusals(model)
    if refused:
        raise ExportError("this model cannot be exported: " + "; ".join(refused))
    described, args = _flat_examples(model, state, batch_size)
    flat = FlatModel(model, described).eval()
    located = located_components(model)
    try:
        with torch.no_grad():
            outputs = flat(*args)
    except PolymodalError:
        raise
    except Exception as exc:  # noqa: BLE001 - the failing component is the finding
        raise _failure(exc, located, "running the model on an example batch") from None
    heads = {head: [BATCH, *out.shape[1:]] for head, out in zip(flat.heads, outputs)}
    layout = Layout(described, heads)
    batch = torch.export.Dim(BATCH)
    dynamic = tuple({0: batch} for _ in args)
    try:
        with torch.no_grad(), silenced():
            program = torch.export.export(flat, tuple(args), dynamic_shapes=(dynamic,))
    except Exception as exc:  # noqa: BLE001 - the failing component is the finding
        raise _failure(exc, located, "torch.export") from None
    return program, layout, args


def export(model: Any, output: str | Path, *, format: str | None = None, check: bool = True,
           registry: Registry | None = None, quantize: str | None = None,
           calibration: Any = None) -> ExportResult:
    """Export a model (a model file, or a model built by polymodal) for deployment.

    ``format``: ``onnx`` (ONNX Runtime: servers, phones, browsers) or ``torch-export`` (a
    ``.pt2`` ExportedProgram); default: from the suffix of ``output``. The file carries the
    fitted preprocessing in its metadata, in the form of the model file's. With ``check``, the
    file is run on a random batch of another size (ONNX: with ONNX Runtime, when installed)
    and must give the model's outputs.

    ``quantize="int8"`` (ONNX only) quantizes the checked file with ONNX Runtime: dynamically,
    or statically from the rows of the ``calibration`` table (read through the model's codecs);
    its difference from the model is reported, not held to the fp32 tolerance.
    """
    output = Path(output)
    refuse_overwriting_inputs(output, {"the model": model, "the calibration table": calibration})
    fmt = _format_of(output, format)
    _check_quantize(fmt, quantize, calibration)
    if fmt == "onnx":
        _require_onnx_exporter()
    model, metadata, source = _source(model, registry)
    if any(p.device.type != "cpu" for p in model.parameters()):
        model = copy.deepcopy(model).cpu()
    was_training = model.training
    model.eval()
    try:
        state = model.fitted_state
        program, layout, _ = trace(model, state)
        layout = Layout(layout.inputs, layout.outputs, fmt, _exporter_versions(fmt))
        metadata = {**metadata, KEY_EXPORT: layout.to_json()}
        with output_lock(output, what="export"):  # nor a running run's file replaced under it
            if fmt == "onnx":
                write_onnx(program, layout, metadata, output, located_components(model))
            else:
                write_program(program, metadata, output)
            difference, checked_with = (None, None)
            quantization: dict[str, Any] | None = None
            if check:
                try:
                    difference, checked_with = _check(model, state, layout, output, source)
                except ExportError:
                    output.unlink(missing_ok=True)  # a file that gives other outputs is no export
                    raise
            if quantize:
                difference, checked_with, quantization = _quantized(model, state, layout, output,
                                                                    calibration)
    finally:
        model.train(was_training)
    return ExportResult(output, fmt, layout, difference, checked_with, quantization)


def _check_quantize(fmt: str, quantize: str | None, calibration: Any) -> None:
    from ._quantize import QUANTIZE

    if quantize is not None and quantize not in QUANTIZE:
        raise ExportError(f"unknown quantization {quantize!r}; use {' or '.join(QUANTIZE)}")
    if quantize is not None and fmt != "onnx":
        raise ExportError(f"--quantize {quantize} makes an ONNX file (ONNX Runtime's"
                          " quantization); name the output .onnx")
    if calibration is not None and quantize is None:
        raise ExportError("--calibration gives the rows of a static quantization: add"
                          " --quantize int8")


def _quantized(model: PolymodalModel, state: Mapping[str, Any] | None, layout: Layout,
               output: Path, calibration: Any
               ) -> tuple[float | None, str | None, dict[str, Any]]:
    """The checked fp32 file at ``output`` replaced by its int8 quantization; how far the
    int8 file's outputs are from the model's on a random batch, what ran it, and what was
    done. Nothing is left at ``output`` when quantization fails."""
    from ._quantize import quantize

    try:
        done = quantize(output, output, calibration=calibration)
        described, args = _flat_examples(model, state, EXAMPLE_BATCH + 1)
        with torch.no_grad():
            expected = FlatModel(model, described)(*args)
        got, _ = _run_file(layout, output, described, args)
    except BaseException:
        output.unlink(missing_ok=True)
        raise
    if got is None:
        return None, None, done
    difference = max((float((g.float() - e.float()).abs().max()) for g, e in zip(got, expected)
                      if e.numel()), default=0.0)
    return difference, f"ONNX Runtime, int8 ({done['mode']})", done


def _exporter_versions(fmt: str) -> dict[str, Any]:
    versions: dict[str, Any] = {"torch": torch.__version__.split("+")[0]}
    if fmt == "onnx":
        versions["opset"] = OPSET
        with contextlib.suppress(ImportError):
            import onnx

            versions["onnx"] = onnx.__version__
    return versions


def write_program(program: torch.export.ExportedProgram, metadata: Mapping[str, str],
                  output: Path) -> None:
    """``program`` as a ``.pt2`` file, ``metadata`` in its extra files."""
    atomic_write(output, lambda file: torch.export.save(program, file,
                                                        extra_files=dict(metadata)))


def write_onnx(program: torch.export.ExportedProgram, layout: Layout, metadata: Mapping[str, str],
               output: Path, located: Sequence[tuple[str, nn.Module]] = ()) -> None:
    """``program`` as one ONNX file (weights inside), ``metadata`` in its ``metadata_props``;
    the presence masks are optional inputs that default to "every sample present"."""
    _require_onnx_exporter()
    names = [i.name for i in layout.inputs]
    try:
        with silenced():
            onnx_program = torch.onnx.export(
                program, dynamo=True, input_names=names, output_names=list(layout.outputs),
                opset_version=OPSET, optimize=True, verbose=False, report=False)
        assert onnx_program is not None, "the dynamo exporter returns the ONNX program"
        proto = onnx_program.model_proto
    except Exception as exc:  # noqa: BLE001 - the failing component is the finding
        raise _failure(exc, located, "the ONNX exporter") from None
    _name_batch(proto)
    _optional_masks(proto, layout)
    for key, value in metadata.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    if proto.ByteSize() >= 2**31:
        raise ExportError("the model is over 2 GB, more than one ONNX file holds; export it with"
                          " --format torch-export")
    atomic_write(output, lambda file: file.write(proto.SerializeToString()))


def _require_onnx_exporter() -> None:
    try:
        import onnx  # noqa: F401 - torch's ONNX exporter needs both
        import onnxscript  # noqa: F401
    except ImportError as exc:
        raise ExportError(f"exporting to ONNX needs the onnx and onnxscript packages ({exc.name}"
                          " is not installed): pip install 'polymodal[onnx]'") from None


def _name_batch(proto: Any) -> None:
    """Call the free batch dimension ``batch`` (the exporter names it after its symbol)."""
    symbol = proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param
    if not symbol:
        return
    for value in [*proto.graph.input, *proto.graph.output, *proto.graph.value_info]:
        for dim in value.type.tensor_type.shape.dim:
            if dim.dim_param == symbol:
                dim.dim_param = BATCH


def _optional_masks(proto: Any, layout: Layout) -> None:
    """Give each presence mask a default, one ``True`` broadcast to the batch, so that a caller
    feeds a mask only to mark missing inputs. The broadcast is added after the exporter's
    optimiser, which would drop it as a no-op for the declared shapes."""
    from onnx import TensorProto, helper

    masks = [i.name for i in layout.inputs if i.present]
    if not masks:
        return
    size = "polymodal.batch_size"
    added = [helper.make_node("Shape", [layout.data_inputs[0].name], [size], start=0, end=1)]
    for name in masks:
        expanded = f"{name}.expanded"
        _rename_uses(proto.graph, name, expanded)
        added.append(helper.make_node("Expand", [name, size], [expanded]))
        proto.graph.initializer.append(helper.make_tensor(name, TensorProto.BOOL, [1], [True]))
    nodes = [*added, *proto.graph.node]  # first: the graph's nodes are in topological order
    del proto.graph.node[:]
    proto.graph.node.extend(nodes)


def _rename_uses(graph: Any, old: str, new: str) -> None:
    """Every node of ``graph`` (and of its subgraphs) reads ``new`` where it read ``old``."""
    for node in graph.node:
        for position, name in enumerate(node.input):
            if name == old:
                node.input[position] = new
        for attribute in node.attribute:
            for sub in [attribute.g, *attribute.graphs] if attribute.HasField("g") else attribute.graphs:
                _rename_uses(sub, old, new)


# -- checking the file ------------------------------------------------------------------------


def _check(model: PolymodalModel, state: Mapping[str, Any] | None, layout: Layout,
           output: Path, source: str) -> tuple[float | None, str | None]:
    """The largest difference between the model's and the file's outputs on a random batch of
    another size than the one traced, and what ran the file; raises beyond :data:`TOLERANCE`."""
    described, args = _flat_examples(model, state, EXAMPLE_BATCH + 1)
    with torch.no_grad():
        expected = FlatModel(model, described)(*args)
        try:
            got, checked_with = _run_file(layout, output, described, args)
        except Exception as exc:  # noqa: BLE001 - any failure to run the file is the finding
            raise ExportError(f"{output}: the exported file fails to run ({exception_summary(exc)}); this is"
                              " a bug in the exporter or in a component") from None
    if got is None:
        return None, None
    difference = max((float((g.float() - e.float()).abs().max()) for g, e in zip(got, expected)
                      if e.numel()), default=0.0)
    scale = max([1.0, *(float(e.abs().max()) for e in expected if e.numel())])
    if not difference <= TOLERANCE * scale:
        raise ExportError(f"{output}: the exported model's outputs differ from {source}'s by up to"
                          f" {difference:.3g} ({checked_with}); this is a bug in the exporter or in"
                          " a component")
    return difference, checked_with


def _run_file(layout: Layout, output: Path, described: Sequence[ExportedInput],
              args: Sequence[torch.Tensor]) -> tuple[list[torch.Tensor] | None, str | None]:
    """The outputs of the exported file for ``args``, and what ran it (None: nothing can)."""
    if layout.format == "onnx":
        try:
            import onnxruntime  # noqa: F401
        except ImportError:
            return None, None
        from ._training.onnx_model import OnnxModel

        runner = OnnxModel.open(output)
        # Masks left out: their default, every sample present, is what is checked.
        return runner.run_flat({d.name: a for d, a in zip(described, args) if not d.present}), \
            "ONNX Runtime"
    with silenced():
        return list(torch.export.load(output).module()(*args)), "the saved ExportedProgram"

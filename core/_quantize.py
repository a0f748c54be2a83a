"""int8 ONNX exports for CPU serving: ONNX Runtime's quantization of an fp32 export.

Without calibration rows the weights of the MatMul and Gemm operators (linear layers) are
quantized ahead and their activations at run time (dynamic); convolutions stay fp32, since ONNX
Runtime's dynamic integer convolution (ConvInteger) runs several times slower than fp32 on CPUs
(measured: 0.13x on the demo model). With a calibration table, the rows are
read through the model's own codecs (as ``predict`` reads them), run through the fp32 file to
find each activation's range, and weights and activations are quantized ahead (static, QDQ,
per-channel weights), except the convolutions whose kernel is larger than the map they read (a
3x3 kernel on a 1x1 or 2x2 map, as deep in a ResNet on small images): ONNX Runtime's integer
convolution (QLinearConv) runs such padding-dominated layers up to 6x slower than fp32 (measured
on the demo model: 8.2 ms against 1.3 ms for its 512-channel 3x3 conv on 1x1 maps, batch 64),
while it runs the convolutions on larger maps 2 to 3x faster, so they stay fp32. The file keeps the fp32 export's metadata (spec, fitted preprocessing,
layout) plus ``polymodal.quantization``, so ``predict`` and ``serve`` take it as any export.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ._errors import ExportError, exception_summary, silenced
from ._files import atomic_write

QUANTIZE = ("int8",)
#: The operators dynamic quantization makes integer (see above for why not Conv).
DYNAMIC_OPS = ("MatMul", "Gemm")
KEY_QUANTIZATION = "polymodal.quantization"
#: Calibration rows read at most (the first ones of the table).
CALIBRATION_ROWS = 512
#: Operators that only a quantized graph holds.
_QUANTIZED_OPS = {"QuantizeLinear", "DynamicQuantizeLinear", "MatMulInteger", "ConvInteger",
                  "QLinearConv", "QLinearMatMul", "QGemm"}


def _tools() -> Any:
    try:
        from onnxruntime import quantization
    except ImportError:
        raise ExportError("quantizing an export needs ONNX Runtime, which is not installed:"
                          " pip install 'polymodal[onnx]'") from None
    return quantization


def quantize(fp32: Path, output: Path, *, calibration: Any = None) -> dict[str, Any]:
    """The fp32 export ``fp32`` quantized to int8 at ``output`` (written atomically); what
    was done, as kept in the file's metadata."""
    import onnx


    tools = _tools()
    with tempfile.TemporaryDirectory(prefix="polymodal-quantize-") as folder:
        target = Path(folder) / "int8.onnx"
        try:
            with silenced():
                if calibration is None:
                    tools.quantize_dynamic(str(fp32), str(target), weight_type=tools.QuantType.QInt8,
                                           op_types_to_quantize=list(DYNAMIC_OPS))
                    done: dict[str, Any] = {"mode": "dynamic", "weights": "int8",
                                            "operators": list(DYNAMIC_OPS)}
                else:
                    reader, rows = _reader(fp32, calibration, tools)
                    kept = padding_dominated_convs(fp32)
                    tools.quantize_static(str(fp32), str(target), reader,
                                          quant_format=tools.QuantFormat.QDQ, per_channel=True,
                                          weight_type=tools.QuantType.QInt8,
                                          activation_type=tools.QuantType.QUInt8,
                                          nodes_to_exclude=kept)
                    done = {"mode": "static", "weights": "int8", "activations": "uint8",
                            "calibration_rows": rows, "fp32_convolutions": len(kept)}
            proto = onnx.load(str(target))
        except ExportError:
            raise
        except Exception as exc:  # noqa: BLE001 - ONNX Runtime's own reason is the finding
            raise ExportError(f"quantizing to int8 failed: {exception_summary(exc)}; export without"
                              " --quantize") from None
    ops = {node.op_type for node in proto.graph.node}
    if not ops & _QUANTIZED_OPS:
        raise ExportError("no operator of this model can be quantized to int8 by ONNX Runtime"
                          f" (it has {', '.join(sorted(ops))}); export without --quantize")
    original = onnx.load(str(fp32), load_external_data=False)
    done["int8_nodes"] = [_int8_nodes(proto.graph), _candidates(original.graph)]
    _keep_metadata(proto, original, done)
    atomic_write(output, lambda file: file.write(proto.SerializeToString()))
    return done


#: The operators whose work int8 can take: what "n of m quantized" counts.
_CANDIDATE_OPS = {"Conv", "MatMul", "Gemm"}


def _candidates(graph: Any) -> int:
    return sum(node.op_type in _CANDIDATE_OPS for node in graph.node)


def _int8_nodes(graph: Any) -> int:
    """The convolutions and matrix products that run in int8: integer operators (dynamic),
    quantized operators, or float operators fed a dequantized weight (static, QDQ)."""
    made_by = {out: node.op_type for node in graph.node for out in node.output}
    integer = {"MatMulInteger", "ConvInteger", "QLinearConv", "QLinearMatMul", "QGemm"}
    return sum(node.op_type in integer or (node.op_type in _CANDIDATE_OPS and len(node.input) > 1
                                           and made_by.get(node.input[1]) == "DequantizeLinear")
               for node in graph.node)


def padding_dominated_convs(path: Path) -> list[str]:
    """The names of the Conv nodes of the ONNX file ``path`` whose kernel is larger than the
    map they read (known from the file's fixed image size by shape inference)."""
    import onnx

    model = onnx.shape_inference.infer_shapes(onnx.load(str(path)))
    graph = model.graph
    shapes = {v.name: [d.dim_value if d.HasField("dim_value") else 0
                       for d in v.type.tensor_type.shape.dim]
              for v in [*graph.value_info, *graph.input]}
    kernels = {i.name: list(i.dims) for i in graph.initializer}
    found = []
    for node in graph.node:
        shape, kernel = shapes.get(node.input[0]), kernels.get(node.input[1]) \
            if node.op_type == "Conv" and len(node.input) > 1 else None
        if node.op_type != "Conv" or not shape or not kernel or len(shape) != 4 or len(kernel) != 4:
            continue
        if 0 < shape[2] < kernel[2] or 0 < shape[3] < kernel[3]:
            found.append(node.name)
    return found


def _keep_metadata(proto: Any, source: Any, done: dict[str, Any]) -> None:
    held = {entry.key: entry.value for entry in source.metadata_props}
    held[KEY_QUANTIZATION] = json.dumps(done)
    del proto.metadata_props[:]
    for key, value in held.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value


def _reader(fp32: Path, table: Any, tools: Any) -> tuple[Any, int]:
    """A calibration data reader of ``table``'s rows, encoded by the model's codecs, and how
    many rows it holds."""
    from ._data.binding import Binding
    from ._training.inference import RowReport, encoded_chunks, model_state
    from ._training.onnx_model import OnnxModel

    runner = OnnxModel.open(fp32)
    state = model_state(runner, str(fp32))  # type: ignore[arg-type]  # the model's stand-in
    batches: list[dict[str, Any]] = []
    rows = 0
    for _, encoded in encoded_chunks(table, Binding(runner.spec), state, targets=False,
                                     batch_size=64, on_bad_row="skip", report=RowReport()):
        feeds = runner.feeds(encoded.inputs, encoded.present or None)
        batches.append({name: value.numpy() for name, value in feeds.items()})
        rows += len(encoded.positions)
        if rows >= CALIBRATION_ROWS:
            break
    if not rows:
        raise ExportError(f"{table}: no row of the calibration table can be read")

    class Reader(tools.CalibrationDataReader):
        def __init__(self) -> None:
            self.batches: Iterator[dict[str, Any]] = iter(batches)

        def get_next(self) -> dict[str, Any] | None:
            return next(self.batches, None)

    return Reader(), rows

"""An ONNX export run by ONNX Runtime, standing in for the model when predicting on a table.

:class:`OnnxModel` reads the spec and fitted preprocessing from the file's metadata, so the
codecs encode raw rows and decode outputs exactly as for a model file; only the network runs in
ONNX Runtime. onnxruntime is imported here only (``pip install 'polymodal[onnx]'``).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from .._errors import DataError, ExportError, ModelFileError, first_line
from .._export_layout import KEY_EXPORT, ExportedInput, Layout
from .._modelfile import metadata_json

if TYPE_CHECKING:
    from .._spec import ModelSpec

def _runtime() -> Any:
    try:
        import onnxruntime
    except ImportError:
        raise ExportError("running an ONNX file needs ONNX Runtime, which is not installed:"
                          " pip install 'polymodal[onnx]'") from None
    return onnxruntime


def _providers(device: torch.device) -> list[Any]:
    """ONNX Runtime's execution providers for ``device``."""
    if device.type == "cpu":
        return ["CPUExecutionProvider"]
    if device.type == "cuda":
        available = _runtime().get_available_providers()
        if "CUDAExecutionProvider" not in available:
            raise ExportError("--device cuda: this ONNX Runtime has no CUDA execution provider"
                              f" (it has {', '.join(available)}); install onnxruntime-gpu")
        return [("CUDAExecutionProvider", {"device_id": device.index or 0}), "CPUExecutionProvider"]
    raise ExportError(f"ONNX Runtime runs on cpu or cuda, not {device}")


def session(path: str | Path, device: torch.device | str = "cpu") -> Any:
    """An ONNX Runtime session of ``path``; a clear error for a file that is not ONNX."""
    runtime = _runtime()
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"{path}: no such file")
    # Errors only, from the logger that speaks while the file is read too: it warns once per
    # presence mask that an input has a default ("Initializer present.photo appears in graph
    # inputs"), which is what they are for.
    runtime.set_default_logger_severity(3)
    try:
        options = runtime.SessionOptions()
        # Errors only: ONNX Runtime notes that the presence masks' defaults are overridable,
        # which is what they are for.
        options.log_severity_level = 3
        options.intra_op_num_threads = torch.get_num_threads()  # as many threads as torch uses
        return runtime.InferenceSession(str(path), options,
                                        providers=_providers(torch.device(device)))
    except ExportError:
        raise
    except Exception as exc:  # noqa: BLE001 - ONNX Runtime raises its own types for bad files
        raise ModelFileError(f"{path}: not a valid ONNX file ({first_line(exc)})") from None


class OnnxModel:
    """An exported ONNX file with the model's call contract for prediction: ``runner(batch)``
    takes the inputs as codecs encode them and returns each head's raw output."""

    def __init__(self, path: Path, runner: Any, metadata: Mapping[str, str], layout: Layout):
        self.path = path
        self.session = runner
        self.metadata = dict(metadata)
        self.layout = layout
        self.device = torch.device("cpu")
        self._spec: ModelSpec | None = None
        self._adapters: torch.nn.ModuleDict | None = None
        state = self.metadata.get("polymodal.state")
        self.fitted_state = metadata_json(state, path, "polymodal.state") if state else None

    @classmethod
    def open(cls, path: str | Path) -> OnnxModel:
        path = Path(path)
        runner = session(path)
        metadata = runner.get_modelmeta().custom_metadata_map
        if KEY_EXPORT not in metadata:
            raise ModelFileError(f"{path}: an ONNX file, but not a polymodal export (no {KEY_EXPORT}"
                                 " metadata); polymodal predicts from files that polymodal export"
                                 " wrote")
        layout = Layout.from_json(metadata[KEY_EXPORT], str(path))
        _check_layout(path, layout, runner)
        return cls(path, runner, metadata, layout)

    def _check(self, spec: ModelSpec) -> None:
        """Refuse metadata that disagrees with itself: the spec's inputs against the layout, the
        fitted state against the spec."""
        from .._modelfile import check_fitted_state

        exported = {i.input for i in self.layout.data_inputs}
        if exported != set(spec.inputs):
            raise ModelFileError(
                f"{self.path}: its metadata disagrees with itself: the export's inputs are"
                f" {_names(exported)}, its spec's {_names(spec.inputs)}; the file was changed")
        if self.fitted_state is not None:
            check_fitted_state(spec, self.fitted_state, self.path)

    @property
    def spec(self) -> ModelSpec:
        """The spec embedded in the file (its plugins must be installed: they read the rows)."""
        if self._spec is None:
            from .._modelfile import spec_in

            spec = spec_in(self.metadata, str(self.path))
            self._check(spec)
            self._spec = spec
        return self._spec

    def _adapter(self, name: str) -> Any:
        """A weightless adapter of the spec: it knows the form each input is exported in."""
        if self._adapters is None:
            from .._assembly import build

            with torch.device("meta"):
                self._adapters = build(self.spec, pretrained=False).adapters
        return self._adapters[name]

    def to(self, device: torch.device | str) -> OnnxModel:
        device = torch.device(device)
        if device.type != self.device.type or device.index != self.device.index:
            self.session = session(self.path, device)
            self.device = device
        return self

    def eval(self) -> OnnxModel:
        return self

    def run_flat(self, feeds: Mapping[str, torch.Tensor]) -> list[torch.Tensor]:
        """The outputs, in the file's order, for tensors by exported input name (a presence mask
        left out means every sample's input is present)."""
        arrays = {name: np.ascontiguousarray(t.detach().cpu().numpy()) for name, t in feeds.items()}
        return [torch.from_numpy(np.asarray(o)) for o in self.session.run(list(self.layout.outputs), arrays)]

    def __call__(self, batch: Mapping[str, Any],
                 present: Mapping[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        return dict(zip(self.layout.outputs, self.run_flat(self.feeds(batch, present))))

    def feeds(self, batch: Mapping[str, Any],
              present: Mapping[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        """The file's input tensors, by name, for a batch as codecs encode it."""
        inputs = {i.input for i in self.layout.inputs}
        unknown = [name for name in batch if name not in inputs]
        if unknown:
            raise DataError(f"the batch has unknown input(s) {', '.join(map(repr, unknown))}; the"
                            f" export's inputs are {', '.join(sorted(inputs))}")
        formed = {name: self._adapter(name).export_form(value) for name, value in batch.items()}
        feeds: dict[str, torch.Tensor] = {}
        for described in self.layout.inputs:
            if described.present:
                if present and described.input in present:
                    feeds[described.name] = torch.as_tensor(present[described.input], dtype=torch.bool)
                continue
            if described.input not in formed:
                raise DataError(f"the batch has no input {described.input!r}; an exported model"
                                " takes every input (mark missing ones with present)")
            value = formed[described.input]
            if described.key is not None and described.key not in value:
                raise ModelFileError(f"{self.path}: its metadata names column {described.key!r}"
                                     f" of input {described.input!r}, which its spec does not"
                                     " read; the file was changed after export")
            feeds[described.name] = _fitting(value if described.key is None else value[described.key],
                                             described)
        return feeds


def _names(names: Any) -> str:
    return ", ".join(sorted(map(str, names))) or "none"


def _check_layout(path: Path, layout: Layout, runner: Any) -> None:
    """The graph's inputs and outputs, by name, dtype and sizes, must be those the file's
    metadata describes; else the file was changed after export, and ONNX Runtime would fail
    on the first batch with an error of its own."""
    graph_inputs = {i.name: i for i in runner.get_inputs()}
    graph_outputs = [o.name for o in runner.get_outputs()]
    described = {i.name: i for i in layout.inputs}
    problems = []
    missing = [n for n, i in described.items() if n not in graph_inputs and not i.present]
    if missing or any(n not in described for n in graph_inputs):
        problems.append(f"inputs {_names(described)} described, the graph takes"
                        f" {_names(graph_inputs)}")
    if graph_outputs != list(layout.outputs):
        problems.append(f"outputs {_names(layout.outputs)} described, the graph gives"
                        f" {_names(graph_outputs)}")
    for name, wanted in described.items():
        held = graph_inputs.get(name)
        if held is None or problems:
            continue
        sizes = [d if isinstance(d, int) else None for d in held.shape[1:]]
        if held.type != f"tensor({_onnx_type(wanted.dtype)})" or any(
                s is not None and s != w for s, w in zip(sizes, wanted.shape[1:])) \
                or len(sizes) != len(wanted.shape[1:]):
            problems.append(f"input {name!r} described as {wanted.dtype} {wanted.shape}, the"
                            f" graph takes {held.type} {held.shape}")
    for held, (head, shape) in zip(runner.get_outputs(), layout.outputs.items()):
        sizes = [d if isinstance(d, int) else None for d in held.shape[1:]]
        if len(sizes) != len(shape[1:]) or any(s is not None and s != w
                                               for s, w in zip(sizes, shape[1:])):
            problems.append(f"output {head!r} described as {shape}, the graph gives {held.shape}")
    if problems:
        raise ModelFileError(f"{path}: its metadata ({KEY_EXPORT}) does not describe its graph:"
                             f" {'; '.join(problems)}; the file was changed after export")


def _onnx_type(dtype: str) -> str:
    return {"float32": "float", "float64": "double", "float16": "float16"}.get(dtype, dtype)


def _fitting(value: torch.Tensor, described: ExportedInput) -> torch.Tensor:
    """``value`` in the dtype the file takes (a same-kind cast), its sizes checked."""
    dtype = getattr(torch, described.dtype)
    if value.dtype != dtype:
        if value.is_floating_point() != dtype.is_floating_point or dtype == torch.bool:
            raise DataError(f"input {described.name!r}: the export takes {described.dtype}, but the"
                            f" batch holds {str(value.dtype).removeprefix('torch.')}")
        value = value.to(dtype)
    wanted = described.shape[1:]
    if list(value.shape[1:]) != wanted:
        raise DataError(f"input {described.name!r}: the export takes shape {described.shape},"
                        f" the batch holds {list(value.shape)}")
    return value

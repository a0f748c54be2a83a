"""What an exported model takes and gives (``polymodal.export`` in its metadata): read by the
exporter that writes it and by whatever runs the file (:mod:`polymodal._training.onnx_model`),
so that neither imports the other for it."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

from ._errors import ModelFileError

KEY_EXPORT = "polymodal.export"
EXPORT_FORMAT = 1
#: The name of the free batch dimension in the exported files.
BATCH = "batch"


@dataclass(frozen=True)
class ExportedInput:
    """One tensor an exported model takes."""

    name: str  # the tensor's name: ``photo``, ``report.make``, ``present.photo``
    input: str  # the model input it belongs to
    key: str | None  # its key in a dict input (a table column), else None
    dtype: str  # ``float32``, ``int64``, ``bool``
    shape: list[int | str]  # ``BATCH`` for the free batch size
    present: bool = False  # a mask of the samples whose input is present (optional in ONNX)


@dataclass(frozen=True)
class Layout:
    """The exported model's inputs and outputs, in order (saved as ``polymodal.export``)."""

    inputs: list[ExportedInput]
    outputs: dict[str, list[int | str]]  # head -> shape
    format: str = "onnx"
    exporter: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps({"format": EXPORT_FORMAT, "file": self.format, "batch": BATCH,
                           "inputs": [asdict(i) for i in self.inputs],
                           "outputs": [{"name": h, "shape": s} for h, s in self.outputs.items()],
                           "exporter": self.exporter})

    @classmethod
    def from_json(cls, text: str, source: str) -> Layout:
        from ._modelfile import metadata_json

        data = metadata_json(text, source, KEY_EXPORT)
        try:
            if data["format"] > EXPORT_FORMAT:
                raise ModelFileError(
                    f"{source}: exported by a newer polymodal (export format {data['format']});"
                    f" this one reads format {EXPORT_FORMAT}: pip install -U polymodal")
            return cls([ExportedInput(**i) for i in data["inputs"]],
                       {o["name"]: o["shape"] for o in data["outputs"]}, data["file"],
                       data.get("exporter", {}))
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise ModelFileError(f"{source}: its {KEY_EXPORT} metadata is unreadable ({exc})") from None

    @property
    def data_inputs(self) -> list[ExportedInput]:
        return [i for i in self.inputs if not i.present]

"""Attribution of chosen rows to the numbers of their inputs (``polymodal explain --attribute``).

Captum computes, for each chosen row, each head and each input the head reads, how much each
number of the input moved the head's output for that row (its predicted class, or its value);
the input's codec turns that into pictures (``Codec.attribution_pictures``: an image adapter
overlays it per band group), written here as PNG files. Captum is an optional dependency
(``pip install 'polymodal[explain]'``), imported only here.
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import torch

from .._data.binding import select
from .._errors import DataError
from .._files import atomic_open
from .inference import to_device

if TYPE_CHECKING:
    from .._data.binding import Binding
    from .._data.table import Table


class Rows(Protocol):
    """The explained rows, encoded: what attribution reads of them."""

    @property
    def table(self) -> Table: ...
    @property
    def inputs(self) -> dict[str, Any]: ...
    @property
    def present(self) -> dict[str, torch.Tensor]: ...


class Explaining(Protocol):
    """What attribution needs of the explanation it is part of: the model on its device, its
    binding, the rows, and the count of the passes made over them."""

    passes: int

    @property
    def model(self) -> Any: ...
    @property
    def binding(self) -> Binding: ...
    @property
    def rows(self) -> Rows: ...
    @property
    def device(self) -> torch.device: ...

#: ``--attribute`` choices and the Captum class of each.
METHODS = {"integrated_gradients": "IntegratedGradients", "saliency": "Saliency",
           "input_x_gradient": "InputXGradient"}
#: Integrated gradients' steps from the baseline (zeros: the mean of normalised values).
STEPS = 32
FOLDER = "attributions"


def captum_method(method: str) -> Any:
    if method not in METHODS:
        raise DataError(f"--attribute {method!r}: choose one of {', '.join(METHODS)}")
    try:
        from captum import attr
    except ImportError:
        raise DataError("--attribute needs Captum, which is not installed:"
                        " pip install 'polymodal[explain]'") from None
    return getattr(attr, METHODS[method])


def pictured_inputs(explainer: Explaining) -> dict[str, torch.Tensor]:
    """The inputs whose codec gives them as numbers to attribute, as those numbers."""
    found = {}
    for bound in explainer.binding.inputs:
        value = bound.codec.attribution_value(explainer.rows.inputs[bound.name])
        if value is not None:
            found[bound.name] = value
    return found


def attribute(explainer: Explaining, at: np.ndarray, method: str) -> dict[str, np.ndarray]:
    """For each row at positions ``at``, each head and each pictured input the head reads and the
    row holds: the attribution's pictures, by their file's path in the output folder
    (``attributions/row_7_decision_photo_rgb.png``)."""
    make = captum_method(method)
    values = pictured_inputs(explainer)
    if not values:
        return {}
    rows, spec = explainer.rows, explainer.binding.spec
    written: dict[str, np.ndarray] = {}
    for position in at:
        one = np.array([position])
        inputs = select({**rows.inputs, **values}, one)
        present = {n: m[one] for n, m in rows.present.items()}
        for head in spec.heads:
            for name in (n for n in values if n in spec.head_inputs(head)):
                if not bool(present[name][0]):
                    continue  # the row holds no such input: nothing to attribute
                value, found = _one(explainer, make, method, inputs, present, head, name)
                codec = explainer.binding.input_codec(name)
                stem = f"row_{int(rows.table.rows[position])}_{head}_{name}"
                for label, picture in codec.attribution_pictures(value, found).items():
                    written[f"{FOLDER}/{stem}_{label}.png"] = picture
    return written


def _one(explainer: Explaining, make: Any, method: str, inputs: dict[str, Any],
         present: dict[str, torch.Tensor], head: str, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """One row's input ``name`` and its attribution for ``head``'s strongest output."""
    device = explainer.device
    moved = {n: to_device(v, device) for n, v in inputs.items()}
    masks = {n: m.to(device) for n, m in present.items()}

    def forward(x: torch.Tensor) -> torch.Tensor:
        count = x.shape[0]  # integrated gradients pass several scaled copies of the row
        batch = {n: (x if n == name else select(v, np.zeros(count, dtype=np.int64)))
                 for n, v in moved.items()}
        return explainer.model(batch, {n: m.expand(count) for n, m in masks.items()})[head]

    with torch.no_grad():
        output = forward(moved[name])
    target = int(output[0].argmax()) if output.shape[-1] > 1 else 0
    found = make(forward)
    value = moved[name].detach().clone().requires_grad_(True)
    kwargs = {"n_steps": STEPS, "internal_batch_size": STEPS} if method == "integrated_gradients" else {}
    attribution = found.attribute(value, target=target, **kwargs)
    explainer.passes += 1
    return moved[name].detach().cpu(), attribution.detach().float().cpu()


def write_pictures(folder: Path, pictures: dict[str, np.ndarray]) -> None:
    if pictures:
        (folder / FOLDER).mkdir(parents=True, exist_ok=True)
    for relative, picture in pictures.items():
        with atomic_open(folder / relative, "wb") as handle:
            handle.write(png(picture))


def png(picture: np.ndarray) -> bytes:
    """``picture`` (uint8 ``[height, width, 3]``) as a PNG file: written here, so the core needs
    no image library."""
    picture = np.ascontiguousarray(picture, dtype=np.uint8)
    height, width, _ = picture.shape
    raw = b"".join(b"\x00" + picture[y].tobytes() for y in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw, 6))
            + chunk(b"IEND", b""))


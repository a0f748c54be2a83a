"""Image files of any channel count: PNG/JPEG (Pillow), ``.npy`` arrays and multi-band TIFF;
and images held in memory (numpy arrays or tensors in a table's cells).

Every reader gives a float32 array ``[channels, height, width]``, scaled by the values' type
whatever the file format (PNG, JPEG, TIFF, ``.npy``, an array in a cell): uint8 is divided by
255 and uint16 by 65535 (0..1), bool becomes 0 or 1; every other type (int8, int16, int32,
uint32, int64, float) is kept as it is, since its range is the data's own (signed radar
backscatter, reflectance already scaled). With ``keep_uint8`` an 8-bit image stays uint8 (0..255), a quarter of the bytes to move between
processes and to a GPU; the image adapter scales uint8 batches the same way.
Arrays may be stored channels-first or channels-last: with ``channels`` given, a 3-D array
whose last axis (and not its first) matches is read as channels-last.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import numpy as np

PIL_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp"}
TIFF_SUFFIXES = {".tif", ".tiff"}
NPY_SUFFIXES = {".npy"}
SUFFIXES = PIL_SUFFIXES | TIFF_SUFFIXES | NPY_SUFFIXES


class ImageReadError(Exception):
    """A file is missing, unreadable or not an image; the message says which."""


def _scale(array: np.ndarray, keep_uint8: bool = False) -> np.ndarray:
    if array.dtype == np.uint8:
        if keep_uint8:
            return array
        return array.astype(np.float32) / 255.0
    if array.dtype == np.uint16:
        return array.astype(np.float32) / 65535.0
    if array.dtype == bool:
        return array.astype(np.float32)
    return array.astype(np.float32, copy=False)


def _channels_first(array: np.ndarray, channels: int | None) -> np.ndarray:
    if array.ndim == 2:
        return array[None]
    if array.ndim != 3:
        raise ImageReadError(f"holds an array of shape {list(array.shape)}, not an image"
                             " ([channels, height, width] or [height, width])")
    if channels is not None and array.shape[-1] == channels and array.shape[0] != channels:
        return np.moveaxis(array, -1, 0)
    return array


def _pil_mode_channels(mode: str) -> int:
    return {"1": 1, "L": 1, "P": 3, "I": 1, "F": 1, "I;16": 1, "I;16B": 1, "I;16L": 1,
            "LA": 2, "RGB": 3, "RGBA": 4, "CMYK": 4, "YCbCr": 3, "LAB": 3, "HSV": 3}.get(mode, 3)


def _open_pil(path: Path):
    from PIL import Image, UnidentifiedImageError

    try:
        return Image.open(path)
    except UnidentifiedImageError:
        raise ImageReadError("is not an image Pillow can read") from None


def _pil_array(path: Path) -> np.ndarray:
    with _open_pil(path) as image:
        if image.mode == "P":
            image = image.convert("RGBA" if "transparency" in image.info else "RGB")
        elif image.mode in ("I", "I;16B", "I;16L"):
            image = image.convert("I;16") if image.mode != "I" else image
        array = np.array(image)  # a writable copy: batches are built from it
    if array.dtype == np.int32:  # mode "I": 32-bit integers, kept as values
        array = array.astype(np.float32)
    return array


def _tiff_array(path: Path) -> np.ndarray:
    try:
        import tifffile
    except ImportError:
        try:
            return _pil_array(path)
        except (ImageReadError, OSError):
            raise ImageReadError("cannot be read without tifffile (multi-band TIFF):"
                                 " pip install 'polymodal[tiff]'") from None
    import logging

    # tifffile logs what it finds wrong in a file; the error below says it once, with the row.
    logging.getLogger("tifffile").setLevel(logging.CRITICAL)
    try:
        array = tifffile.imread(str(path))
    except Exception as exc:  # noqa: BLE001 - tifffile raises many kinds for bad files
        raise ImageReadError(f"is not a readable TIFF file ({exc})") from None
    if array.size == 0:
        raise ImageReadError("is not a readable TIFF file (it holds no image data)")
    return array


def _npy(path: Path, mmap_mode: Literal["r+", "r", "w+", "c"] | None = None) -> np.ndarray:
    from numpy.lib import format as npy

    with path.open("rb") as handle:
        try:
            version = npy.read_magic(handle)
            header = npy.read_array_header_1_0 if version == (1, 0) else npy.read_array_header_2_0
            dtype = header(handle)[2]
        except ValueError:
            raise ImageReadError("is not a .npy file (it lacks the .npy header)") from None
        if dtype.hasobject:
            raise ImageReadError("holds Python objects, not numbers")
        if dtype.kind not in "biuf":
            raise ImageReadError(f"holds {dtype} values, not numbers")
        try:
            if mmap_mode is None:
                handle.seek(0)  # one open per image: these are read for every batch
                return np.load(handle, allow_pickle=False)
            return np.load(path, mmap_mode=mmap_mode, allow_pickle=False)
        except ValueError as exc:
            raise ImageReadError(f"is not a readable .npy array ({exc})") from None


def read_image(path: str | Path, channels: int | None = None, *,
               keep_uint8: bool = False) -> np.ndarray:
    """The image at ``path`` as float32 ``[channels, height, width]`` (or uint8, see above)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if path.is_dir():
        raise ImageReadError("is a folder, not an image file")
    if suffix not in SUFFIXES:
        raise ImageReadError(f"has unknown image type {path.suffix!r}; use"
                             f" {', '.join(sorted(SUFFIXES))}")
    try:
        if suffix in NPY_SUFFIXES:
            array = _npy(path)
        elif suffix in TIFF_SUFFIXES:
            array = _tiff_array(path)
        else:
            array = _pil_array(path)
    except FileNotFoundError:
        raise ImageReadError("not found") from None
    except OSError as exc:
        raise ImageReadError(f"cannot be read ({exc.strerror or exc})") from None
    if suffix in PIL_SUFFIXES and array.ndim == 3:
        # Pillow gives channels last
        return image_array(np.moveaxis(array, -1, 0), keep_uint8=keep_uint8)
    return image_array(array, channels, keep_uint8=keep_uint8)


def is_image_array(value: Any) -> bool:
    """Whether a table cell holds an image itself (a numpy array or tensor) rather than a path."""
    return isinstance(value, np.ndarray) or hasattr(value, "detach")


def image_array(array: Any, channels: int | None = None, *, keep_uint8: bool = False) -> np.ndarray:
    """An image array (numpy or tensor; ``[C, H, W]``, ``[H, W, C]`` or ``[H, W]``) as float32
    ``[channels, height, width]``, scaled by its integer type like a file's (or kept uint8)."""
    if hasattr(array, "detach"):
        array = array.detach().cpu().numpy()
    array = np.asarray(array)
    if array.dtype.kind not in "biuf":
        raise ImageReadError(f"holds {array.dtype} values, not numbers")
    return np.ascontiguousarray(_scale(_channels_first(array, channels), keep_uint8))


def image_shape(path: str | Path, channels: int | None = None) -> tuple[int, int, int]:
    """``(channels, height, width)`` of an image file, reading as little as its format allows."""
    path = Path(path)
    suffix = path.suffix.lower()
    if path.is_dir():
        raise ImageReadError("is a folder, not an image file")
    if not path.is_file():
        raise ImageReadError("not found")
    try:
        if suffix in PIL_SUFFIXES:
            with _open_pil(path) as image:
                width, height = image.size
                return _pil_mode_channels(image.mode), height, width
        if suffix in NPY_SUFFIXES:
            array = _npy(path, mmap_mode="r")
            shape = _channels_first(array, channels).shape
            return int(shape[0]), int(shape[1]), int(shape[2])
    except OSError as exc:
        raise ImageReadError(f"cannot be read ({exc.strerror or exc})") from None
    shape = read_image(path, channels).shape
    return int(shape[0]), int(shape[1]), int(shape[2])

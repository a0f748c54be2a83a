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

import contextlib
import io
import re
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO, cast

import numpy as np

PIL_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp"}
TIFF_SUFFIXES = {".tif", ".tiff"}
NPY_SUFFIXES = {".npy"}
SUFFIXES = PIL_SUFFIXES | TIFF_SUFFIXES | NPY_SUFFIXES

#: The most pixels (height x width) an image may have: 2**26, 8192x8192. A file's header says
#: its size, and a larger image is refused from the header, before its pixels are decoded: a
#: compressed file of a few hundred kilobytes (a PNG of zeros) can claim gigapixels, which take
#: gigabytes and minutes to decode. Photographs, scans and satellite tiles a model reads are far
#: smaller; cut larger ones into tiles.
MAX_PIXELS = 2**26
MAX_SIDE = 8192  # the square of MAX_PIXELS, for messages
#: The most values (channels x pixels) an image may have: 2**28, 1 GiB as float32 (a 4-channel
#: 8192x8192 image, or a 64-band 2048x2048 one), for the same reason.
MAX_VALUES = 2**28


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
    with np.errstate(over="ignore"):  # float64 beyond float32's range: inf, refused after
        return array.astype(np.float32, copy=False)


def _channels_last(shape: tuple[int, ...], channels: int | None) -> bool:
    """Whether an array of ``shape`` holds its channels last (see the module's docstring)."""
    return (len(shape) == 3 and channels is not None and shape[-1] == channels
            and shape[0] != channels)


def _layout(shape: tuple[int, ...], channels: int | None) -> tuple[int, int, int]:
    """``(channels, height, width)`` of an array of ``shape``, checked to be an image no larger
    than :data:`MAX_PIXELS` and :data:`MAX_VALUES`, with at least one pixel."""
    if len(shape) == 2:
        found = (1, int(shape[0]), int(shape[1]))
    elif len(shape) == 3:
        first, second, last = (int(n) for n in shape)
        found = ((last, first, second) if _channels_last(shape, channels)
                 else (first, second, last))
    else:
        raise ImageReadError(f"holds an array of shape {list(shape)}, not an image"
                             " ([channels, height, width] or [height, width])")
    return _bounded(*found, shape=shape)


def _bounded(channels: int, height: int, width: int,
             shape: tuple[int, ...] | None = None) -> tuple[int, int, int]:
    """``(channels, height, width)``, refused when empty or larger than the limits above."""
    if min(channels, height, width) <= 0:
        stored = list(shape) if shape is not None else [channels, height, width]
        raise ImageReadError(f"holds an empty array of shape {stored}: an image needs at least"
                             " one channel and one pixel")
    if height * width > MAX_PIXELS:
        raise ImageReadError(f"is {height}x{width} pixels, more than the {MAX_PIXELS:,}"
                             f" ({MAX_SIDE}x{MAX_SIDE}) an image may have; resize it or cut"
                             " it into tiles")
    if channels * height * width > MAX_VALUES:
        raise ImageReadError(f"holds {channels} channels of {height}x{width} pixels, more than"
                             f" the {MAX_VALUES:,} values an image may have; resize it or cut"
                             " it into tiles")
    return channels, height, width


def _channels_first(array: np.ndarray, channels: int | None) -> np.ndarray:
    _layout(array.shape, channels)
    if array.ndim == 2:
        return array[None]
    if _channels_last(array.shape, channels):
        return np.moveaxis(array, -1, 0)
    return array


def _pil_mode_channels(mode: str) -> int:
    return {"1": 1, "L": 1, "P": 3, "I": 1, "F": 1, "I;16": 1, "I;16B": 1, "I;16L": 1,
            "LA": 2, "RGB": 3, "RGBA": 4, "CMYK": 4, "YCbCr": 3, "LAB": 3, "HSV": 3}.get(mode, 3)


@contextlib.contextmanager
def _pillow_bounded() -> Iterator[None]:
    """Pillow, with its own decompression-bomb check quiet: the size is checked here, from the
    header, against a lower limit (:data:`MAX_PIXELS`), and an image too large for Pillow's
    limit too is a refused image like any other, not Pillow's error or warning."""
    from PIL import Image

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            yield
        except Image.DecompressionBombError as exc:
            found = re.search(r"\((\d+) pixels\)", str(exc))
            size = f"{int(found.group(1)):,} pixels" if found else "larger than Pillow reads"
            raise ImageReadError(f"is {size}, more than the {MAX_PIXELS:,} ({MAX_SIDE}x{MAX_SIDE})"
                                 " an image may have; resize it or cut it into tiles") from None


def _open_pil(path: Path | BinaryIO):
    """The image at ``path``, opened (its header read) and checked to be no larger than the
    limits above; open it inside :func:`_pillow_bounded`."""
    from PIL import Image, UnidentifiedImageError

    try:
        image = Image.open(path)
    except UnidentifiedImageError:
        raise ImageReadError("is not an image Pillow can read") from None
    width, height = image.size
    try:
        _bounded(_pil_mode_channels(image.mode), height, width)
    except ImageReadError:
        image.close()
        raise
    return image


def _pil_array(path: Path | BinaryIO) -> np.ndarray:
    with _pillow_bounded(), _open_pil(path) as image:
        if image.mode == "P":
            image = image.convert("RGBA" if "transparency" in image.info else "RGB")
        elif image.mode in ("I", "I;16B", "I;16L"):
            image = image.convert("I;16") if image.mode != "I" else image
        array = np.array(image)  # a writable copy: batches are built from it
    if array.dtype == np.int32:  # mode "I": 32-bit integers, kept as values
        array = array.astype(np.float32)
    return array


def _tiff(path: Path, channels: int | None, read: bool = True) -> np.ndarray | tuple[int, int, int]:
    """The image of a TIFF file, or with ``read=False`` its ``(channels, height, width)`` from
    the file's header; either way checked against the limits above before pixels are read."""
    try:
        import tifffile
    except ImportError:
        try:
            if not read:
                with _pillow_bounded(), _open_pil(path) as image:
                    width, height = image.size
                    return _pil_mode_channels(image.mode), height, width
            return _pil_array(path)
        except ImageReadError as exc:
            if str(exc) != "is not an image Pillow can read":
                raise  # too large, or empty: said as for any image
            raise ImageReadError("cannot be read without tifffile (multi-band TIFF):"
                                 " pip install 'polymodal[tiff]'") from None
        except OSError:
            raise ImageReadError("cannot be read without tifffile (multi-band TIFF):"
                                 " pip install 'polymodal[tiff]'") from None
    import logging

    # tifffile logs what it finds wrong in a file; the error below says it once, with the row.
    logging.getLogger("tifffile").setLevel(logging.CRITICAL)
    try:
        with tifffile.TiffFile(str(path)) as tiff:
            shape = tuple(tiff.series[0].shape) if tiff.series else ()
            if not shape or 0 in shape:
                raise ImageReadError("is not a readable TIFF file (it holds no image data)")
            found = _layout(shape, channels)  # before the pixels are read
            if not read:
                return found
            array = tiff.asarray()  # what tifffile.imread reads: the first series
    except (ImageReadError, FileNotFoundError):
        raise
    except Exception as exc:  # noqa: BLE001 - tifffile raises many kinds for bad files
        raise ImageReadError(f"is not a readable TIFF file ({exc})") from None
    if array.size == 0:
        raise ImageReadError("is not a readable TIFF file (it holds no image data)")
    return array


def _npy_header(handle: BinaryIO, channels: int | None) -> tuple[int, int, int]:
    """``(channels, height, width)`` from the header of the .npy file open in ``handle``, checked
    to hold numbers and to be no larger than the limits above."""
    from numpy.lib import format as npy

    try:
        version = npy.read_magic(handle)
        header = npy.read_array_header_1_0 if version == (1, 0) else npy.read_array_header_2_0
        shape, _, dtype = header(handle)
    except ValueError:
        raise ImageReadError("is not a .npy file (it lacks the .npy header)") from None
    if dtype.hasobject:
        raise ImageReadError("holds Python objects, not numbers")
    if dtype.kind not in "biuf":
        raise ImageReadError(f"holds {dtype} values, not numbers")
    return _layout(shape, channels)


def _npy(path: Path, channels: int | None) -> np.ndarray:
    with path.open("rb") as handle:
        _npy_header(handle, channels)  # before the values are read
        try:
            handle.seek(0)  # one open per image: these are read for every batch
            return np.load(handle, allow_pickle=False)
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
            array = _npy(path, channels)
        elif suffix in TIFF_SUFFIXES:
            array = cast(np.ndarray, _tiff(path, channels))
        else:
            try:
                array = _pil_array(path)
            except ImageReadError:
                if suffix == ".png":  # one too large for Pillow: said as HxW, as when checked
                    _png_shape(path)
                raise
    except FileNotFoundError:
        raise ImageReadError("not found") from None
    except OSError as exc:
        raise ImageReadError(f"cannot be read ({exc.strerror or exc})") from None
    if suffix in PIL_SUFFIXES:
        return _from_pillow(array, channels, keep_uint8)
    return image_array(array, channels, keep_uint8=keep_uint8)


def _from_pillow(array: np.ndarray, channels: int | None, keep_uint8: bool) -> np.ndarray:
    if array.ndim == 3:  # Pillow gives channels last
        return image_array(np.moveaxis(array, -1, 0), keep_uint8=keep_uint8)
    return image_array(array, channels, keep_uint8=keep_uint8)


def _pillow_type(data: bytes) -> bool:
    """Whether ``data`` starts as a file Pillow reads here: PNG, JPEG, BMP, GIF or WebP."""
    return (data.startswith((_PNG_SIGNATURE, _JPEG_SIGNATURE, b"BM", b"GIF87a", b"GIF89a"))
            or (data[:4] == b"RIFF" and data[8:12] == b"WEBP"))


def is_image_file(data: bytes) -> bool:
    """Whether ``data`` (a file's bytes) is, by its first bytes, of a type :func:`read_image`
    reads: PNG, JPEG, BMP, GIF, WebP, TIFF (either byte order) or .npy."""
    return _pillow_type(data) or data.startswith((b"II*\x00", b"MM\x00*", b"\x93NUMPY"))


def read_image_data(data: bytes, channels: int | None = None, *,
                    keep_uint8: bool = False) -> np.ndarray | None:
    """The image in ``data``, the bytes of a file Pillow reads (PNG, JPEG, BMP, GIF, WebP), as
    :func:`read_image` reads such a file (within the same limits, its size checked from its
    header before it is decoded); None where ``data`` is of another type."""
    if not _pillow_type(data):
        return None
    try:
        array = _pil_array(io.BytesIO(data))
    except ImageReadError:
        if data.startswith(_PNG_SIGNATURE):  # one too large for Pillow: said as HxW
            _png_header_shape(data[:26])
        raise
    except OSError as exc:
        raise ImageReadError(f"cannot be read ({exc.strerror or exc})") from None
    return _from_pillow(array, channels, keep_uint8)


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
    image = _scale(_channels_first(array, channels), keep_uint8)
    if array.dtype.kind == "f":  # integers (and so 8- and 16-bit files) are always finite
        finite = np.isfinite(image)
        if not finite.all():
            beyond = " or beyond float32's range" if array.dtype.itemsize > 4 else ""
            raise ImageReadError(f"holds {finite.size - int(np.count_nonzero(finite)):,} value(s)"
                                 f" that are not finite numbers (NaN or infinite{beyond})")
    return np.ascontiguousarray(image)


#: A PNG's channels by the colour type its header gives (as Pillow opens it: grey, RGB, grey
#: and alpha, RGBA). A palette (3) is Pillow's to say: its transparency adds a channel.
_PNG_CHANNELS = {0: 1, 2: 3, 4: 2, 6: 4}
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_JPEG_SIGNATURE = b"\xff\xd8\xff"


def _png_shape(path: Path) -> tuple[int, int, int] | None:
    """``(channels, height, width)`` from a PNG file's first 26 bytes, without Pillow (a batch
    of small files is checked several times faster); None where the file is no PNG or its
    header is Pillow's to read (a palette, an unknown colour type)."""
    with path.open("rb") as handle:
        return _png_header_shape(handle.read(26))


def _png_header_shape(head: bytes) -> tuple[int, int, int] | None:
    """:func:`_png_shape` of a PNG file's first 26 bytes."""
    if len(head) < 26 or head[:8] != _PNG_SIGNATURE or head[12:16] != b"IHDR":
        return None
    width, height = int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")
    channels = _PNG_CHANNELS.get(head[25])
    return None if channels is None else _bounded(channels, height, width)


def image_shape(path: str | Path, channels: int | None = None) -> tuple[int, int, int]:
    """``(channels, height, width)`` of an image file, reading as little as its format allows."""
    path = Path(path)
    suffix = path.suffix.lower()
    if path.is_dir():
        raise ImageReadError("is a folder, not an image file")
    if not path.is_file():
        raise ImageReadError("not found")
    try:
        shape = _png_shape(path) if suffix == ".png" else None
        if shape is not None:
            return shape
        if suffix in PIL_SUFFIXES:
            with _pillow_bounded(), _open_pil(path) as image:
                width, height = image.size
                # a palette with transparency is read as RGBA (_pil_array)
                alpha = image.mode == "P" and "transparency" in image.info
                return 4 if alpha else _pil_mode_channels(image.mode), height, width
        if suffix in NPY_SUFFIXES:
            with path.open("rb") as handle:
                return _npy_header(handle, channels)
        if suffix in TIFF_SUFFIXES:
            return cast(tuple[int, int, int], _tiff(path, channels, read=False))
    except OSError as exc:
        raise ImageReadError(f"cannot be read ({exc.strerror or exc})") from None
    shape = read_image(path, channels).shape
    return int(shape[0]), int(shape[1]), int(shape[2])

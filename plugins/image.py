"""The ``image`` adapter: images of any channel count, normalised, optionally projected."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import Field, PositiveInt, field_validator, model_validator
from torch import nn

from polymodal.plugin import (
    AdapterConfig,
    Codec,
    DataError,
    FeatureMap,
    ModalityAdapter,
    RowIssues,
    Signal,
    State,
    Table,
    changed_options,
    hookimpl,
    is_missing,
)

from ._augment import Augment, augment_images
from ._images import (
    ImageReadError,
    image_array,
    image_shape,
    is_image_array,
    is_image_file,
    read_image,
    read_image_data,
)

#: The plugin interface this module is written for.
POLYMODAL_PLUGIN_API = 2

#: Normalisation presets: band -> (mean, std). Channels follow the input's ``bands`` (RGB
#: order when none are named).
PRESETS = {
    "imagenet": {"red": (0.485, 0.229), "green": (0.456, 0.224), "blue": (0.406, 0.225)},
}
RGB = ("red", "green", "blue")


class ImageAdapter(ModalityAdapter):
    """Images of any channel count (RGB, 1-channel scans, multispectral), with optional 1x1 projection.

    Takes a float tensor ``[B, channels, H, W]``, or a uint8 one that it scales to 0..1 (as
    8-bit image files are read; batches read from a table travel as uint8 where they can, a
    quarter of the bytes to copy to a GPU). Per-channel normalisation (``mean``/``std``,
    or the ``imagenet`` preset for RGB) is stored as buffers in the model file. ``project_to``
    adds a learned 1x1 convolution to the backbone's channel count, so inputs with different
    channel counts can share one backbone. The projection has no normalisation layer unless
    ``projection_norm`` is set: a second normalisation in front of a backbone that normalises
    its own stem can cancel what the projection learns.

    Without a projection the images go to the backbone as they are: set the backbone's
    ``in_chans`` to ``channels`` and its pretrained RGB stem is adapted to them. ``bands`` names
    the channels (``[red, green, blue, nir, swir1]``): the backbone then gives bands named red,
    green and blue their pretrained filters and the others the filters' mean (a warning says
    when no band has one of these names, e.g. a sensor's own names B04, B03, B02). Band names are
    part of the spec, so they travel in the model file.
    """

    class Config(AdapterConfig):
        type: Literal["image"] = "image"
        channels: PositiveInt = Field(3, description="Channels of the input images.", le=4096)
        project_to: PositiveInt | None = Field(
            None, description="Learned 1x1 projection to this many channels (for a backbone"
            " built for another channel count). None: no projection.", le=4096)
        projection_norm: bool = Field(
            False, description="BatchNorm after the projection (off by default, see above).")
        normalize: Literal["imagenet"] | None = Field(
            None, description="A normalisation preset; `imagenet` is for red, green and blue"
            " (in `bands` order when bands are named, RGB otherwise).")
        mean: list[float] | None = Field(
            None, description="Per-channel mean subtracted from the input (one per channel).")
        std: list[float] | None = Field(
            None, description="Per-channel standard deviation dividing the input (one per channel).")
        bands: list[str] | None = Field(
            None, description="A name for each channel, e.g. [red, green, blue, nir, swir1]; a"
            " pretrained backbone stem keeps its filters for red, green and blue.")
        column: str | None = Field(
            None, description="Table column with image file paths (relative to the table's"
            " folder; PNG/JPEG, .npy, TIFF) or, in a DataFrame or dict of columns, the images"
            " themselves (arrays or tensors); default: the input's name. Training fills in"
            " mean/std from the training images unless normalize, mean or std is given.",
            min_length=1)
        size: PositiveInt | list[PositiveInt] | None = Field(
            None, description="Resize images read from files to size (square) or [height,"
            " width]; None: every image must have the same size.")
        augment: Augment | None = Field(
            None, description="Training on a table: augmentation of each training batch,"
            " correct for any channel count: `hflip`, `vflip` (random flips), `rot90` (random"
            " quarter turns; half turns for images that are not square), `crop_padding` (pad"
            " by that many pixels reflecting the border, crop back at a random place),"
            " `noise_std` (gaussian noise on the 0..1 pixel values); e.g. {hflip: true,"
            " crop_padding: 4}. None: no augmentation.")

        @field_validator("size")
        @classmethod
        def _check_size(cls, value):
            if isinstance(value, list) and len(value) != 2:
                raise ValueError("size is one number or [height, width]")
            return value

        @model_validator(mode="after")
        def _check_stats(self):
            if self.bands is not None:
                if len(self.bands) != self.channels:
                    raise ValueError(f"bands has {len(self.bands)} names but the input has"
                                     f" {self.channels} channels")
                lowered = [b.strip().lower() for b in self.bands]
                if any(not b for b in lowered):
                    raise ValueError("band names must not be empty")
                twice = sorted({b for b in lowered if lowered.count(b) > 1})
                if twice:
                    raise ValueError(f"bands names {', '.join(twice)} more than once")
            if self.normalize is not None and (self.mean is not None or self.std is not None):
                raise ValueError("give either normalize or mean/std, not both")
            if self.normalize is not None:
                names = self.band_names() or RGB
                if len(names) != self.channels or any(b not in PRESETS[self.normalize] for b in names):
                    raise ValueError(
                        f"normalize: {self.normalize} is for 3 channels red, green and blue; this"
                        f" input has {self.channels}"
                        + (f" ({', '.join(names)})" if self.bands else "")
                        + "; give mean and std per channel instead")
            for name, values in (("mean", self.mean), ("std", self.std)):
                if values is not None and len(values) != self.channels:
                    raise ValueError(
                        f"{name} has {len(values)} values but the input has {self.channels} channels")
            if self.std is not None and any(s <= 0 for s in self.std):
                raise ValueError("std values must be > 0")
            return self

        def describe(self) -> str:
            projected = f", 1x1 projection to {self.project_to}" if self.project_to is not None else ""
            return f"image, {self.channels} channel{'s' if self.channels > 1 else ''}{projected}"

        def diagram_settings(self) -> list[str]:
            # describe() shows the channels and projection; column and size only say how
            # files are read.
            return changed_options(self, skip=("channels", "project_to", "column", "size"))

        def band_names(self) -> tuple[str, ...] | None:
            """The bands, normalised (lower case), or None when not named."""
            return tuple(b.strip().lower() for b in self.bands) if self.bands else None

        def gives(self) -> Signal:
            size = self.image_size()
            if self.project_to is not None:
                return FeatureMap(self.project_to, size=size)
            return FeatureMap(self.channels, self.band_names(), size)

        def image_size(self) -> tuple[int, int] | None:
            """``(height, width)`` of every image when ``size`` resizes them; None: any size."""
            if self.size is None:
                return None
            return (self.size, self.size) if isinstance(self.size, int) else (self.size[0], self.size[1])

        def codec(self, name: str, where: str) -> ImageCodec:
            return ImageCodec(self, name, where)

        def fix_for(self, wanted: Signal) -> str | None:
            if isinstance(wanted, FeatureMap):
                fix = f"set project_to: {wanted.channels} (a learned 1x1 projection)"
                if self.project_to is None:
                    fix += (f", or, where no input of another channel count shares the"
                            f" backbone, its in_chans: {self.channels} (its stem built for them;"
                            " from the RGB filters where its weights are pretrained)")
                return fix
            return None

    config: Config
    mean: torch.Tensor  # buffers, when the config normalizes
    std: torch.Tensor

    example_options = {"channels": 3}
    exportable = True

    def __init__(self, config: Config, takes: None = None):
        super().__init__(config, takes)
        mean, std = config.mean, config.std
        if config.normalize is not None:
            preset = PRESETS[config.normalize]
            names = config.band_names() or RGB
            mean = [preset[b][0] for b in names]
            std = [preset[b][1] for b in names]
        self.normalizes = mean is not None or std is not None
        if self.normalizes:
            shape = (1, config.channels, 1, 1)
            mean_t = torch.tensor(mean or [0.0] * config.channels, dtype=torch.float32)
            std_t = torch.tensor(std or [1.0] * config.channels, dtype=torch.float32)
            self.register_buffer("mean", mean_t.view(shape))
            self.register_buffer("std", std_t.view(shape))
        if config.project_to is not None:
            layers: list[nn.Module] = [
                nn.Conv2d(config.channels, config.project_to, kernel_size=1,
                          bias=not config.projection_norm)
            ]
            if config.projection_norm:
                layers.append(nn.BatchNorm2d(config.project_to))
            self.projection: nn.Module = nn.Sequential(*layers)
        else:
            self.projection = nn.Identity()

    def example_input(self, batch_size: int = 2) -> torch.Tensor:
        return torch.rand(batch_size, self.config.channels, 32, 32)

    def export_example(self, batch_size: int = 2,
                       state: Mapping[str, Any] | None = None) -> torch.Tensor:
        """Float images of the size the model reads: ``size``, else the size trained on."""
        size = self.config.size
        if size is None:
            size = state["shape"] if state and state.get("shape") else 32
        height, width = (size, size) if isinstance(size, int) else size
        return torch.rand(batch_size, self.config.channels, height, width)

    def export_form(self, images: torch.Tensor) -> torch.Tensor:
        """An exported model takes float32 images in 0..1 (uint8 ones scaled, as here)."""
        return _scaled(images).to(torch.float32)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.dim() != 4 or images.shape[1] != self.config.channels:
            raise DataError(
                f"image input: expected a [batch, {self.config.channels}, height, width] tensor,"
                f" got shape {list(images.shape)}")
        images = _scaled(images)
        if self.normalizes:
            images = (images - self.mean) / self.std
        return self.projection(images)


# -- reading tables ----------------------------------------------------------------------------

#: Images read to fit the per-channel statistics (evenly spaced over the training rows).
STATISTICS_SAMPLE = 256


class _FitReads:
    """The images the statistics pass read, kept (up to :data:`LIMIT` bytes) for the first
    epoch's batches to take instead of decoding them again, each once. An image is known by its
    file's path, size and modification time, so a file changed since is read anew. What the
    first epoch does not take (it ran in worker processes) stays until the next pass."""

    LIMIT = 64 * 2**20

    def __init__(self) -> None:
        self.images: dict[tuple[str, int, int, int, bool], np.ndarray] = {}
        self.size = 0

    @staticmethod
    def _key(path: Path, channels: int, keep_uint8: bool) -> tuple[str, int, int, int, bool] | None:
        try:
            found = path.stat()
        except OSError:
            return None
        return str(path), found.st_size, found.st_mtime_ns, channels, keep_uint8

    def put(self, path: Path, channels: int, keep_uint8: bool, image: np.ndarray) -> None:
        key = self._key(path, channels, keep_uint8)
        if key is not None and self.size + image.nbytes <= self.LIMIT:
            self.images[key] = image
            self.size += image.nbytes

    def take(self, path: Path, channels: int, keep_uint8: bool) -> np.ndarray | None:
        if not self.images:
            return None
        key = self._key(path, channels, keep_uint8)
        image = self.images.pop(key, None) if key is not None else None
        if image is not None:
            self.size -= image.nbytes
        return image

    def clear(self) -> None:
        self.images.clear()
        self.size = 0


_FIT_READS = _FitReads()


@dataclass(frozen=True)
class SentImage:
    """An image file a client sent ``polymodal serve``, decoded on arrival (:meth:`ImageCodec.
    read_sent`): the pixels (``[channels, height, width]``, 8-bit kept as uint8) and the name
    messages give it, the one it was sent with."""

    pixels: np.ndarray
    name: str


class ImageCodec(Codec[ImageAdapter.Config]):
    """Reads the images of the adapter's column (files, or arrays held in the cells) into
    ``[B, channels, H, W]`` batches, learns per-channel mean and standard deviation on the
    training images, and augments training batches with the config's N-channel-safe
    operations."""

    reads_files = True  # the cells are image file paths (or arrays)

    def column(self) -> str:
        return self.config.column or self.name

    def keep_encoded(self) -> bool:
        return True  # decoded pixels depend on the file alone; augmentation comes after

    def columns(self) -> list[str]:
        return [self.column()]

    def _target_size(self) -> tuple[int, int] | None:
        return self.config.image_size()

    def expects(self, state: State) -> dict[str, Any]:
        """The channels (named where ``bands`` names them) and the size, height and width:
        the size images are resized to, or the size every image must have."""
        size = self._target_size() or (tuple(state["shape"]) if state.get("shape") else None)
        found: dict[str, Any] = {"channels": self.config.channels}
        bands = self.config.band_names()
        if bands:
            found["bands"] = list(bands)
        if size is not None:
            found.update(height=size[0], width=size[1], resized=self._target_size() is not None)
        return found

    def parts(self) -> list[str]:
        """Each band (channel) is explained on its own, by its name where the adapter names
        them (``bands``), else ``channel_1``, ``channel_2``, ..."""
        return list(self.config.band_names() or
                    [f"channel_{i + 1}" for i in range(self.config.channels)])

    def permute_part(self, value: torch.Tensor, part: str, order: torch.Tensor) -> torch.Tensor:
        channel = self.parts().index(part)
        out = value.clone()
        out[:, channel] = value[order, channel]
        return out

    def attribution_value(self, value: torch.Tensor) -> torch.Tensor:
        return _scaled(value)  # the adapter takes 0..1 floats as it takes uint8 pixels

    def attribution_pictures(self, value: torch.Tensor, attribution: torch.Tensor) -> dict[str, np.ndarray]:
        """Per group of up to three bands (``rgb`` for a 3-band image): the image, the
        attribution as a grey map, and the image with the attribution laid over it in red."""
        from ._attribution import pictures

        return pictures(value, attribution, self.parts())

    def read_sent(self, data: bytes, name: str) -> SentImage | None:
        """A sent PNG, JPEG, BMP, GIF or WebP file, decoded where the request is read (as
        :meth:`encode` reads a file: the size checked from the header first); TIFF and .npy
        files are written and read from their path. The type is told by the first bytes,
        whatever the name says: a file of no type the adapter reads is refused here."""
        try:
            pixels = read_image_data(data, self.config.channels, keep_uint8=True)
        except ImageReadError as exc:
            raise DataError(f"image {name!r} {exc}") from None
        if pixels is not None:
            return SentImage(pixels, name)
        if not is_image_file(data):
            raise DataError(f"image {name!r} is not a PNG, JPEG, TIFF or .npy file (nor BMP,"
                            " GIF or WebP)")
        return None

    def absent(self, table: Table) -> np.ndarray:
        """A row whose cell is empty (no path: empty text, NaN, None) holds no image."""
        return np.fromiter((not is_image_array(v) and is_missing(v)
                            for v in table.columns[self.column()]), bool, len(table))

    def _source(self, table: Table, position: int, issues: RowIssues) -> Path | Any | None:
        """The cell's image file path, or the image the cell holds (an array, or a sent image
        decoded on arrival); None when empty."""
        value = table.columns[self.column()][position]
        if is_image_array(value) or isinstance(value, SentImage):
            return value
        if is_missing(value):
            issues.bad_row(position, self.column(), "no image path (empty)")
            return None
        path = Path(str(value).strip())
        return path if path.is_absolute() else table.base_dir / path

    def _wrong_channels(self, channels: int) -> str:
        return (f"has {channels} channel(s) but {self.where}.channels is"
                f" {self.config.channels}")

    def check(self, table: Table, issues: RowIssues, state: State | None) -> None:
        wanted = self._target_size() or (tuple(state["shape"]) if state else None)
        for position in range(len(table)):
            source = self._source(table, position, issues)
            if source is None:
                continue
            named = self._name(table, position)
            try:
                if isinstance(source, Path):
                    channels, height, width = image_shape(source, self.config.channels)
                elif isinstance(source, SentImage):
                    channels, height, width = source.pixels.shape
                else:
                    channels, height, width = image_array(
                        source, self.config.channels, keep_uint8=True).shape
            except ImageReadError as exc:
                issues.bad_row(position, self.column(), self._unreadable(table, position, exc))
                continue
            if channels != self.config.channels:
                issues.bad_row(position, self.column(), f"{named} {self._wrong_channels(channels)}")
            elif self._target_size() is None:
                if wanted is None:
                    wanted = (height, width)
                elif (height, width) != tuple(wanted):
                    issues.bad_row(position, self.column(),
                                   self._wrong_size(named, (height, width), wanted, state))

    def _wrong_size(self, named: str, size: tuple[int, ...], wanted: tuple[int, ...],
                    state: State | None) -> str:
        return (f"{named} is {size[0]}x{size[1]} (height x width) but"
                f" {self._size_fix(wanted, state)}")

    def _size_fix(self, wanted: tuple[int, ...], state: State | None) -> str:
        size = f"{wanted[0]}x{wanted[1]}"
        if state:  # a trained model: its spec is fixed, the images are what can change
            return (f"the model was trained on {size}; resize the images to {size} (a model"
                    f" trained with {self.where}.size resizes them itself)")
        return f"the others are {size}; set {self.where}.size to resize"

    def _name(self, table: Table, position: int) -> str:
        """How messages name the image of a row: its path as written, or the array's shape."""
        value = table.columns[self.column()][position]
        if is_image_array(value):
            return f"image array of shape {list(value.shape)}"
        if isinstance(value, SentImage):
            return f"image {value.name!r}"
        return f"image {value!r}"

    def _unreadable(self, table: Table, position: int, problem: ImageReadError) -> str:
        message = f"{self._name(table, position)} {problem}"
        value = table.columns[self.column()][position]
        if str(problem) == "not found" and not is_image_array(value) and not Path(str(value).strip()).is_absolute():
            # Where a relative path was looked up: the table's folder, in full.
            message += f" in {Path(table.base_dir).resolve()}"
        return message

    def _read(self, table: Table, position: int, issues: RowIssues,
              keep_uint8: bool = False, keep: bool = False) -> np.ndarray | None:
        source = self._source(table, position, issues)
        if source is None:
            return None
        try:
            if isinstance(source, Path):
                channels = self.config.channels
                image = _FIT_READS.take(source, channels, keep_uint8)
                if image is None:
                    image = read_image(source, channels, keep_uint8=keep_uint8)
                    if keep:
                        _FIT_READS.put(source, channels, keep_uint8, image)
            elif isinstance(source, SentImage):  # read as the request was (keep_uint8: encode)
                image = source.pixels if keep_uint8 else image_array(source.pixels)
            else:
                image = image_array(source, self.config.channels, keep_uint8=keep_uint8)
        except ImageReadError as exc:
            issues.bad_row(position, self.column(), self._unreadable(table, position, exc))
            return None
        if image.shape[0] != self.config.channels:
            issues.bad_row(position, self.column(),
                           f"{self._name(table, position)} {self._wrong_channels(image.shape[0])}")
            return None
        return image

    def _resize(self, image: np.ndarray) -> torch.Tensor:
        resized = self._resized([image])[0]
        assert resized is not None
        return resized

    def _resized(self, images: list[np.ndarray | None]) -> list[torch.Tensor | None]:
        """Each image at the adapter's size (``size``), those of one shape resized in one call:
        a batch of small images costs one resize, not one each."""
        tensors = [None if image is None else torch.from_numpy(image) for image in images]
        size = self._target_size()
        if size is None:
            return tensors
        alike: dict[tuple[Any, ...], list[int]] = {}
        for index, tensor in enumerate(tensors):
            if tensor is not None and tuple(tensor.shape[1:]) != size:
                alike.setdefault((*tensor.shape, tensor.dtype), []).append(index)
        for members in alike.values():
            batch = _scaled(torch.stack([tensors[k] for k in members]))  # type: ignore[misc]
            out = torch.nn.functional.interpolate(batch, size=size, mode="bilinear",
                                                  antialias=True, align_corners=False)
            for index, resized in zip(members, out):
                tensors[index] = resized
        return tensors

    def fit(self, table: Table) -> State:
        issues = RowIssues(table)
        count = len(table)
        positions = np.unique(np.linspace(0, count - 1, min(count, STATISTICS_SAMPLE)).astype(int))
        total = np.zeros(self.config.channels)
        total_sq = np.zeros(self.config.channels)
        pixels = 0
        shape = None
        _FIT_READS.clear()
        for position in positions:
            # Read as batches read it (8-bit kept, kept for the first epoch to take) and scaled
            # here as the adapter scales it: the same numbers as a float read.
            image = self._read(table, int(position), issues, keep_uint8=True, keep=True)
            if image is None:
                continue
            resized = _scaled(self._resize(image)).numpy().astype(np.float64)
            shape = list(resized.shape[1:])
            total += resized.sum(axis=(1, 2))
            total_sq += (resized**2).sum(axis=(1, 2))
            pixels += resized.shape[1] * resized.shape[2]
        # An image found bad only when its pixels are read (NaN values) is left out here: it is
        # a bad row when its batch is encoded, which --on-bad-row skip skips.
        if issues.bad and not pixels:
            raise DataError(next(iter(issues.bad.values())))
        mean = total / max(pixels, 1)
        std = np.sqrt(np.maximum(total_sq / max(pixels, 1) - mean**2, 0.0))
        std = np.where(std > 1e-6, std, 1.0)
        return {"mean": mean.tolist(), "std": std.tolist(), "shape": shape}

    def complete(self, state: State) -> dict[str, Any]:
        config = self.config
        if config.normalize is None and config.mean is None and config.std is None:
            return {"mean": state["mean"], "std": state["std"]}
        return {}

    def encode(self, table: Table, state: State, issues: RowIssues) -> torch.Tensor:
        """A batch of the rows' images: uint8 when every one is 8-bit and unresized (the
        adapter scales it to 0..1 where it runs), float32 otherwise."""
        shape = tuple(state["shape"]) if state.get("shape") else None
        images = self._resized([self._read(table, position, issues, keep_uint8=True)
                                for position in range(len(table))])
        for position, tensor in enumerate(images):
            if tensor is not None and shape is not None and tuple(tensor.shape[1:]) != shape:
                issues.bad_row(position, self.column(), self._wrong_size(
                    self._name(table, position), tuple(tensor.shape[1:]), shape, state))
                images[position] = None
        if shape is None:
            shape = next((tuple(t.shape[1:]) for t in images if t is not None), (1, 1))
        found = [t for t in images if t is not None]
        dtype = torch.uint8 if found and all(t.dtype == torch.uint8 for t in found) else torch.float32
        placeholder = torch.zeros(self.config.channels, *shape, dtype=dtype)
        if not images:
            return placeholder[None][:0]
        return torch.stack([placeholder if t is None else t if t.dtype == dtype else _scaled(t)
                            for t in images])

    def augment(self, value: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        if self.config.augment is None:
            return value
        return augment_images(value, self.config.augment, generator)


def _scaled(images: torch.Tensor) -> torch.Tensor:
    """Floating-point images; uint8 ones scaled to 0..1 as 8-bit image files are."""
    if images.dtype == torch.uint8:
        return images.float() / 255.0
    return images if images.is_floating_point() else images.float()


@hookimpl
def polymodal_components():
    return [ImageAdapter]

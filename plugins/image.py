"""The ``image`` adapter: images of any channel count, normalised, optionally projected."""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field, PositiveInt, model_validator
from torch import nn

import polymodal
from polymodal.components import AdapterConfig, ModalityAdapter
from polymodal.errors import DataError
from polymodal.signals import FeatureMap, Signal

PRESETS = {
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}


class ImageAdapter(ModalityAdapter):
    """Images of any channel count (RGB, 1-channel scans, multispectral), with optional 1x1 projection.

    Takes a float tensor ``[B, channels, H, W]``. Per-channel normalisation (``mean``/``std``,
    or the ``imagenet`` preset for RGB) is stored as buffers in the model file. ``project_to``
    adds a learned 1x1 convolution to the backbone's channel count, so inputs with different
    channel counts can share one backbone. The projection has no normalisation layer unless
    ``projection_norm`` is set: a second normalisation in front of a backbone that normalises
    its own stem can cancel what the projection learns.

    Without a projection the images go to the backbone as they are: set the backbone's
    ``in_chans`` to ``channels`` and its pretrained RGB stem is adapted to them. ``bands`` names
    the channels (``[red, green, blue, nir, swir1]``): the backbone then gives bands named red,
    green and blue their pretrained filters and the others the filters' mean. Band names are
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
            None, description="A normalisation preset; `imagenet` needs 3 channels.")
        mean: list[float] | None = Field(
            None, description="Per-channel mean subtracted from the input (one per channel).")
        std: list[float] | None = Field(
            None, description="Per-channel standard deviation dividing the input (one per channel).")
        bands: list[str] | None = Field(
            None, description="A name for each channel, e.g. [red, green, blue, nir, swir1]; a"
            " pretrained backbone stem keeps its filters for red, green and blue.")

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
            if self.normalize == "imagenet" and self.channels != 3:
                raise ValueError(
                    f"normalize: imagenet is for 3 channels, this input has {self.channels};"
                    " give mean and std per channel instead")
            for name in ("mean", "std"):
                values = getattr(self, name)
                if values is not None and len(values) != self.channels:
                    raise ValueError(
                        f"{name} has {len(values)} values but the input has {self.channels} channels")
            if self.std is not None and any(s <= 0 for s in self.std):
                raise ValueError("std values must be > 0")
            return self

        def describe(self) -> str:
            return f"image, {self.channels} channels"

        def gives(self) -> Signal:
            if self.project_to is not None:
                return FeatureMap(self.project_to)
            bands = tuple(b.strip().lower() for b in self.bands) if self.bands else None
            return FeatureMap(self.channels, bands)

        def fix_for(self, wanted: Signal) -> str | None:
            if isinstance(wanted, FeatureMap):
                fix = f"set project_to: {wanted.channels} (a learned 1x1 projection)"
                if self.project_to is None:
                    fix += (f", or the backbone's in_chans: {self.channels} (its stem adapted"
                            " from the pretrained RGB filters)")
                return fix
            return None

    example_options = {"channels": 3}

    def __init__(self, config: Config, takes: None = None):
        super().__init__(config, takes)
        stats = PRESETS.get(config.normalize) if config.normalize else None
        mean = stats[0] if stats else config.mean
        std = stats[1] if stats else config.std
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

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.dim() != 4 or images.shape[1] != self.config.channels:
            raise DataError(
                f"image input: expected a [batch, {self.config.channels}, height, width] tensor,"
                f" got shape {list(images.shape)}")
        if not images.is_floating_point():
            images = images.float()
        if self.normalizes:
            images = (images - self.mean) / self.std
        return self.projection(images)


@polymodal.hookimpl
def polymodal_components():
    return [ImageAdapter]

"""The image kit: what a plugin for images needs beyond the generic plugin API.

A backbone that wraps a library of pretrained image models subclasses
:class:`PretrainedImageConfig` for its config, and loads RGB-pretrained weights into a stem of
any channel count with :func:`adapt_and_load` (:func:`adapt_stem` adapts one stem weight; the
bands of an RGB stem are :data:`RGB_BANDS`). Part of the plugin API (docs/plugins.md) since 2.2;
polymodal's core uses none of it, so it holds everything that knows what an RGB stem is.
"""

from __future__ import annotations

import warnings
from typing import Literal

import torch
from pydantic import Field, PositiveInt, field_validator

from ._components import BackboneConfig
from ._errors import ConfigError, ConnectionMismatch, PolymodalError
from ._freezing import FREEZE_DESCRIPTION, Freeze, check_freeze
from ._signals import FeatureMap, Signal
from ._spec_files import SPEC_FOLDER
from ._weights import load_matching, weights_path

__all__ = ["RGB_BANDS", "PretrainedImageConfig", "adapt_and_load", "adapt_stem"]


#: The bands of an RGB-pretrained stem, in its input-channel order.
RGB_BANDS = ("red", "green", "blue")


def adapt_stem(
    weight: torch.Tensor, in_chans: int, bands: tuple[str, ...] | list[str] | None = None,
    pretrained_bands: tuple[str, ...] = RGB_BANDS,
) -> torch.Tensor:
    """A pretrained first-convolution weight ``[out, 3, kh, kw]`` adapted to ``in_chans`` inputs.

    Without ``bands``, the RGB filters are summed (1 channel) or repeated in turn (other
    counts), as timm's ``in_chans`` does. With ``bands`` (one name per input channel), a band
    named like a pretrained one (``red``, ``green``, ``blue``, any case) takes that filter and
    every other band the mean of the pretrained filters. Either way the result is scaled by
    ``3 / in_chans``, so an input that is uniform across channels gives the same stem response
    as it would in RGB (a stem followed by pretrained BatchNorm statistics stays calibrated).
    """
    if weight.dim() != 4 or weight.shape[1] != len(pretrained_bands):
        raise PolymodalError(
            f"cannot adapt a stem of weight shape {tuple(weight.shape)}: expected"
            f" {len(pretrained_bands)} input channels ({', '.join(pretrained_bands)})")
    source = weight.float()
    if bands is None:
        if in_chans == 1:
            adapted = source.sum(dim=1, keepdim=True)
            return adapted.to(weight.dtype)
        repeats = -(-in_chans // source.shape[1])
        adapted = source.repeat(1, repeats, 1, 1)[:, :in_chans]
    else:
        if len(bands) != in_chans:
            raise PolymodalError(f"{len(bands)} band names for a stem of {in_chans} channels")
        index = {b.lower(): i for i, b in enumerate(pretrained_bands)}
        if not any(b.lower() in index for b in bands):
            warnings.warn(
                f"no band of {list(bands)} is named {', '.join(pretrained_bands)}: every band"
                " starts from the mean of the pretrained filters. Name the bands that are"
                f" {', '.join(pretrained_bands)} to keep their filters.", stacklevel=2)
        mean = source.mean(dim=1)
        adapted = torch.stack(
            [source[:, index[b.lower()]] if b.lower() in index else mean for b in bands], dim=1)
    return (adapted * (len(pretrained_bands) / in_chans)).to(weight.dtype)


def adapt_and_load(module: torch.nn.Module, state: dict[str, torch.Tensor], *, source: str,
                   stem: str | None, in_chans: int, bands: tuple[str, ...] | None = None,
                   ignore_prefixes: tuple[str, ...] = ()) -> None:
    """Load RGB-pretrained ``state`` into ``module``, whose first convolution ``stem`` (a module
    path) takes ``in_chans`` channels named ``bands``: the stem's weight is adapted first."""
    key = f"{stem}.weight"
    if stem and key in state and state[key].dim() == 4 and state[key].shape[1] == 3 \
            and (in_chans != 3 or bands is not None):
        state = {**state, key: adapt_stem(state[key], in_chans, bands)}
    load_matching(module, state, source=source, ignore_prefixes=ignore_prefixes)


class PretrainedImageConfig(BackboneConfig):
    """Options of a backbone that wraps a library's image models: which model, its pretrained
    weights, its input channels, what it gives, and what of it trains. A subclass declares its
    ``type`` (and may redeclare ``model`` with its library's examples), and implements
    :meth:`shape` and :meth:`describe`."""

    model: str = Field(description="The library's model name.", min_length=1)
    pretrained: bool | str = Field(
        False, description="false; true (the library's default weights, from its local cache"
        " or downloaded); or the path of a local .safetensors/.pth weights file (a relative path"
        " is read from the spec file's folder).")
    in_chans: PositiveInt = Field(3, description="Input channels the backbone takes.", le=4096)

    @field_validator("pretrained")
    @classmethod
    def _weights_file_is_there(cls, value: bool | str) -> bool | str:
        # Checked while a spec file is read (its folder is known); a model file's spec is not
        # checked, since its weights come from the model file.
        if isinstance(value, str) and SPEC_FOLDER.get() is not None:
            try:
                weights_path(value)
            except PolymodalError as exc:
                raise ConfigError(str(exc)) from None
        return value
    output: Literal["vector", "feature_map", "tokens"] = Field(
        "vector", description="Pooled vector, last feature map, or its positions as tokens.")
    freeze: Freeze = Field("none", description=FREEZE_DESCRIPTION)

    def shape(self, takes: FeatureMap) -> tuple[Signal, tuple[Signal, ...]]:
        """What the model gives for this config's ``output`` from images ``takes`` (their
        channels, and their size where the adapter fixes it), and what each stage it exposes
        gives, in forward order.

        Measure it from the model as the library builds it (a weightless build on the meta
        device costs no memory) rather than assume it. Raise :class:`PolymodalError` saying why
        and what to change when the model cannot give it (an unknown name, an input size it
        cannot take, an output kind it has no form of)."""
        raise NotImplementedError

    def gives(self, takes: Signal) -> Signal:
        wanted = FeatureMap(self.in_chans)
        if not isinstance(takes, FeatureMap) or not wanted.fits(takes):
            raise ConnectionMismatch(f"takes {wanted.describe()}", wanted=wanted)
        features, stages = self.shape(takes)
        check_freeze(self.freeze, len(stages), self.describe())
        return features

    def stages(self, takes: Signal) -> tuple[Signal, ...]:
        assert isinstance(takes, FeatureMap), "stages are asked of the images gives accepted"
        return self.shape(takes)[1]

"""Pretrained weights: local weight files read without executing anything, RGB stems adapted
to other channel counts, and the options every backbone wrapping a library of pretrained image
models shares (:class:`PretrainedImageConfig`)."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Literal

import torch
from pydantic import Field, PositiveInt, field_validator

from ._components import BackboneConfig
from ._errors import ConfigError, ConnectionMismatch, PolymodalError, first_line
from ._freezing import FREEZE_DESCRIPTION, Freeze, check_freeze
from ._signals import FeatureMap, Signal
from ._spec_files import SPEC_FOLDER

SAFE_SUFFIXES = (".safetensors",)
TORCH_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt")


def weights_path(path: str | Path) -> Path:
    """The weights file ``path`` names, checked to be a regular file of a known kind. A relative
    ``path`` is read from the folder of the spec file being built, if any."""
    path = Path(path).expanduser()
    folder = SPEC_FOLDER.get()
    if not path.is_absolute() and folder is not None:
        path = folder / path
    if not path.is_file():
        where = " (a relative path is read from the spec file's folder)" if folder else ""
        if path.exists():
            raise PolymodalError(f"pretrained weights {path} is not a regular file{where}")
        raise PolymodalError(f"pretrained weights file not found: {path}{where}")
    if path.suffix.lower() not in SAFE_SUFFIXES + TORCH_SUFFIXES:
        raise PolymodalError(
            f"pretrained weights file {path}: unknown type {path.suffix.lower()!r};"
            " use .safetensors (or .pth/.pt holding a state dict)")
    return path


def read_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """A state dict from ``.safetensors`` (preferred) or ``.pth``/``.pt`` (weights-only load).
    A relative ``path`` is read from the folder of the spec file being built, if any."""
    path = weights_path(path)
    suffix = path.suffix.lower()
    state: object  # what the file holds, a state dict once checked below
    try:
        if suffix in SAFE_SUFFIXES:
            from safetensors.torch import load_file

            state = load_file(str(path))
        elif suffix in TORCH_SUFFIXES:
            _check_torch_file(path)
            # weights_only refuses arbitrary pickled objects: a checkpoint cannot run code.
            state = torch.load(str(path), map_location="cpu", weights_only=True)
        else:
            raise PolymodalError(
                f"pretrained weights file {path}: unknown type {suffix!r};"
                " use .safetensors (or .pth/.pt holding a state dict)"
            )
    except PolymodalError:
        raise
    except Exception as exc:  # noqa: BLE001 - any reader failure is a bad file
        said = first_line(exc, 300)
        if len(said) < 30:  # a bare key or index ("101") says nothing on its own
            said = f"{type(exc).__name__}: {said}"
        raise PolymodalError(f"cannot read pretrained weights {path}: {said}") from None
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(state, dict) and key in state and isinstance(state[key], dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise PolymodalError(f"pretrained weights {path}: not a state dict of tensors")
    return state


def _check_torch_file(path: Path) -> None:
    """Refuse a file that ``torch.save`` cannot have written (a zip archive, or the legacy
    format's pickle) before torch reads it and fails on some index of its own."""
    import zipfile

    with path.open("rb") as handle:
        head = handle.read(2)
    if not zipfile.is_zipfile(path) and head[:1] != b"\x80":
        raise PolymodalError(f"pretrained weights {path}: not a PyTorch weights file (neither"
                             " the zip archive nor the pickle that torch.save writes); give a"
                             " .safetensors file, or a state dict saved with torch.save")


def load_matching(
    module: torch.nn.Module, state: dict[str, torch.Tensor], *, source: str,
    ignore_prefixes: tuple[str, ...] = (),
) -> None:
    """Load ``state`` into ``module``; every module weight must be present with the right shape.

    Keys starting with ``ignore_prefixes`` (a classifier the backbone dropped) are skipped.
    """
    own = module.state_dict()
    state = {k: v for k, v in state.items() if not k.startswith(ignore_prefixes)}
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong = [f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in own.items()
             if k in state and state[k].shape != v.shape]
    if missing or wrong or unexpected:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} (e.g. {', '.join(missing[:3])})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {', '.join(unexpected[:3])})")
        if wrong:
            parts.append(f"{len(wrong)} of the wrong shape (e.g. {', '.join(wrong[:3])})")
        raise PolymodalError(f"pretrained weights {source} do not fit: " + "; ".join(parts))
    module.load_state_dict(state, strict=True)


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


def download_failed(what: str, exc: Exception, cache: str | None = None) -> PolymodalError:
    """The error for ``pretrained: true`` when the library could not fetch ``what``'s weights,
    neither from its local ``cache`` (where it keeps downloaded weights) nor from the network."""
    first = first_line(exc)
    where = f" the library's local cache ({cache}) or" if cache else ""
    return PolymodalError(
        f"pretrained: true could not fetch the weights of {what} ({type(exc).__name__}: {first})."
        f" Offline? pretrained: true reads{where} a download: fill that cache where a network is"
        " available, or download the weights and set pretrained: path/to/weights.safetensors")


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

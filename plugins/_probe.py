"""Measuring a library's image model before any weight exists (private to the built-in backbones).

A backbone states what it gives before it is built, so these helpers measure it from the model
itself rather than assume it: a build on the meta device (no memory, no weights, no
initialisation) runs a batch of meta images and every shape along the way is read. A
constructor that reads tensor values runs on the CPU, its parameters left uninitialised, and
the model moves to the meta device (:func:`on_default_device`, which the backbones' own
builds use too). Where the meta device cannot run a model's forward, a real build runs a tiny
batch instead; a failure there is the model's own.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, TypeVar

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from polymodal.plugin import FeatureMap, PolymodalError, Signal, Tokens, Vector

T = TypeVar("T")
M = TypeVar("M", bound=nn.Module)

#: Square input sizes tried, smallest first, when looking for the smallest a model takes.
SIZES = (32, 48, 64, 96, 128, 160, 192, 224, 256, 288, 320, 384, 448, 512)

#: How a 4-D or 3-D tensor is laid out: channels first or last, or a sequence of tokens.
Layout = Literal["NCHW", "NHWC", "NLC"]


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message, with its type when the message is empty."""
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


#: In-place operations that only write values (as weight initialisation does): on the meta
#: device there are none to write.
VALUE_WRITES = frozenset({
    "uniform_", "normal_", "trunc_normal_", "erfinv_", "clamp_", "clamp_min_", "clamp_max_",
    "clip_", "mul_", "add_", "sub_", "div_", "fill_", "zero_", "copy_", "exp_", "log_", "sqrt_",
    "pow_", "neg_", "abs_", "random_", "bernoulli_", "exponential_", "log_normal_", "cauchy_",
    "geometric_", "fill_diagonal_", "masked_fill_", "addcmul_", "addcdiv_", "floor_", "round_",
})


class _NoValueWrites(TorchFunctionMode):
    """Skips value writes to meta tensors (and, with ``parameters``, to parameters anywhere): a
    weightless build need not initialise weights (each write would otherwise run through Python
    decompositions, seconds for a small model; on the CPU, it would fill memory the build does
    not keep). A constructor's own computations on plain tensors are left to run."""

    def __init__(self, parameters: bool = False) -> None:
        super().__init__()
        self.parameters = parameters

    def __torch_function__(self, func, types, args=(), kwargs=None):
        target = args[0] if args else None
        if getattr(func, "__name__", "") in VALUE_WRITES and isinstance(target, torch.Tensor) \
                and (target.is_meta or self.parameters and isinstance(target, nn.Parameter)):
            return target
        return func(*args, **(kwargs or {}))


def weightless(build: Callable[[], T]) -> T:
    """``build()`` on the meta device: every tensor has a shape and no storage, and weight
    initialisation is skipped."""
    with torch.device("meta"), _NoValueWrites():
        return build()


def on_default_device(build: Callable[[], M]) -> M:
    """``build()`` of a library's model on the default device, the meta device included.

    A constructor that reads tensor values (RegNet computes its stage widths with tensors and
    reads them back) cannot run on the meta device, where a model file's load, the size
    measurement before a build and the probes build every model. There it runs on the CPU
    without initialising its parameters (their memory is reserved, never filled) and the model
    is moved to the meta device: the same shapes, no weights."""
    if torch.get_default_device().type != "meta":
        return build()
    try:
        return build()
    except Exception as exc:  # noqa: BLE001 - the meta device's refusal, or the model's own
        if not _meta_limitation(exc):
            raise
    with torch.device("cpu"), _NoValueWrites(parameters=True):
        net = build()
    return net.to("meta")


def measure(build: Callable[[], nn.Module], run: Callable[[nn.Module, torch.Tensor], T],
            channels: int, *sizes: tuple[int, int]) -> list[T | Exception]:
    """``run(model, images)`` for a batch of two ``channels x size`` images at each size, in eval
    mode and without gradients: its result, or the exception the model raised at that size.

    A meta build runs where it can; where the meta device cannot build or run the model, one
    real build runs instead. A real build that fails raises (the model cannot be built)."""
    try:
        net: nn.Module | None = weightless(build)
    except Exception:  # noqa: BLE001 - a constructor that reads tensor values: build for real
        net = None
    real: nn.Module | None = None
    results: list[T | Exception] = []
    for size in sizes:
        try:
            if net is not None:
                results.append(_run(net, run, channels, size, "meta"))
                continue
        except PolymodalError:
            raise
        except Exception as exc:  # noqa: BLE001 - the model's refusal, or the meta device's
            if not _meta_limitation(exc):
                results.append(exc)
                continue
        if real is None:
            with torch.device("cpu"):  # real, even where the caller builds on the meta device
                real = build()
        try:
            results.append(_run(real, run, channels, size, "cpu"))
        except PolymodalError:
            raise
        except Exception as exc:  # noqa: BLE001 - the model's refusal of this size
            results.append(exc)
    return results


def _meta_limitation(exc: Exception) -> bool:
    """Whether an exception on the meta device may be the device's (an operator it lacks, a
    value read from a tensor that has none) rather than the model's."""
    return isinstance(exc, NotImplementedError) or "meta" in str(exc).lower()


def meta_accepts(build: Callable[[], nn.Module], run: Callable[[nn.Module, torch.Tensor], object],
                 channels: int, size: tuple[int, int]) -> bool:
    """Whether a meta build runs ``size`` images (a cheap check; False also where the meta
    device cannot run the model at all)."""
    try:
        _run(weightless(build), run, channels, size, "meta")
    except Exception:  # noqa: BLE001 - any failure means: not this size
        return False
    return True


def smallest_size(build: Callable[[], nn.Module], run: Callable[[nn.Module, torch.Tensor], object],
                  channels: int) -> int | None:
    """The smallest of :data:`SIZES` (square) one meta build runs; None: none does, or the meta
    device cannot build the model."""
    try:
        net = weightless(build)
    except Exception:  # noqa: BLE001 - no cheap answer: the caller says less
        return None
    for size in SIZES:
        try:
            _run(net, run, channels, (size, size), "meta")
        except Exception:  # noqa: BLE001 - not this size
            continue
        return size
    return None


def _run(net: nn.Module, run: Callable[[nn.Module, torch.Tensor], T], channels: int,
         size: tuple[int, int], device: str) -> T:
    net.eval()
    with torch.no_grad():
        return run(net, torch.zeros(2, channels, *size, device=device))


def layout_of(x: object, width: int | None = None,
              channels_last: bool = False) -> tuple[Layout, int] | None:
    """How a tensor is laid out and its feature width: ``NLC`` for ``[B, N, C]``; for 4-D,
    ``NCHW`` or ``NHWC``, whichever has ``width`` channels (the model's stated order first when
    both do, or when ``width`` is not known). None: not a feature map or tokens of ``width``."""
    if not isinstance(x, torch.Tensor):
        return None
    if x.dim() == 3:
        return ("NLC", int(x.shape[2])) if width is None or x.shape[2] == width else None
    if x.dim() == 4:
        for layout in (("NHWC", "NCHW") if channels_last else ("NCHW", "NHWC")):
            channels = int(x.shape[3] if layout == "NHWC" else x.shape[1])
            if width is None or channels == width:
                return layout, channels
    return None


def as_feature_map(x: torch.Tensor, layout: Layout) -> torch.Tensor:
    """``[B, C, H, W]`` from a 4-D tensor in ``layout``."""
    return x.permute(0, 3, 1, 2) if layout == "NHWC" else x


def as_tokens(x: torch.Tensor, layout: Layout) -> torch.Tensor:
    """``[B, N, C]`` from a tensor in ``layout``: a map's positions row by row."""
    if layout == "NCHW":
        return x.flatten(2).transpose(1, 2)
    if layout == "NHWC":
        return x.flatten(1, 2)
    return x


def describe_value(x: object) -> str:
    """A value's shape for messages: ``a tensor of shape [2, 768]``, ``a tuple of 2``."""
    if isinstance(x, torch.Tensor):
        return f"a tensor of shape {list(x.shape)}"
    if isinstance(x, (tuple, list)):
        return f"a {type(x).__name__} of {len(x)}"
    return f"a {type(x).__name__}"


@dataclass(frozen=True)
class Stage:
    """A stage the backbone exposes: its module's name, layout and width."""

    module: str
    layout: Layout
    width: int

    def signal(self) -> Signal:
        # Channels-last maps are shown to a fusion channels first (the backbone permutes them).
        return Tokens(self.width) if self.layout == "NLC" else FeatureMap(self.width)


@dataclass(frozen=True)
class Measured:
    """What a model gave on a probe: its pooled vector's width, its unpooled features' layout
    and width (or why there are none), and its stages (or why there are none)."""

    vector: int | None
    features: tuple[Layout, int] | None
    stages: tuple[Stage, ...]
    why_no_vector: str = ""
    why_no_features: str = ""
    why_no_stages: str = ""

    def gives(self, output: str, what: str) -> Signal:
        """The signal of ``output`` (``vector``, ``feature_map``, ``tokens``); a refusal naming
        ``what`` (``timm vit_small_patch16_224``) says why and what to use instead."""
        if output == "vector":
            if self.vector is None:
                raise PolymodalError(f"{what} gives no pooled vector ({self.why_no_vector})")
            return Vector(self.vector)
        if self.features is None:
            raise PolymodalError(
                f"output: {output}: {what} gives no feature map or tokens"
                f" ({self.why_no_features}); use output: vector")
        layout, width = self.features
        if output == "feature_map":
            if layout == "NLC":
                raise PolymodalError(
                    f"output: feature_map: {what} gives tokens, not a feature map; use output:"
                    " tokens (an attention fusion takes them) or vector")
            return FeatureMap(width)
        return Tokens(width)

"""The ``torchvision`` backbone: torchvision classification models as feature extractors."""

from __future__ import annotations

import functools
import types
from dataclasses import dataclass
from typing import Any, Literal

import torch
from pydantic import Field
from torch import nn
from torch.overrides import TorchFunctionMode

from polymodal.imagekit import PretrainedImageConfig, adapt_and_load
from polymodal.plugin import (
    Backbone,
    PolymodalError,
    Signal,
    did_you_mean,
    download_failed,
    hookimpl,
    read_weights,
)

from ._probe import (
    SIZES,
    Layout,
    Measured,
    Stage,
    as_tokens,
    describe_value,
    first_line,
    measure,
    on_default_device,
)

#: The plugin interface this module is written for.
POLYMODAL_PLUGIN_API = 2

#: ResNet-like bodies (ResNet, ResNeXt, Wide ResNet): the stem, then layer1..layer4 are stages.
RESNET_STAGES = ("relu", "layer1", "layer2", "layer3", "layer4")

#: Functions that pool a feature map to a fixed size, whatever its size: global pooling.
ADAPTIVE_POOLS = frozenset({"adaptive_avg_pool2d", "adaptive_max_pool2d",
                            "adaptive_max_pool2d_with_indices"})

#: The size torchvision's classification models are built for (their weights' training size),
#: and another: a model that runs at the first and not at the second is built for one size.
DEFAULT_SIZE = (224, 224)
OTHER_SIZE = (160, 160)

#: Models whose default initialisation torchvision is phasing out (slow, and warned about):
#: they start from PyTorch's default initialisation, as they will in torchvision.
PHASED_OUT_INIT = frozenset({"googlenet", "inception_v3"})

#: ``get_model`` keyword arguments a plan chose (sorted pairs, so that plans hash).
Kwargs = tuple[tuple[str, Any], ...]


def _classification_models() -> list[str]:
    import torchvision

    return torchvision.models.list_models(module=torchvision.models)


def _check_model_name(model: str) -> None:
    names = _classification_models()
    if model not in names:
        raise PolymodalError(
            f"unknown torchvision classification model {model!r}.{did_you_mean(model, names)}"
            f" Known: {', '.join(n for n in names if n.startswith('resnet'))}, ...")


def _set_submodule(net: nn.Module, name: str, module: nn.Module | None) -> None:
    parent_name, _, attr = name.rpartition(".")
    parent = net.get_submodule(parent_name) if parent_name else net
    setattr(parent, attr, module)


def _drop_auxiliary(net: nn.Module) -> tuple[str, ...]:
    """Remove auxiliary classifiers (GoogLeNet, Inception v3): they only add training losses,
    and with them the model returns a tuple in training mode."""
    if not getattr(net, "aux_logits", False):
        return ()
    # torch annotates module attribute writes as tensors or modules; any value may be set.
    net.aux_logits = False  # type: ignore[assignment]
    names = tuple(name for name, _ in net.named_children() if name.lower().startswith("aux"))
    for name in names:
        setattr(net, name, None)
    return names


def _remove_classifier(net: nn.Module) -> str:
    """Remove the classifier (the last linear layer; a convolutional classifier is replaced by
    global pooling of the features it took); its name."""
    linears = [name for name, m in net.named_modules() if isinstance(m, nn.Linear)]
    if linears:
        _set_submodule(net, linears[-1], nn.Identity())
        return linears[-1]
    # SqueezeNet: a 1x1 convolution to the 1000 classes, then pooling.
    convs = [(name, m) for name, m in net.named_modules() if isinstance(m, nn.Conv2d)]
    if not convs or convs[-1][1].out_channels != 1000:
        raise PolymodalError("this torchvision model has no classifier to remove")
    holder = convs[-1][0].split(".")[0]
    _set_submodule(net, holder, nn.AdaptiveAvgPool2d(1))
    return holder


def _pair(sizes: tuple[int, ...]) -> tuple[int, int]:
    """A 2-D convolution's size option (torch types it as a tuple of any length) as its pair."""
    height, width = sizes
    return height, width


def _replace_stem(net: nn.Module, in_chans: int) -> str:
    stem_name, stem = next((n, m) for n, m in net.named_modules() if isinstance(m, nn.Conv2d))
    if in_chans != stem.in_channels:
        padding = stem.padding if isinstance(stem.padding, str) else _pair(stem.padding)
        _set_submodule(net, stem_name, nn.Conv2d(
            in_chans, stem.out_channels, _pair(stem.kernel_size), _pair(stem.stride), padding,
            _pair(stem.dilation), stem.groups, stem.bias is not None))
    return stem_name


def _load_as_current_version(self: nn.Module, state_dict, prefix, local_metadata, *args) -> None:
    # A model file keeps no per-module version metadata: the weights are this version's.
    metadata = {"version": type(self)._version, **local_metadata}
    type(self)._load_from_state_dict(self, state_dict, prefix, metadata, *args)


def _read_unversioned_weights(net: nn.Module) -> None:
    """Let modules that refuse weights without version metadata (MNASNet) read a model file."""
    for module in net.modules():
        cls = type(module)
        if "_load_from_state_dict" in vars(cls) and cls.__module__.startswith("torchvision."):
            # This module's own loader, in place of its class's (an instance attribute, on purpose).
            module._load_from_state_dict = types.MethodType(  # type: ignore[method-assign]
                _load_as_current_version, module)


def _create(model: str, in_chans: int, kwargs: Kwargs) -> tuple[nn.Module, str, tuple[str, ...]]:
    """The model without its classifier, the name of its stem convolution, and the names of the
    modules removed (whose pretrained weights are not loaded)."""
    import torchvision

    if model in PHASED_OUT_INIT:
        kwargs = (*kwargs, ("init_weights", False))
    net = on_default_device(
        lambda: torchvision.models.get_model(model, weights=None, **dict(kwargs)))
    removed = (*_drop_auxiliary(net), _remove_classifier(net))
    stem = _replace_stem(net, in_chans)
    _read_unversioned_weights(net)
    return net, stem, removed


class _GlobalPoolWatch(TorchFunctionMode):
    """Notes the input of the last global pooling a forward runs: the model's feature map."""

    def __init__(self) -> None:
        super().__init__()
        self.pooled: torch.Tensor | None = None

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if args and isinstance(args[0], torch.Tensor) and _pools_globally(func, args, kwargs):
            self.pooled = args[0]
        return func(*args, **kwargs)


def _pools_globally(func, args: tuple, kwargs: dict) -> bool:
    name = getattr(func, "__name__", "")
    if name in ADAPTIVE_POOLS:
        return True
    if name != "mean" or args[0].dim() != 4:
        return False
    dims = kwargs.get("dim", args[1] if len(args) > 1 else None)
    dims = (dims,) if isinstance(dims, int) else tuple(dims or ())
    return sorted(d % 4 for d in dims) == [2, 3]


def _producer(outputs: list[tuple[str, Any]], target: torch.Tensor) -> str | None:
    """The outermost module whose output is ``target`` (the last of them, at equal depth)."""
    names = [name for name, out in outputs if out is target]
    return min(reversed(names), key=lambda n: n.count("."), default=None)


def _measure(net: nn.Module, images: torch.Tensor) -> tuple[Measured, str | None]:
    """Run the model; read its vector, the map its global pooling takes (a ViT: its encoder's
    tokens), the module giving that, and the ResNet stages."""
    outputs: list[tuple[str, Any]] = []
    handles = [module.register_forward_hook(lambda _m, _a, out, name=name: outputs.append((name, out)))
               for name, module in net.named_modules() if name]
    watch = _GlobalPoolWatch()
    try:
        with watch:
            vector = net(images)
    finally:
        for handle in handles:
            handle.remove()
    is_vector = isinstance(vector, torch.Tensor) and vector.dim() == 2
    target = watch.pooled
    if target is None and is_vector:  # no pooling: the tokens its output is read from
        target = next((out for _, out in reversed(outputs) if isinstance(out, torch.Tensor)
                       and out.dim() == 3 and out.shape[2] == vector.shape[1]), None)
    producer = _producer(outputs, target) if target is not None else None
    once = producer is not None and sum(name == producer for name, _ in outputs) == 1
    features: tuple[Layout, int] | None = None
    if once and target is not None:  # a producer was found, so there is a target
        features = ("NCHW", int(target.shape[1])) if target.dim() == 4 else ("NLC", int(target.shape[2]))
    why = ("it pools no feature map and gives no tokens" if target is None
           else "no submodule gives what it pools once a forward")
    return Measured(
        vector=int(vector.shape[1]) if is_vector else None, features=features,
        stages=_stages(net, outputs), why_no_vector=f"it gives {describe_value(vector)}",
        why_no_features=why), producer if once else None


def _stages(net: nn.Module, outputs: list[tuple[str, Any]]) -> tuple[Stage, ...]:
    names = dict(net.named_modules())
    if not all(name in names for name in RESNET_STAGES):
        return ()
    stages = []
    for name in RESNET_STAGES:
        given = [out for n, out in outputs if n == name]
        if len(given) != 1 or not isinstance(given[0], torch.Tensor) or given[0].dim() != 4:
            return ()
        stages.append(Stage(name, "NCHW", int(given[0].shape[1])))
    return tuple(stages)


#: A plan: ``get_model`` keyword arguments, what the model then gives, and the module whose
#: output is its feature map (or tokens).
Plan = tuple[Kwargs, Measured, "str | None"]


@functools.lru_cache(maxsize=None)
def _plan(model: str, in_chans: int, size: tuple[int, int] | None) -> Plan:
    """How to build the model for ``size`` images (None: any size), and what it then gives."""
    probe = _Probe(model, in_chans)
    return probe.any_size() if size is None else probe.sized(size)


@dataclass(frozen=True)
class _Probe:
    """Plans for one model and channel count, measured on weightless builds."""

    model: str
    in_chans: int

    def run(self, kwargs: Kwargs, *sizes: tuple[int, int]) -> list:
        return measure(lambda: _create(self.model, self.in_chans, kwargs)[0], _measure,
                       self.in_chans, *sizes)

    def any_size(self) -> Plan:
        """The plan for images of any size; refused for a model built for one size (a model
        that runs at its default size and not at another)."""
        what = f"torchvision {self.model}"
        at_default, elsewhere = self.run((), DEFAULT_SIZE, OTHER_SIZE)
        if isinstance(at_default, Exception):
            raise PolymodalError(f"{what} cannot take {DEFAULT_SIZE[0]}x{DEFAULT_SIZE[1]} images"
                                 f" ({first_line(at_default)})")
        if isinstance(elsewhere, Exception):
            raise PolymodalError(
                f"{what} takes images of one size only ({DEFAULT_SIZE[0]}x{DEFAULT_SIZE[1]} by"
                f" default; not {OTHER_SIZE[0]}x{OTHER_SIZE[1]}: {first_line(elsewhere)}), and"
                " the image adapter gives images of any size; set the image adapter's size:"
                f" {DEFAULT_SIZE[0]} (it resizes the images)")
        return ((), *at_default)

    def sized(self, size: tuple[int, int]) -> Plan:
        """The plan for ``size`` images: the model as it is, or built for that size."""
        [found] = self.run((), size)
        if not isinstance(found, Exception):
            return ((), *found)
        resized = self.built_for(size)
        if resized is not None:
            return resized
        plain = self.run((), *((s, s) for s in SIZES))
        smallest = next((s for s, r in zip(SIZES, plain) if not isinstance(r, Exception)
                         or self.built_for((s, s)) is not None), None)
        fix = (f"; the smallest square size it takes is {smallest}: set the image adapter's"
               f" size: {smallest}" if smallest else "")
        raise PolymodalError(f"torchvision {self.model} cannot take {size[0]}x{size[1]} images"
                             f" ({first_line(found)}){fix}")

    def built_for(self, size: tuple[int, int]) -> Plan | None:
        """A vision transformer is built for one image size, which its constructor takes: the
        plan of the model built for ``size``, or None where it cannot be."""
        if size[0] != size[1]:
            return None
        kwargs: Kwargs = (("image_size", size[0]),)
        try:
            [found] = self.run(kwargs, size)
        except Exception:  # noqa: BLE001 - takes no image_size, or not this one
            return None
        return None if isinstance(found, Exception) else (kwargs, *found)


class TorchvisionBackbone(Backbone):
    """A torchvision classification model (ResNets first) with its classifier removed.

    ``output: vector`` gives the pre-logits features ``[B, D]`` (the model's output without its
    last linear layer; SqueezeNet, whose classifier is a convolution, pools its features).
    ``feature_map`` gives the map the model's global pooling takes ``[B, C, H, W]``, and
    ``tokens`` its positions as a sequence (a vision transformer gives its encoder's tokens, and
    no feature map). Every width is measured from the model as torchvision builds it (a
    weightless build) when the spec is checked. Auxiliary classifiers (GoogLeNet, Inception v3)
    are removed. A model built for one input size (vision transformers) is built for the image
    adapter's ``size``; without one the spec is refused with the size to set.

    ``pretrained: true`` loads the model's default torchvision weights from the torch hub cache,
    downloading them when a network is available; a path loads a local weights file. With
    ``in_chans`` other than 3 the stem convolution is rebuilt for ``in_chans`` channels and,
    from pretrained weights, initialised from the RGB filters: by band name when the image
    adapter names its ``bands``, otherwise repeated; rescaled by 3 / in_chans.

    ResNet-like models expose stages 0 (the stem) and 1-4 (``layer1``-``layer4``) for
    conditioning and ``freeze: {train_last: N}``.
    """

    class Config(PretrainedImageConfig):
        type: Literal["torchvision"] = "torchvision"
        model: str = Field(description="A torchvision classification model name, e.g. resnet50.",
                           min_length=1)

        def describe(self) -> str:
            return f"torchvision {self.model}"

        def shape(self, takes: Signal) -> tuple[Signal, tuple[Signal, ...]]:
            _check_model_name(self.model)
            _, measured, _ = _plan(self.model, self.in_chans, getattr(takes, "size", None))
            return (measured.gives(self.output, self.describe()),
                    tuple(stage.signal() for stage in measured.stages))

    config: Config

    example_options = {"model": "resnet18"}
    exportable = True

    def __init__(self, config: Config, takes: Signal):
        super().__init__(config, takes)
        _check_model_name(config.model)
        kwargs, measured, self._producer = _plan(
            config.model, config.in_chans, getattr(takes, "size", None))
        self._stages = measured.stages
        self._tokens = measured.features is not None and measured.features[0] == "NLC"
        self.model, self._stem, self._removed = _create(config.model, config.in_chans, kwargs)
        self._image_size = dict(kwargs).get("image_size")
        if hasattr(self.model, "transform_input") and config.pretrained is True \
                and config.in_chans == 3:
            # As torchvision sets it with these weights: they expect its own input scaling.
            # (torch annotates module attribute writes as tensors or modules; any value may be set.)
            self.model.transform_input = True  # type: ignore[assignment]
        self.freeze(config.freeze)

    def stage_modules(self) -> list[nn.Module]:
        return [self.model.get_submodule(stage.module) for stage in self._stages]

    def load_pretrained(self) -> None:
        config = self.config
        if config.pretrained is False:
            return
        if config.pretrained is True:
            import torchvision

            try:
                weights = torchvision.models.get_model_weights(config.model).DEFAULT
                state = weights.get_state_dict(progress=False)
            except Exception as exc:  # noqa: BLE001 - download errors take many forms
                raise download_failed(f"torchvision {config.model!r}", exc,
                                      cache=torch.hub.get_dir()) from None
            source = "torchvision default weights"
        else:
            state = read_weights(config.pretrained)
            source = str(config.pretrained)
        state = self._resized_positions(state)
        adapt_and_load(self.model, state, source=source, stem=self._stem, in_chans=config.in_chans,
                       bands=getattr(self.takes, "bands", None),
                       ignore_prefixes=tuple(f"{name}." for name in self._removed))

    def _resized_positions(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """A vision transformer built for another image size: its position embedding
        interpolated to this size, as torchvision does for fine-tuning at another size."""
        key = "encoder.pos_embedding"
        own = self.model.state_dict().get(key)
        if self._image_size is None or key not in state or own is None \
                or state[key].shape == own.shape:
            return state
        from torchvision.models.vision_transformer import interpolate_embeddings

        return dict(interpolate_embeddings(self._image_size, self.model.patch_size, state))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.config.output == "vector":
            return self.model(x)
        # The model runs whole (what follows its pooling is small); its map is kept on the way.
        kept: list[torch.Tensor] = []
        # The config refuses feature_map and tokens where no module was measured to give them.
        assert self._producer is not None, "a feature map or tokens without their module"
        producer = self.model.get_submodule(self._producer)
        handle = producer.register_forward_hook(lambda _m, _a, out: kept.append(out))
        try:
            self.model(x)
        finally:
            handle.remove()
        features = kept[-1]
        if self.config.output == "tokens":
            return as_tokens(features, "NLC" if self._tokens else "NCHW")
        return features


@hookimpl
def polymodal_components():
    return [TorchvisionBackbone]

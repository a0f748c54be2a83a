"""The ``timm`` backbone: any model of the timm library, as a feature extractor."""

from __future__ import annotations

import functools
from collections.abc import Collection, Mapping
from typing import Any, Literal, Protocol, cast

import torch
from pydantic import Field

from polymodal.imagekit import PretrainedImageConfig, adapt_and_load
from polymodal.plugin import (
    Backbone,
    Modulate,
    PolymodalError,
    Signal,
    did_you_mean,
    download_failed,
    hookimpl,
    read_weights,
)

from ._probe import (
    SIZES,
    Measured,
    Stage,
    as_feature_map,
    as_tokens,
    describe_value,
    first_line,
    layout_of,
    measure,
    meta_accepts,
    on_default_device,
    smallest_size,
    weightless,
)

#: The plugin interface this module is written for.
POLYMODAL_PLUGIN_API = 2

#: The prefix of a model named by its Hugging Face hub repository (``hf-hub:timm/resnet50.a1_in1k``).
HF_HUB = "hf-hub:"

#: ``create_model`` keyword arguments a plan chose (sorted pairs, so that plans hash).
Kwargs = tuple[tuple[str, Any], ...]


class _TimmModel(Protocol):
    """What this backbone uses of a timm model besides what every module has."""

    #: The configuration of the model's weights (input size, stem and classifier names, ...).
    pretrained_cfg: Mapping[str, Any]

    def forward_features(self, x: torch.Tensor) -> Any:
        """The unpooled features (a tensor; what else a model gives is measured as such)."""

    def forward_head(self, x: Any, pre_logits: bool = False) -> Any:
        """The pooled features of ``forward_features``' output (with ``pre_logits``)."""


def _timm(net: torch.nn.Module) -> _TimmModel:
    """``net``, made by timm, as the timm model it is: timm's ``create_model`` is typed as giving
    a plain module, while every timm model has what :class:`_TimmModel` lists."""
    return cast(_TimmModel, net)


def _check_model_name(model: str) -> None:
    import timm

    if model.startswith(HF_HUB):
        return  # the hub repository's config names the architecture; read when first built
    arch, _, tag = model.partition(".")
    if not timm.is_model(arch):
        raise PolymodalError(
            f"unknown timm model {model!r}.{did_you_mean(arch, timm.list_models())}"
            " (`python -c \"import timm; print(timm.list_models('resnet*'))\"` lists names)")
    if tag and model not in timm.list_pretrained(f"{arch}.*"):
        tags = timm.list_pretrained(f"{arch}.*")
        known = f" Its tags: {', '.join(tags)}." if tags else " It has no pretrained weights."
        raise PolymodalError(f"timm {arch} has no pretrained tag {tag!r}.{did_you_mean(model, tags)}"
                             f"{known}")


def _create(model: str, in_chans: int, kwargs: Kwargs, pretrained: bool = False) -> torch.nn.Module:
    import timm

    try:
        return on_default_device(lambda: timm.create_model(
            model, pretrained=pretrained, num_classes=0, in_chans=in_chans, **dict(kwargs)))
    except Exception as exc:
        if pretrained or not model.startswith(HF_HUB) or not _from_the_hub(exc):
            raise
        raise PolymodalError(
            f"timm {model!r}: cannot read its config.json from the Hugging Face hub or its"
            f" local cache ({_hub_cache()}): {type(exc).__name__}: {first_line(exc)}. Fill"
            " the cache where a network is available, or name a timm model") from None


def _from_the_hub(exc: Exception) -> bool:
    """Whether the hub library raised ``exc`` (a file it could neither find nor fetch)."""
    return type(exc).__module__.startswith("huggingface_hub") or isinstance(exc, OSError)


def _hub_cache() -> str:
    """Where ``pretrained: true`` finds weights without a network: the Hugging Face hub cache
    (and torch hub's, for the few timm weights published by URL)."""
    from huggingface_hub import constants

    return f"{constants.HF_HUB_CACHE}, {torch.hub.get_dir()}"


@functools.lru_cache(maxsize=None)
def _input_config(model: str) -> tuple[tuple[int, int], bool]:
    """The model's default input size and whether timm states it takes only that size."""
    net = weightless(lambda: _create(model, 3, ()))
    cfg = _timm(net).pretrained_cfg
    height, width = tuple(cfg.get("input_size", (3, 224, 224)))[-2:]
    return (int(height), int(width)), bool(cfg.get("fixed_input_size", False))


@functools.lru_cache(maxsize=None)
def _accepts(model: str, keyword: str, value: Any) -> bool:
    """Whether the model's constructor takes ``keyword`` (e.g. ``img_size``)."""
    try:
        weightless(lambda: _create(model, 3, ((keyword, value),)))
    except TypeError as exc:
        if keyword in str(exc):
            return False
        raise
    return True


def _size_kwargs(model: str, size: tuple[int, int] | None) -> Kwargs:
    """What makes the model take ``size`` images (None: any size): nothing for most models; for a
    model built for one size, that size (``img_size``) or timm's dynamic sizing."""
    default, fixed = _input_config(model)
    if not fixed or size == default:
        return ()
    if size is not None and _accepts(model, "img_size", size):
        return (("img_size", size),)
    if _accepts(model, "dynamic_img_size", True):
        return (("dynamic_img_size", True),)
    wanted = f"{default[0]}" if default[0] == default[1] else f"[{default[0]}, {default[1]}]"
    given = "images of any size" if size is None else f"{size[0]}x{size[1]} images"
    raise PolymodalError(
        f"timm {model} takes {default[0]}x{default[1]} images only, and the image adapter gives"
        f" {given}; set the image adapter's size: {wanted} (it resizes the images)")


def _stage_names(net: torch.nn.Module) -> tuple[tuple[tuple[str, int], ...], str]:
    """Each ``feature_info`` stage's module name and stated width, or why there are none."""
    entries = getattr(net, "feature_info", None) or []
    stages = []
    for entry in entries:
        name = entry.get("module")
        try:
            net.get_submodule(name)
        except (AttributeError, TypeError):
            return (), f"its feature_info names module {name!r}, which the model has not"
        stages.append((name, int(entry["num_chs"])))
    return tuple(stages), "" if stages else "it states no feature_info"


def _measure(net: torch.nn.Module, images: torch.Tensor) -> Measured:
    """Run ``forward_features`` and the pre-logits ``forward_head``; read every shape."""
    named, why_no_stages = _stage_names(net)
    seen: dict[str, list] = {name: [] for name, _ in named}
    handles = [net.get_submodule(name).register_forward_hook(
        lambda _m, _a, out, name=name: seen[name].append(out)) for name, _ in named]
    try:
        model = _timm(net)
        features = model.forward_features(images)
        vector = model.forward_head(features, pre_logits=True)
    finally:
        for handle in handles:
            handle.remove()
    # timm states a channels-last model's layout (Swin: NHWC); the shapes alone may not tell.
    channels_last = str(getattr(net, "output_fmt", "NCHW")).endswith("NHWC")
    stages, why_not = _stages(named, seen, channels_last)
    is_vector = isinstance(vector, torch.Tensor) and vector.dim() == 2
    return Measured(
        vector=int(vector.shape[1]) if is_vector else None,
        features=layout_of(features, channels_last=channels_last), stages=stages,
        why_no_vector=f"its forward_head gives {describe_value(vector)}",
        why_no_features=f"its forward_features gives {describe_value(features)}",
        why_no_stages=why_no_stages or why_not)


def _stages(named: tuple[tuple[str, int], ...], seen: dict[str, list],
            channels_last: bool) -> tuple[tuple[Stage, ...], str]:
    """The stages, if each ran once and gave its stated width; else none, and why."""
    stages = []
    for name, width in named:
        outputs = seen[name]
        found = layout_of(outputs[0], width, channels_last) if len(outputs) == 1 else None
        if found is None:
            given = describe_value(outputs[0]) if len(outputs) == 1 else f"{len(outputs)} outputs"
            return (), f"its stage {name!r} gives {given} a forward, not {width} channels"
        stages.append(Stage(name, *found))
    return tuple(stages), ""


@functools.lru_cache(maxsize=None)
def _plan(model: str, in_chans: int, size: tuple[int, int] | None) -> tuple[Kwargs, Measured]:
    """How to build the model for ``size`` images (None: any size), and what it then gives."""
    kwargs = _size_kwargs(model, size)
    probe = size or _input_config(model)[0]
    try:
        [measured] = measure(lambda: _create(model, in_chans, kwargs), _measure, in_chans, probe)
    except PolymodalError:
        raise
    except Exception as exc:  # noqa: BLE001 - timm cannot build the model for this size
        measured = exc
    if isinstance(measured, Exception):
        raise PolymodalError(_cannot_take(model, in_chans, probe, measured))
    return kwargs, measured


def _cannot_take(model: str, in_chans: int, size: tuple[int, int], exc: Exception) -> str:
    if in_chans != 3 and _builds_for(model, 3, size):
        return (f"timm {model} cannot take {in_chans}-channel images ({first_line(exc)}); give it"
                " 3 channels: set the image adapter's project_to: 3 and leave in_chans at 3")
    default, fixed = _input_config(model)
    if fixed:  # built for one size: each size is another build
        candidates = sorted({*SIZES, *({default[0]} if default[0] == default[1] else ())})
        smallest = next((s for s in candidates if _builds_for(model, in_chans, (s, s))), None)
    else:
        smallest = smallest_size(lambda: _create(model, in_chans, ()), _measure, in_chans)
    fix = (f"; the smallest square size it takes is {smallest}: set the image adapter's size:"
           f" {smallest}" if smallest else "")
    return f"timm {model} cannot take {size[0]}x{size[1]} images ({first_line(exc)}){fix}"


def _builds_for(model: str, in_chans: int, size: tuple[int, int]) -> bool:
    try:
        kwargs = _size_kwargs(model, size)
    except PolymodalError:
        return False
    return meta_accepts(lambda: _create(model, in_chans, kwargs), _measure, in_chans, size)


class TimmBackbone(Backbone):
    """Any timm image model (ResNets first) as a feature extractor, pooled or as a feature map.

    ``output: vector`` gives the pooled pre-logits features ``[B, D]`` (timm's ``forward_head``,
    so a head convolution after pooling is included); ``feature_map`` the last stage's map
    ``[B, C, H, W]`` (``forward_features``; channels-last models are permuted); ``tokens`` its
    positions as a sequence ``[B, H*W, C]``, or a transformer's own tokens. Every width is
    measured from the model as timm builds it (a weightless build) when the spec is checked.

    A model built for one input size (most vision transformers) is built for the image
    adapter's ``size``, or, where timm can, for any size; otherwise the spec is refused with the
    size to set. ``pretrained: true`` loads the library's default weights (or those of a
    pretrained tag such as ``resnet50.a1_in1k``, or an ``hf-hub:`` repository) from the local
    Hugging Face cache, downloading them when a network is available (set
    ``HF_HUB_OFFLINE=1`` to use the cache only); ``pretrained: path/to/weights.safetensors``
    loads a local file (``.pth`` is read weights-only). With ``in_chans`` other than 3 the
    pretrained RGB stem is adapted to ``in_chans`` channels: by band name when the image adapter
    names its ``bands`` (red, green and blue keep their filters, other bands take their mean),
    otherwise repeated as timm does; either way rescaled by 3 / in_chans.

    Stages are timm's ``feature_info`` where the model runs each one once and it gives the
    stated channels (for ResNets: 0 the stem, 1-4 ``layer1``-``layer4``): a fusion can condition
    them and ``freeze: {train_last: N}`` counts them.
    """

    class Config(PretrainedImageConfig):
        type: Literal["timm"] = "timm"
        model: str = Field(description="A timm model name, e.g. resnet18, efficientnet_b0,"
                           " resnet50.a1_in1k (a pretrained tag) or hf-hub:timm/resnet50.a1_in1k.",
                           min_length=1)

        def describe(self) -> str:
            return f"timm {self.model}"

        def shape(self, takes: Signal) -> tuple[Signal, tuple[Signal, ...]]:
            _check_model_name(self.model)
            _, measured = _plan(self.model, self.in_chans, getattr(takes, "size", None))
            return (measured.gives(self.output, self.describe()),
                    tuple(stage.signal() for stage in measured.stages))

    config: Config

    example_options = {"model": "resnet18"}
    exportable = True

    def __init__(self, config: Config, takes: Signal):
        super().__init__(config, takes)
        _check_model_name(config.model)
        self._kwargs, measured = _plan(config.model, config.in_chans, getattr(takes, "size", None))
        self._layout = measured.features[0] if measured.features else None
        self._stages = measured.stages
        self.model = _create(config.model, config.in_chans, self._kwargs)
        self.freeze(config.freeze)

    def stage_modules(self) -> list[torch.nn.Module]:
        return [self.model.get_submodule(stage.module) for stage in self._stages]

    def modulated(self, x: torch.Tensor, modulate: Modulate, stages: Collection[int]) -> torch.Tensor:
        channels_last = {i for i, stage in enumerate(self._stages) if stage.layout == "NHWC"}

        def channels_first(stage: int, output: torch.Tensor) -> torch.Tensor:
            if stage not in channels_last:
                return modulate(stage, output)
            return modulate(stage, output.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)

        return super().modulated(x, channels_first, stages)

    def load_pretrained(self) -> None:
        config = self.config
        if config.pretrained is False:
            return
        if config.pretrained is True:
            try:
                # RGB weights as published; the stem is adapted below like a local file's.
                source = _create(config.model, 3, self._kwargs, pretrained=True)
            except Exception as exc:  # noqa: BLE001 - download errors take many forms
                raise download_failed(f"timm {config.model!r}", exc, cache=_hub_cache()) from None
            state, where = source.state_dict(), f"timm {config.model} default weights"
        else:
            state, where = read_weights(config.pretrained), str(config.pretrained)
        cfg = _timm(self.model).pretrained_cfg
        first_conv = cfg.get("first_conv")
        classifier = cfg.get("classifier")
        ignore = tuple(f"{c}." for c in ([classifier] if isinstance(classifier, str) else classifier or []))
        adapt_and_load(self.model, state, source=where, in_chans=config.in_chans,
                       stem=first_conv if isinstance(first_conv, str) else None,
                       bands=getattr(self.takes, "bands", None), ignore_prefixes=ignore)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        model = _timm(self.model)
        features = model.forward_features(x)
        if self.config.output == "vector":
            return model.forward_head(features, pre_logits=True)
        # The config refuses feature_map and tokens where forward_features gives neither.
        assert self._layout is not None, "a feature map or tokens of no measured layout"
        if self.config.output == "feature_map":
            return as_feature_map(features, self._layout)
        return as_tokens(features, self._layout)


@hookimpl
def polymodal_components():
    return [TimmBackbone]

"""The ``torchvision`` backbone: torchvision classification models as feature extractors."""

from __future__ import annotations

import functools
import warnings
from typing import Literal

import torch
from pydantic import Field
from torch import nn

from polymodal.plugin import (
    Backbone,
    PolymodalError,
    PretrainedImageConfig,
    Signal,
    adapt_and_load,
    did_you_mean,
    download_failed,
    hookimpl,
    read_weights,
)

#: The plugin interface this module is written for.
POLYMODAL_PLUGIN_API = 2

#: Families whose body is stem, layer1..layer4, then global pooling: they give feature maps and
#: expose stages.
RESNET_LIKE = ("resnet", "resnext", "wide_resnet")
STAGE_MODULES = ("relu", "layer1", "layer2", "layer3", "layer4")


def _classification_models() -> list[str]:
    import torchvision

    return torchvision.models.list_models(module=torchvision.models)


def _check_model_name(model: str) -> None:
    names = _classification_models()
    if model not in names:
        raise PolymodalError(
            f"unknown torchvision classification model {model!r}.{did_you_mean(model, names)}"
            f" Known: {', '.join(n for n in names if n.startswith('resnet'))}, ...")


def _last_linear(net: nn.Module) -> tuple[str, nn.Linear]:
    found = [(name, m) for name, m in net.named_modules() if isinstance(m, nn.Linear)]
    if not found:
        raise PolymodalError("this torchvision model has no linear classifier to remove")
    return found[-1]


def _first_conv(net: nn.Module) -> tuple[str, nn.Conv2d]:
    return next((n, m) for n, m in net.named_modules() if isinstance(m, nn.Conv2d))


def _set_submodule(net: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, attr = name.rpartition(".")
    parent = net.get_submodule(parent_name) if parent_name else net
    setattr(parent, attr, module)


def _create(model: str, in_chans: int) -> tuple[nn.Module, int, str, str]:
    """The model with its classifier removed, its feature width, classifier and stem names."""
    import torchvision

    with warnings.catch_warnings():
        # GoogLeNet and Inception3 announce a change of their default initialisation; the
        # weights are initialised (or loaded) as the spec says, so the notice is noise here.
        warnings.filterwarnings("ignore", message=r"The default weight initialization of .*",
                                category=FutureWarning)
        net = torchvision.models.get_model(model, weights=None)
    classifier, linear = _last_linear(net)
    width = linear.in_features
    _set_submodule(net, classifier, nn.Identity())
    stem_name, stem = _first_conv(net)
    if in_chans != stem.in_channels:
        _set_submodule(net, stem_name, nn.Conv2d(
            in_chans, stem.out_channels, stem.kernel_size, stem.stride, stem.padding,
            stem.dilation, stem.groups, stem.bias is not None))
    return net, width, classifier, stem_name


def _stage_widths(net: nn.Module) -> tuple[int, ...]:
    if not all(hasattr(net, name) for name in STAGE_MODULES):
        return ()
    widths = [net.conv1.out_channels]
    for name in STAGE_MODULES[1:]:
        norms = [m for m in net.get_submodule(name).modules() if isinstance(m, nn.BatchNorm2d)]
        widths.append(norms[-1].num_features)
    return tuple(widths)


@functools.lru_cache(maxsize=None)
def _shape_of(model: str) -> tuple[int, tuple[int, ...]]:
    """The output width and each stage's channels, read from a weightless (meta) build."""
    with torch.device("meta"):
        net, width, _, _ = _create(model, 3)
    return width, _stage_widths(net) if model.startswith(RESNET_LIKE) else ()


class TorchvisionBackbone(Backbone):
    """A torchvision classification model (ResNets first) with its classifier removed.

    ``output: vector`` gives the pooled features ``[B, D]``. ``feature_map``/``tokens`` are
    available for models whose body ends in a pooling layer before the classifier (ResNet,
    ResNeXt, Wide ResNet, RegNet): the map before that pooling. ``pretrained: true`` downloads
    the model's default torchvision weights; a path loads a local weights file. With
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

        def shape(self) -> tuple[int, tuple[int, ...]]:
            _check_model_name(self.model)
            return _shape_of(self.model)

        def gives(self, takes: Signal) -> Signal:
            if self.output != "vector" and not self.model.startswith(RESNET_LIKE + ("regnet",)):
                raise PolymodalError(
                    f"output: {self.output} is supported for ResNet-like torchvision models;"
                    f" use the timm backbone for {self.model!r} feature maps")
            return super().gives(takes)

    config: Config

    example_options = {"model": "resnet18"}
    exportable = True

    def __init__(self, config: Config, takes: Signal):
        super().__init__(config, takes)
        _check_model_name(config.model)
        self.model, _, self._classifier, self._stem = _create(config.model, config.in_chans)
        self.freeze(config.freeze)

    def stage_modules(self) -> list[nn.Module]:
        if not self.config.model.startswith(RESNET_LIKE):
            return []
        return [self.model.get_submodule(name) for name in STAGE_MODULES]

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
                raise download_failed(f"torchvision {config.model!r}", exc) from None
            source = "torchvision default weights"
        else:
            state = read_weights(config.pretrained)
            source = str(config.pretrained)
        adapt_and_load(self.model, state, source=source, stem=self._stem, in_chans=config.in_chans,
                       bands=getattr(self.takes, "bands", None),
                       ignore_prefixes=(f"{self._classifier}.",))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.config.output == "vector":
            return self.model(x)
        # ResNet-like bodies: every child before the global pooling, in order.
        for name, child in self.model.named_children():
            if name == "avgpool":
                break
            x = child(x)
        return x.flatten(2).transpose(1, 2) if self.config.output == "tokens" else x


@hookimpl
def polymodal_components():
    return [TorchvisionBackbone]

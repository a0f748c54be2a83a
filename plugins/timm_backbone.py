"""The ``timm`` backbone: any model of the timm library, as a feature extractor."""

from __future__ import annotations

import functools
from typing import Literal

import torch
from pydantic import Field

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


@functools.lru_cache(maxsize=None)
def _shape_of(model: str, in_chans: int) -> tuple[int, tuple[int, ...]]:
    """The output width and the channels of each stage (timm's ``feature_info``)."""
    import timm

    # The meta device allocates no weights: widths are read without building real tensors.
    with torch.device("meta"):
        net = timm.create_model(model, pretrained=False, num_classes=0, in_chans=in_chans)
    stages = tuple(int(info["num_chs"]) for info in getattr(net, "feature_info", None) or [])
    return int(net.num_features), stages


def _check_model_name(model: str) -> None:
    import timm

    arch = model.split(".", 1)[0]
    if not timm.is_model(arch):
        raise PolymodalError(
            f"unknown timm model {model!r}.{did_you_mean(arch, timm.list_models())}"
            " (`python -c \"import timm; print(timm.list_models('resnet*'))\"` lists names)")


class TimmBackbone(Backbone):
    """Any timm image model (ResNets first) as a feature extractor, pooled or as a feature map.

    ``output: vector`` gives the pooled features ``[B, D]``; ``feature_map`` the last stage's
    map ``[B, C, H, W]``; ``tokens`` the same positions as a sequence ``[B, H*W, C]`` (or a
    transformer's tokens). ``pretrained: true`` downloads the library's default weights
    (from the Hugging Face hub; with no network, set ``HF_HUB_OFFLINE=1`` to fail at once rather
    than after the download's retries);
    ``pretrained: path/to/weights.safetensors`` loads a local file (``.pth`` is read
    weights-only). With ``in_chans`` other than 3 the pretrained RGB stem is adapted to
    ``in_chans`` channels: by band name when the image adapter names its ``bands`` (red, green
    and blue keep their filters, other bands take their mean), otherwise repeated as timm does;
    either way rescaled by 3 / in_chans.

    Stages are timm's ``feature_info`` (for ResNets: 0 the stem, 1-4 ``layer1``-``layer4``):
    a fusion can condition them and ``freeze: {train_last: N}`` counts them.
    """

    class Config(PretrainedImageConfig):
        type: Literal["timm"] = "timm"
        model: str = Field(description="A timm model name, e.g. resnet18, resnet50, efficientnet_b0.",
                           min_length=1)

        def describe(self) -> str:
            return f"timm {self.model}"

        def shape(self) -> tuple[int, tuple[int, ...]]:
            _check_model_name(self.model)
            return _shape_of(self.model, self.in_chans)

    config: Config

    example_options = {"model": "resnet18"}
    exportable = True

    def __init__(self, config: Config, takes: Signal):
        super().__init__(config, takes)
        import timm

        _check_model_name(config.model)
        self.model = timm.create_model(
            config.model, pretrained=False, num_classes=0, in_chans=config.in_chans)
        self.freeze(config.freeze)

    def stage_modules(self) -> list[torch.nn.Module]:
        info = getattr(self.model, "feature_info", None) or []
        return [self.model.get_submodule(entry["module"]) for entry in info]

    def load_pretrained(self) -> None:
        config = self.config
        if config.pretrained is False:
            return
        if config.pretrained is True:
            import timm

            try:
                # RGB weights as published; the stem is adapted below like a local file's.
                source = timm.create_model(config.model, pretrained=True, num_classes=0)
            except Exception as exc:  # noqa: BLE001 - download errors take many forms
                raise download_failed(f"timm {config.model!r}", exc) from None
            state, where = source.state_dict(), f"timm {config.model} default weights"
        else:
            state, where = read_weights(config.pretrained), str(config.pretrained)
        first_conv = self.model.pretrained_cfg.get("first_conv")
        classifier = self.model.pretrained_cfg.get("classifier")
        ignore = tuple(f"{c}." for c in ([classifier] if isinstance(classifier, str) else classifier or []))
        adapt_and_load(self.model, state, source=where, in_chans=config.in_chans,
                       stem=first_conv if isinstance(first_conv, str) else None,
                       bands=getattr(self.takes, "bands", None), ignore_prefixes=ignore)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.config.output == "vector":
            return self.model(x)
        features = self.model.forward_features(x)
        if self.config.output == "tokens" and features.dim() == 4:
            return features.flatten(2).transpose(1, 2)
        return features


@hookimpl
def polymodal_components():
    return [TimmBackbone]



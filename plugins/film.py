"""The ``film`` fusion: some inputs scale and shift an image backbone's feature maps (FiLM)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Literal

import torch
from pydantic import Field, NonNegativeInt, PositiveInt, field_validator
from torch import nn

from polymodal.plugin import (
    Activation,
    ComponentError,
    Fusion,
    FusionConfig,
    FusionInputs,
    PolymodalError,
    Signal,
    Vector,
    hookimpl,
    mlp,
)

#: The plugin interface this module is written for.
POLYMODAL_PLUGIN_API = 2


class FiLMFusion(Fusion):
    """Conditioning (FiLM): other inputs scale and shift a backbone's feature maps at chosen stages.

    The feature maps of ``target``'s backbone are modulated at ``stages`` (FiLM, Perez et al.;
    DAFT-style conditioning of image networks on tabular data).

    The features of every other input of the head (each mean-pooled to a vector as its signal
    pools) are concatenated into a condition; for each stage a small network turns it into a
    per-channel scale and shift, applied as ``map * (1 + scale) + shift`` at every position of
    the stage's output. Its last layer starts at zero, so a pretrained backbone starts unchanged
    and training learns how much to condition it. The fused output is the target's pooled
    features, followed (``combine: concat``) by the condition itself.

    Stage numbers are the backbone's (timm/torchvision ResNets: 0 the stem, 1-4 the residual
    stages). A sample whose conditioning inputs are all absent keeps its feature maps unchanged;
    an absent target is replaced by a learned placeholder.
    """

    class Config(FusionConfig):
        type: Literal["film"] = "film"
        target: str = Field(description="The input whose backbone is conditioned.", min_length=1)
        stages: list[NonNegativeInt] = Field(
            description="Backbone stages whose output is scaled and shifted, e.g. [3, 4].",
            min_length=1)
        hidden: list[PositiveInt] = Field(
            default_factory=lambda: [64], description="Hidden widths of the network that"
            " computes each stage's scale and shift from the condition.")
        activation: Activation = Field("relu", description="Activation of that network.")
        combine: Literal["target", "concat"] = Field(
            "concat", description="Fused output: the target's pooled features, or those"
            " followed by the condition.")

        @field_validator("stages")
        @classmethod
        def _distinct(cls, stages: list[int]) -> list[int]:
            if len(set(stages)) != len(stages):
                raise ValueError("a stage is listed twice")
            return sorted(stages)

        def describe(self) -> str:
            return f"film of {self.target!r} at stages {self.stages}"

        def conditions(self, inputs: Sequence[str]) -> dict[str, tuple[int, ...]]:
            return {self.target: tuple(self.stages)} if self.target in inputs else {}

        def gives(self, takes: Mapping[str, Signal]) -> Signal:
            if self.target not in takes:
                raise PolymodalError(
                    f"target {self.target!r} is not among these inputs; set target to one of"
                    f" {', '.join(takes)} or limit the heads' inputs")
            sources = [n for n in takes if n != self.target]
            if not sources:
                raise PolymodalError(
                    f"target {self.target!r} is the only input; FiLM needs another input to"
                    " condition it")
            width = takes[self.target].width
            if self.combine == "concat":
                width += sum(takes[n].width for n in sources)
            return Vector(width)

    config: Config

    example_options = {"target": "image", "stages": [3, 4]}
    exportable = True

    def __init__(self, config: Config, takes: FusionInputs):
        super().__init__(config, takes)
        self.target = config.target
        self.sources = [n for n in takes if n != config.target]
        condition = sum(takes[n].width for n in self.sources)
        stages = takes.stages[config.target]
        # What each modulated stage gives, which says how a per-channel scale spreads over it.
        self.stage_signals = {stage: stages[stage] for stage in config.stages}
        self.generators = nn.ModuleDict()
        for stage in config.stages:
            channels = stages[stage].width
            net = mlp(condition, [*config.hidden, 2 * channels], act=config.activation,
                      final_activation=False)
            last = [m for m in net.modules() if isinstance(m, nn.Linear)][-1]
            nn.init.zeros_(last.weight)
            nn.init.zeros_(last.bias)
            self.generators[str(stage)] = net
        self.placeholder = nn.Parameter(torch.zeros(takes[config.target].width))

    def _condition(self, features: Mapping[str, torch.Tensor],
                   present: Mapping[str, torch.Tensor] | None) -> tuple[torch.Tensor, torch.Tensor]:
        """The condition ``[B, width]`` (absent inputs zeroed) and which samples have one."""
        parts, any_present = [], None
        for name in self.sources:
            vector = self.takes[name].pool(features[name])
            mask = torch.ones(vector.shape[0], dtype=torch.bool, device=vector.device)
            if present is not None and name in present:
                mask = present[name].to(torch.bool).view(-1)
                vector = torch.where(mask.unsqueeze(1), vector, torch.zeros_like(vector))
            parts.append(vector)
            any_present = mask if any_present is None else any_present | mask
        condition = torch.cat(parts, dim=1)
        assert any_present is not None, "a FiLM fusion has another input (its config's gives)"
        return condition, any_present

    def modulate(self, target: str, stage: int, output: torch.Tensor,
                 features: Mapping[str, torch.Tensor],
                 present: Mapping[str, torch.Tensor] | None = None) -> torch.Tensor:
        signal = self.stage_signals[stage]
        problem = signal.shape_problem(tuple(output.shape))
        if problem:
            raise ComponentError(
                f"film: stage {stage} of input {target!r} does not give what its backbone"
                f" declares for it: {problem}")
        condition, has_condition = self._condition(features, present)
        scale, shift = self.generators[str(stage)](condition).to(output.dtype).chunk(2, dim=1)
        keep = has_condition.unsqueeze(1)
        scale = torch.where(keep, scale, torch.zeros_like(scale))
        shift = torch.where(keep, shift, torch.zeros_like(shift))
        return output * (1 + signal.broadcast(scale)) + signal.broadcast(shift)

    def forward(self, features: Mapping[str, torch.Tensor],
                present: Mapping[str, torch.Tensor] | None = None) -> torch.Tensor:
        vector = self.takes[self.target].pool(features[self.target])
        if present is not None and self.target in present:
            mask = present[self.target].to(torch.bool).view(-1, 1)
            vector = torch.where(mask, vector, self.placeholder.to(vector.dtype))
        if self.config.combine == "target":
            return vector
        return torch.cat([vector, self._condition(features, present)[0]], dim=1)


@hookimpl
def polymodal_components():
    return [FiLMFusion]

"""From a validated spec to one ``nn.Module``.

:func:`plan` walks the spec's connections with each config's ``gives`` and reports every
mismatch with its spec location and fix, before any weight exists; :func:`build` then creates
the modules. A named backbone is one module however many inputs use it. Heads over different
input sets each get their own instance of the spec's fusion.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .components import Component, ComponentConfig
from .errors import ConnectionMismatch, DataError, PolymodalError, SpecError
from .registry import Registry, get_registry
from .signals import Signal
from .spec import ModelSpec, load_spec


@dataclass(frozen=True)
class Plan:
    """The signals of a spec, as its configs state them."""

    adapter_gives: dict[str, Signal]  # input -> adapter output
    features: dict[str, Signal]  # input -> what goes into fusion
    groups: dict[tuple[str, ...], list[str]]  # input set -> heads
    fused: dict[tuple[str, ...], Signal]  # input set -> fusion output (or the lone feature)


def group_key(inputs: tuple[str, ...]) -> str:
    return "+".join(inputs)


def _describe(kind: str, name: str | None, config: ComponentConfig) -> str:
    label = f" {name!r}" if name else ""
    return f"{kind}{label} ({config.describe()})"


def plan(spec: ModelSpec) -> Plan:
    """Check every connection of ``spec``; raises :class:`SpecError` listing each mismatch."""
    problems: list[tuple[str, str]] = []
    adapter_gives: dict[str, Signal] = {}
    features: dict[str, Signal] = {}
    for name, inp in spec.inputs.items():
        where = f"inputs.{name}.adapter"
        try:
            given = inp.adapter.gives()
        except PolymodalError as exc:
            problems.append((where, str(exc)))
            continue
        adapter_gives[name] = given
        if inp.backbone is None:
            features[name] = given
            continue
        if isinstance(inp.backbone, str):
            backbone, consumer = spec.backbones[inp.backbone], inp.backbone
        else:
            backbone, consumer = inp.backbone, None
        try:
            features[name] = backbone.gives(given)
        except ConnectionMismatch as exc:
            fix = inp.adapter.fix_for(exc.wanted) if exc.wanted is not None else None
            wanted = exc.wanted.describe() if exc.wanted is not None else str(exc)
            message = (
                f"gives {given.describe()} but {_describe('backbone', consumer, backbone)}"
                f" takes {wanted}"
            )
            if fix:
                message += f"; {fix}"
            problems.append((where, message))
        except PolymodalError as exc:
            loc = f"backbones.{consumer}" if consumer else f"inputs.{name}.backbone"
            problems.append((loc, str(exc)))
    groups = spec.fusion_groups()
    fused: dict[tuple[str, ...], Signal] = {}
    for inputs, heads in groups.items():
        if any(n not in features for n in inputs):
            continue
        if spec.fusion is None:
            fused[inputs] = features[inputs[0]]
        else:
            try:
                fused[inputs] = spec.fusion.gives({n: features[n] for n in inputs})
            except PolymodalError as exc:
                problems.append(("fusion", f"for inputs {', '.join(inputs)}: {exc}"))
                continue
        for head in heads:
            try:
                spec.heads[head].check_takes(fused[inputs])
            except PolymodalError as exc:
                source = "fusion" if spec.fusion is not None else f"input {inputs[0]!r}"
                problems.append(
                    (f"heads.{head}", f"{source} gives {fused[inputs].describe()}: {exc}")
                )
    if problems:
        raise SpecError(problems)
    return Plan(adapter_gives, features, groups, fused)


class PolymodalModel(nn.Module):
    """The assembled model: ``model(batch)`` maps input names to tensors, returns head outputs.

    A tabular input is a dict of column name -> tensor. Inputs missing from the batch are
    skipped, and only heads whose inputs are all present are computed.
    """

    def __init__(self, spec: ModelSpec, modules: dict[str, Any], plan: Plan):
        super().__init__()
        self.spec = spec
        self.plan = plan
        self.adapters = nn.ModuleDict(modules["adapters"])
        self.backbones = nn.ModuleDict(modules["backbones"])
        self.input_backbones = nn.ModuleDict(modules["input_backbones"])
        self.fusions = nn.ModuleDict(modules["fusions"])
        self.heads = nn.ModuleDict(modules["heads"])
        self._backbone_of: dict[str, nn.Module | None] = {}
        for name, inp in spec.inputs.items():
            if isinstance(inp.backbone, str):
                self._backbone_of[name] = self.backbones[inp.backbone]
            elif inp.backbone is not None:
                self._backbone_of[name] = self.input_backbones[name]
            else:
                self._backbone_of[name] = None
        self._groups = [(inputs, group_key(inputs), heads) for inputs, heads in plan.groups.items()]

    def encode(self, batch: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        """Features of each input present in ``batch`` (adapter, then backbone)."""
        features = {}
        for name, adapter in self.adapters.items():
            if name not in batch or batch[name] is None:
                continue
            x = adapter(batch[name])
            backbone = self._backbone_of[name]
            features[name] = x if backbone is None else backbone(x)
        return features

    def forward(
        self, batch: Mapping[str, Any], present: Mapping[str, torch.Tensor] | None = None
    ) -> dict[str, torch.Tensor]:
        unknown = [k for k in batch if k not in self.adapters]
        if unknown:
            raise DataError(
                f"batch has unknown input(s) {', '.join(map(repr, unknown))};"
                f" the model's inputs are {', '.join(self.adapters)}"
            )
        features = self.encode(batch)
        outputs: dict[str, torch.Tensor] = {}
        for inputs, key, heads in self._groups:
            if not all(n in features for n in inputs):
                continue
            if key in self.fusions:
                group_present = None
                if present is not None:
                    group_present = {n: present[n] for n in inputs if n in present}
                fused = self.fusions[key]({n: features[n] for n in inputs}, group_present)
            else:
                fused = features[inputs[0]]
            for head in heads:
                outputs[head] = self.heads[head](fused)
        return outputs


def _instantiate(
    cls: type[Component], config: ComponentConfig, takes: Any, where: str,
    located: list[tuple[str, Component]],
) -> Component:
    try:
        module = cls(config, takes)
    except PolymodalError as exc:
        raise SpecError([(where, str(exc))]) from None
    located.append((where, module))
    return module


def build(
    spec: ModelSpec | str | Path | Mapping[str, Any],
    *,
    pretrained: bool = True,
    registry: Registry | None = None,
) -> PolymodalModel:
    """Assemble the model a spec describes.

    ``pretrained=False`` skips loading pretrained weights (used when weights come from a model
    file).
    """
    registry = registry or get_registry()
    spec = load_spec(spec, registry)
    the_plan = plan(spec)

    def component_class(config: ComponentConfig) -> type[Component]:
        return registry.load(registry.record_for_config(type(config)))

    located: list[tuple[str, Component]] = []
    modules: dict[str, dict[str, Component]] = {
        "adapters": {}, "backbones": {}, "input_backbones": {}, "fusions": {}, "heads": {}
    }
    for name, inp in spec.inputs.items():
        modules["adapters"][name] = _instantiate(
            component_class(inp.adapter), inp.adapter, None, f"inputs.{name}.adapter", located
        )
        if isinstance(inp.backbone, str) and inp.backbone not in modules["backbones"]:
            config = spec.backbones[inp.backbone]
            modules["backbones"][inp.backbone] = _instantiate(
                component_class(config), config, the_plan.adapter_gives[name],
                f"backbones.{inp.backbone}", located,
            )
        elif isinstance(inp.backbone, ComponentConfig):
            modules["input_backbones"][name] = _instantiate(
                component_class(inp.backbone), inp.backbone, the_plan.adapter_gives[name],
                f"inputs.{name}.backbone", located,
            )
    for inputs, heads in the_plan.groups.items():
        if spec.fusion is not None:
            takes = {n: the_plan.features[n] for n in inputs}
            modules["fusions"][group_key(inputs)] = _instantiate(
                component_class(spec.fusion), spec.fusion, takes, "fusion", located
            )
        for head in heads:
            config = spec.heads[head]
            modules["heads"][head] = _instantiate(
                component_class(config), config, the_plan.fused[inputs], f"heads.{head}", located
            )
    model = PolymodalModel(spec, modules, the_plan)
    if pretrained:
        for where, module in located:
            try:
                module.load_pretrained()
            except PolymodalError as exc:
                raise SpecError([(where, str(exc))]) from None
    return model

"""From a validated spec to one ``nn.Module``.

:func:`plan` walks the spec's connections with each config's ``gives`` and reports every
mismatch with its spec location and fix, before any weight exists; :func:`build` then creates
the modules. A named backbone is one module however many inputs use it. Heads over different
input sets each get their own instance of the spec's fusion.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import torch
from torch import nn

from ._components import (
    AdapterConfig,
    Backbone,
    BackboneConfig,
    Component,
    ComponentConfig,
    Fusion,
    FusionConfig,
    FusionInputs,
)
from ._data.nested import map_tensors
from ._errors import (
    ConnectionMismatch,
    DataError,
    PolymodalError,
    Problem,
    SpecError,
    first_line,
    out_of_memory,
)
from ._footprint import Footprint, check_fits, footprint_of, unmeasured
from ._registry import Registry, component_problems, get_registry
from ._signals import Signal, Vector
from ._spec import ModelSpec, load_spec


@dataclass(frozen=True)
class Plan:
    """The signals of a spec, as its configs state them."""

    adapter_gives: dict[str, Signal]  # input -> adapter output
    features: dict[str, Signal]  # input -> what goes into fusion
    heads_by_inputs: dict[tuple[str, ...], list[str]]  # input set -> the heads that read it
    fused: dict[tuple[str, ...], Signal]  # input set -> fusion output (or the lone feature)
    fusion_takes: dict[tuple[str, ...], FusionInputs]  # input set -> what its fusion takes


def fusion_key(inputs: tuple[str, ...]) -> str:
    """The name of the fusion of the input set ``inputs`` in the model's ``fusions``."""
    return "+".join(inputs)


def auxiliary_inputs(spec: ModelSpec, inputs: tuple[str, ...]) -> tuple[str, ...]:
    """The inputs of an input set that get a copy of each of its heads (``fusion.auxiliary``):
    every input of a set that fuses several."""
    fusion = spec.fusion
    return inputs if fusion is not None and fusion.auxiliary is not None and len(inputs) > 1 else ()


def auxiliary_key(head: str, name: str) -> str:
    """The name of head ``head``'s copy for input ``name``, and of its output in training."""
    return f"{head}@{name}"


def _describe(kind: str, name: str | None, config: ComponentConfig) -> str:
    label = f" {name!r}" if name else ""
    return f"{kind}{label} ({config.describe()})"


def plan(spec: ModelSpec) -> Plan:
    """Check every connection of ``spec``; raises :class:`SpecError` listing each mismatch."""
    problems: list[Problem] = []
    adapter_gives, features, backbone_of = _input_features(spec, problems)
    heads_by_inputs = spec.heads_by_inputs()
    fused: dict[tuple[str, ...], Signal] = {}
    fusion_takes: dict[tuple[str, ...], FusionInputs] = {}
    for inputs, heads in heads_by_inputs.items():
        if any(n not in features for n in inputs):
            continue
        if spec.fusion is None:
            fused[inputs] = features[inputs[0]]
        else:
            try:
                stages = _conditioned_stages(spec.fusion, inputs, adapter_gives, backbone_of)
                takes = FusionInputs({n: features[n] for n in inputs}, stages)
                fused[inputs] = spec.fusion.gives(takes)
                fusion_takes[inputs] = takes
            except Exception as exc:  # noqa: BLE001 - the component's error, reported at its path
                problems.extend(_prefixed(component_problems(exc, "fusion", spec.fusion),
                                          f"for inputs {', '.join(inputs)}: "))
                continue
        for head in heads:
            problems.extend(_head_problems(spec, head, inputs, fused[inputs]))
    if problems:
        raise SpecError(list(dict.fromkeys(problems)))  # a shared backbone fails once per input
    return Plan(adapter_gives, features, heads_by_inputs, fused, fusion_takes)


def _input_features(spec: ModelSpec, problems: list[Problem]) -> tuple[
        dict[str, Signal], dict[str, Signal], dict[str, tuple[BackboneConfig, str | None]]]:
    """What each input's adapter gives, what its backbone makes of it (its features), and its
    backbone with the name it is shared under; each mismatch added to ``problems``."""
    adapter_gives: dict[str, Signal] = {}
    features: dict[str, Signal] = {}
    backbone_of: dict[str, tuple[BackboneConfig, str | None]] = {}
    for name, inp in spec.inputs.items():
        where = f"inputs.{name}.adapter"
        try:
            given = inp.adapter.gives()
        except Exception as exc:  # noqa: BLE001 - the component's error, reported at its path
            problems.extend(component_problems(exc, where, inp.adapter))
            continue
        adapter_gives[name] = given
        if inp.backbone is None:
            features[name] = given
            continue
        if isinstance(inp.backbone, str):
            backbone, consumer = spec.backbones[inp.backbone], inp.backbone
        else:
            backbone, consumer = inp.backbone, None
        backbone_of[name] = (backbone, consumer)
        try:
            features[name] = backbone.gives(given)
        except ConnectionMismatch as exc:
            problems.extend(_mismatch_problems(inp.adapter, where, given, backbone, consumer, exc))
        except Exception as exc:  # noqa: BLE001
            loc = f"backbones.{consumer}" if consumer else f"inputs.{name}.backbone"
            problems.extend(component_problems(exc, loc, backbone))
    return adapter_gives, features, backbone_of


def _mismatch_problems(adapter: AdapterConfig, where: str, given: Signal,
                       backbone: BackboneConfig, consumer: str | None,
                       exc: ConnectionMismatch) -> list[Problem]:
    """A backbone refusing what its adapter gives, with the adapter's fix where it has one."""
    try:
        fix = adapter.fix_for(exc.wanted) if exc.wanted is not None else None
    except Exception as fix_exc:  # noqa: BLE001
        return component_problems(fix_exc, where, adapter)
    wanted = exc.wanted.describe() if exc.wanted is not None else str(exc)
    message = (f"gives {given.describe()} but {_describe('backbone', consumer, backbone)}"
               f" takes {wanted}")
    return [Problem(where, f"{message}; {fix}" if fix else message)]


def _head_problems(spec: ModelSpec, head: str, inputs: tuple[str, ...],
                   fused: Signal) -> list[Problem]:
    """Whether head ``head`` takes what the fusion of its inputs (or its single input) gives."""
    try:
        spec.heads[head].check_takes(fused)
    except Exception as exc:  # noqa: BLE001
        found = component_problems(exc, f"heads.{head}", spec.heads[head])
        if isinstance(exc, PolymodalError):  # the head refuses what it is given
            source = "fusion" if spec.fusion is not None else f"input {inputs[0]!r}"
            found = _prefixed(found, f"{source} gives {fused.describe()}: ")
        return found
    return []


def _prefixed(problems: list[Problem], prefix: str) -> list[Problem]:
    return [Problem(p[0], prefix + p[1], p.cause) for p in problems]


def _conditioned_stages(
    fusion: FusionConfig, inputs: tuple[str, ...], adapter_gives: Mapping[str, Signal],
    backbone_of: Mapping[str, tuple[BackboneConfig, str | None]],
) -> dict[str, tuple[Signal, ...]]:
    """Stage signals of each input the fusion conditions, checked against what it asks for."""
    found: dict[str, tuple[Signal, ...]] = {}
    for target, wanted in fusion.conditions(inputs).items():
        if target not in inputs:
            raise PolymodalError(f"conditions input {target!r}, which is not among {', '.join(inputs)}")
        if target not in backbone_of:
            raise PolymodalError(f"conditions input {target!r}, which has no backbone")
        backbone, consumer = backbone_of[target]
        stages = backbone.stages(adapter_gives[target])
        label = _describe("backbone", consumer, backbone)
        if not stages:
            raise PolymodalError(f"conditions input {target!r}, but its {label} exposes no stages")
        bad = [s for s in wanted if not 0 <= s < len(stages)]
        if bad:
            listing = ", ".join(f"{i}: {s.describe()}" for i, s in enumerate(stages))
            raise PolymodalError(
                f"stage(s) {', '.join(map(str, bad))} of input {target!r} do not exist; its"
                f" {label} has stages {listing}")
        found[target] = stages
    return found


class PolymodalModel(nn.Module):
    """The assembled model: ``model(batch)`` maps input names to tensors, returns head outputs.

    A tabular input is a dict of column name -> tensor. Inputs missing from the batch are
    skipped, and only heads whose inputs are all present are computed.
    """

    def __init__(self, spec: ModelSpec, modules: dict[str, Any], plan: Plan):
        super().__init__()
        self.spec = spec
        self.plan = plan
        #: The preprocessing fitted on the training table (``{"inputs": {...}, "heads": {...}}``,
        #: each codec's state), kept in the model file; None for a model not trained on a table.
        self.fitted_state: dict[str, Any] | None = None
        self.adapters = nn.ModuleDict(modules["adapters"])
        self.backbones = nn.ModuleDict(modules["backbones"])
        self.input_backbones = nn.ModuleDict(modules["input_backbones"])
        self.fusions = nn.ModuleDict(modules["fusions"])
        self.heads = nn.ModuleDict(modules["heads"])
        #: ``fusion.auxiliary``: a copy of a head for each input it reads (``head@input``),
        #: trained on that input's pooled features; its outputs exist in training mode only.
        self.auxiliary = nn.ModuleDict(modules.get("auxiliary", {}))
        #: Whether they give outputs in evaluation mode too (training's validation sets it).
        self.auxiliary_outputs = False
        self._backbone_of: dict[str, Backbone | None] = {}
        for name, inp in spec.inputs.items():
            if isinstance(inp.backbone, str):
                self._backbone_of[name] = cast(Backbone, self.backbones[inp.backbone])
            elif inp.backbone is not None:
                self._backbone_of[name] = cast(Backbone, self.input_backbones[name])
            else:
                self._backbone_of[name] = None
        self._input_sets = [(inputs, fusion_key(inputs), heads)
                            for inputs, heads in plan.heads_by_inputs.items()]
        # Inputs whose backbone an input set's fusion modulates (conditioning), with the stages.
        self._conditions = {
            fusion_key(inputs): dict(spec.fusion.conditions(inputs)) if spec.fusion else {}
            for inputs in plan.heads_by_inputs
        }

    def _adapt(self, batch: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        return {name: adapter(batch[name]) for name, adapter in self.adapters.items()
                if batch.get(name) is not None}

    def _backbone(self, name: str, x: torch.Tensor) -> torch.Tensor:
        backbone = self._backbone_of[name]
        return x if backbone is None else backbone(x)

    def encode(self, batch: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        """Features of each input present in ``batch`` (adapter, then backbone), unconditioned."""
        return {name: self._backbone(name, x) for name, x in self._adapt(batch).items()}

    def _features(self, name: str, value: Any, held: torch.Tensor | None) -> torch.Tensor:
        """Input ``name``'s features (adapter, then backbone). In training, where ``held`` (the
        per-sample mask of the rows that hold the input) leaves some rows out, only the rows
        that hold it are run, so placeholders never reach batch-norm statistics; the others
        get zeros, which the fusion never reads (they are marked absent)."""
        rows = None
        if self.training and held is not None:
            count = int(held.sum())
            if 2 <= count < held.shape[0]:  # batch norm needs two rows in training
                rows = held.nonzero().squeeze(1)
        if rows is None or held is None:
            return self._backbone(name, self.adapters[name](value))
        out = self._backbone(name, self.adapters[name](_rows(value, rows)))
        return out.new_zeros((held.shape[0], *out.shape[1:])).index_copy(0, rows, out)

    def forward(
        self, batch: Mapping[str, Any], present: Mapping[str, torch.Tensor] | None = None
    ) -> dict[str, torch.Tensor]:
        """Head outputs by name. ``present`` optionally maps inputs to a boolean ``[B]`` mask:
        samples whose input is marked ``False`` are predicted as if it were missing."""
        self._check_names(batch, present)
        given = [n for n in self.adapters if batch.get(n) is not None]
        plain: dict[str, torch.Tensor] = {}  # backbone features, computed once for all input sets
        adapted: dict[str, torch.Tensor] = {}  # adapter outputs of conditioned inputs

        def features(n: str) -> torch.Tensor:
            if n not in plain:
                held = present.get(n) if present else None
                plain[n] = self._features(n, batch[n], None if held is None else held.to(torch.bool))
            return plain[n]

        outputs: dict[str, torch.Tensor] = {}
        for inputs, key, heads in self._input_sets:
            if not all(n in given for n in inputs):
                continue
            if key not in self.fusions:
                fused = features(inputs[0])
            else:
                fed = {n: features(n) for n in inputs if n not in self._conditions[key]}
                fused = self._fuse(key, inputs, batch, present, fed, adapted)
                if self.auxiliary and (self.training or self.auxiliary_outputs):
                    outputs.update(self._auxiliary(heads, fed))
            for head in heads:
                outputs[head] = self.heads[head](fused)
        if not outputs:
            needs = "; ".join(f"{h} needs {', '.join(i)}" for i, _, hs in self._input_sets for h in hs)
            raise DataError(
                f"no head can be computed from the batch's input(s)"
                f" {', '.join(map(repr, batch)) or '(none)'}: {needs}. To predict for samples"
                " that lack an input, pass it anyway and mark them absent with"
                " present={input: mask}")
        return outputs

    def _check_names(self, batch: Mapping[str, Any],
                     present: Mapping[str, torch.Tensor] | None) -> None:
        for what, names in (("batch has", batch), ("present names", present or {})):
            unknown = [k for k in names if k not in self.adapters]
            if unknown:
                raise DataError(f"{what} unknown input(s) {', '.join(map(repr, unknown))};"
                                f" the model's inputs are {', '.join(self.adapters)}")

    def _fuse(self, key: str, inputs: tuple[str, ...], batch: Mapping[str, Any],
              present: Mapping[str, torch.Tensor] | None, fed: dict[str, torch.Tensor],
              adapted: dict[str, torch.Tensor]) -> torch.Tensor:
        """The fusion of input set ``key``: its inputs' features ``fed`` (to which it adds those of
        the inputs it conditions, whose backbones it modulates as they run)."""
        fusion = cast(Fusion, self.fusions[key])
        conditioned = self._conditions[key]
        for n in conditioned:
            if n not in adapted:
                adapted[n] = self.adapters[n](batch[n])
        first = next(iter(fed.values()), None)
        if first is None:
            first = adapted[inputs[0]]
        masks = fusion.presence(inputs, present, first.shape[0], first.device)
        for target, stages in conditioned.items():
            def modulate(stage, output, fusion=fusion, target=target, features=fed, masks=masks):
                return fusion.modulate(target, stage, output, features, masks)

            # plan() refused conditioning an input that has no backbone
            fed[target] = cast(Backbone, self._backbone_of[target]).modulated(
                adapted[target], modulate, stages)
        return fusion({n: fed[n] for n in inputs}, masks)

    def _auxiliary(self, heads: list[str], fed: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Each head's copy for each input, on the input's pooled features (training only)."""
        found = {}
        for head in heads:
            for name, value in fed.items():
                key = auxiliary_key(head, name)
                if key in self.auxiliary:
                    found[key] = self.auxiliary[key](self.plan.features[name].pool(value))
        return found


def _rows(value: Any, rows: torch.Tensor) -> Any:
    """Rows ``rows`` of every tensor in a (nested) batch value."""
    return map_tensors(value, lambda tensor: tensor.index_select(0, rows.to(tensor.device)))


@dataclass
class _Modules:
    """The components of a model being built, each made where the spec places it; a refusal
    goes to ``problems`` so that all of them are reported at once."""

    registry: Registry
    located: list[tuple[str, Component]] = field(default_factory=list)
    problems: list[tuple[str, str]] = field(default_factory=list)
    made: dict[str, dict[str, Component | None]] = field(default_factory=lambda: {
        "adapters": {}, "backbones": {}, "input_backbones": {}, "fusions": {}, "heads": {},
        "auxiliary": {}})

    def make(self, config: ComponentConfig, takes: Any, where: str) -> Component | None:
        cls = self.registry.load(self.registry.record_for_config(type(config)))
        try:
            module = cls(config, takes)
        except Exception as exc:  # noqa: BLE001 - the component's error, reported at its path
            if out_of_memory(exc):
                self.problems.append((where, f"{config.describe()} needs more memory than this"
                                      f" machine has ({first_line(exc, 200)}); `polymodal"
                                      " validate` reports the model's size"))
            else:
                self.problems.extend(component_problems(exc, where, config, self.registry))
            return None
        self.located.append((where, module))
        return module

    def inputs(self, spec: ModelSpec, the_plan: Plan) -> None:
        """Each input's adapter, and its backbone (a shared one once)."""
        for name, inp in spec.inputs.items():
            gives = the_plan.adapter_gives[name]
            self.made["adapters"][name] = self.make(inp.adapter, None, f"inputs.{name}.adapter")
            if isinstance(inp.backbone, str) and inp.backbone not in self.made["backbones"]:
                self.made["backbones"][inp.backbone] = self.make(
                    spec.backbones[inp.backbone], gives, f"backbones.{inp.backbone}")
            elif isinstance(inp.backbone, ComponentConfig):
                self.made["input_backbones"][name] = self.make(inp.backbone, gives,
                                                               f"inputs.{name}.backbone")

    def fusions_and_heads(self, spec: ModelSpec, the_plan: Plan) -> None:
        """Each input set's fusion, its heads, and their per-input copies (fusion.auxiliary)."""
        for inputs, heads in the_plan.heads_by_inputs.items():
            if spec.fusion is not None:
                self.made["fusions"][fusion_key(inputs)] = self.make(
                    spec.fusion, the_plan.fusion_takes[inputs], "fusion")
            for head in heads:
                config = spec.heads[head]
                self.made["heads"][head] = self.make(config, the_plan.fused[inputs],
                                                     f"heads.{head}")
                for name in auxiliary_inputs(spec, inputs) if self.made["heads"][head] else ():
                    self.made["auxiliary"][auxiliary_key(head, name)] = self.make(
                        config, Vector(the_plan.features[name].width),
                        f"heads.{head} (its copy for input {name!r}: fusion.auxiliary)")

    def load_pretrained(self, spec: ModelSpec) -> None:
        """Each component's pretrained weights, a relative path read beside the spec file."""
        from ._spec_files import SPEC_FOLDER

        folder = SPEC_FOLDER.set(spec._folder)
        try:
            for where, module in self.located:
                try:
                    module.load_pretrained()
                except Exception as exc:  # noqa: BLE001 - the component's error, at its path
                    raise SpecError(component_problems(exc, where, module.config,
                                                       self.registry)) from None
        finally:
            SPEC_FOLDER.reset(folder)


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
    if torch.get_default_device().type != "meta":  # on meta it is the measurement itself
        refuse_too_large(spec)  # before allocating: what validate refuses, build refuses
    modules = _Modules(registry)
    modules.inputs(spec, the_plan)
    modules.fusions_and_heads(spec, the_plan)
    if modules.problems:
        raise SpecError(modules.problems)
    model = PolymodalModel(spec, modules.made, the_plan)
    if pretrained:
        modules.load_pretrained(spec)
    return model


# -- a spec's model measured before it is built ---------------------------------------------


def measure(spec: ModelSpec) -> Footprint:
    """The footprint of ``spec``'s model, built on the meta device (nothing allocated)."""
    with torch.device("meta"):
        return footprint_of(build(spec, pretrained=False))


def refuse_too_large(spec: ModelSpec) -> None:
    """Refuse, before anything is allocated, a model that cannot fit this machine's memory
    (as ``validate`` does); a model that cannot be measured is left to the build."""
    try:
        footprint = measure(spec)
    except Exception:  # noqa: BLE001 - measuring is advice; the build reports its own errors
        return
    check_fits(footprint)


def measured(spec: ModelSpec) -> Footprint | str:
    """The footprint, or why it could not be measured (a component that cannot be made on the
    meta device); refuses a model that cannot fit."""
    try:
        footprint = measure(spec)
    except Exception as exc:  # noqa: BLE001 - measuring is advice; the build reports its own errors
        return unmeasured(exc)
    check_fits(footprint)
    return footprint

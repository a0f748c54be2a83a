"""Conformance checks for component classes, for plugin authors and polymodal's own suite.

:func:`check_component` takes a component class and checks what assembly and users rely on::

    from polymodal._testing import check_component
    from my_plugin import MyBackbone

    def test_my_backbone_conforms():
        check_component(MyBackbone, {"depth": 2}, bad_options=[{"depth": 0}])

It builds the component from its config, runs a random batch through it and compares the
output's shape with the signal the config says it gives; builds a minimal spec model holding
it and checks that gradients reach every trainable parameter of the component (and flow on to
its input); saves that model to a model file and loads it back with identical outputs; and
checks that an unknown option and each of ``bad_options`` are rejected by spec validation at
the component's spec path. A failure raises :class:`ConformanceError` (an ``AssertionError``)
naming the check.

The component need not be installed: a class no entry point provides is registered for the
check under the package ``polymodal-testing-subject``. The rest of the minimal spec is made of
*probe* components defined here, so the check depends on no other plugin.
"""

from __future__ import annotations

import importlib.util
import tempfile
import types
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import Field, PositiveInt, ValidationError
from torch import nn

from ._components import (
    AdapterConfig,
    Backbone,
    BackboneConfig,
    Component,
    Fusion,
    FusionConfig,
    FusionInputs,
    Head,
    HeadConfig,
    ModalityAdapter,
    component_identity,
)
from ._errors import ConnectionMismatch, PolymodalError, SpecError
from ._hooks import hookimpl
from ._registry import ComponentRecord, Registry
from ._signals import FeatureMap, Sequence, Signal, Tokens, Vector, example_signals

PROBE_PACKAGE = "polymodal-testing"
SUBJECT_PACKAGE = "polymodal-testing-subject"
_PROBE_SIGNALS: dict[str, type[Signal]] = {
    "vector": Vector, "feature_map": FeatureMap, "tokens": Tokens, "sequence": Sequence,
}
#: Signals tried, in order, when a backbone's or head's ``takes`` is not given.
DEFAULT_TAKES: tuple[Signal, ...] = example_signals()
#: Inputs tried, in order, when a fusion's ``takes`` is not given.
DEFAULT_FUSION_TAKES: tuple[dict[str, Signal], ...] = (
    {"image": FeatureMap(4), "table": Vector(8), "text": Tokens(6)},
    {"image": FeatureMap(4), "table": Vector(8)},
    {"table": Vector(8), "other": Vector(6)},
)
#: Stages of the probe backbone, numbered like a ResNet's (0 the stem, 1-4 the stages).
PROBE_STAGES = 5


class ConformanceError(AssertionError):
    """A component class does not behave as polymodal requires; the message names the check."""


@dataclass(frozen=True)
class ConformanceReport:
    """What :func:`check_component` found, for further assertions in a test."""

    kind: str
    type: str
    takes: Any
    gives: Signal | None
    output_shape: tuple[int, ...]
    parameters: int
    spec: dict[str, Any]


# -- probe components: the rest of a minimal spec ------------------------------------------


def _signal(name: str, width: int) -> Signal:
    return _PROBE_SIGNALS[name](width)  # type: ignore[call-arg]


def _probe_name(signal: Signal) -> str:
    for name, cls in _PROBE_SIGNALS.items():
        if type(signal) is cls:
            return name
    raise ConformanceError(
        f"the conformance check's probes know the signals {', '.join(_PROBE_SIGNALS)};"
        f" {signal.describe()} ({type(signal).__name__}) is not one of them"
    )


class ProbeAdapter(ModalityAdapter):
    """Gives the signal its options name (a conformance-check helper)."""

    class Config(AdapterConfig):
        type: Literal["probe"] = "probe"
        signal: Literal["vector", "feature_map", "tokens", "sequence"] = Field(
            "vector", description="The kind of signal given.")
        width: PositiveInt = Field(8, description="Its width (dim or channels).")

        def gives(self) -> Signal:
            return _signal(self.signal, self.width)

    def __init__(self, config: Config, takes: None = None):
        super().__init__(config, takes)
        self.scale = nn.Parameter(torch.ones(()))

    def example_input(self, batch_size: int = 2) -> torch.Tensor:
        return torch.randn(self.config.gives().example_shape(batch_size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale


class ProbeBackbone(Backbone):
    """Keeps a feature map's channels through five 1x1 convolutions, its stages (a
    conformance-check helper for fusions that condition a backbone)."""

    class Config(BackboneConfig):
        type: Literal["probe"] = "probe"

        def gives(self, takes: Signal) -> Signal:
            if not isinstance(takes, FeatureMap):
                raise ConnectionMismatch("takes a feature map", wanted=FeatureMap(takes.width))
            return FeatureMap(takes.channels)

        def stages(self, takes: Signal) -> tuple[Signal, ...]:
            return (self.gives(takes),) * PROBE_STAGES

    def __init__(self, config: Config, takes: FeatureMap):
        super().__init__(config, takes)
        self.layers = nn.ModuleList(
            nn.Conv2d(takes.channels, takes.channels, 1) for _ in range(PROBE_STAGES))

    def stage_modules(self) -> list[nn.Module]:
        return list(self.layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
        return x


def _pool(signal: Signal, x: torch.Tensor) -> torch.Tensor:
    if isinstance(signal, FeatureMap):
        return x.mean(dim=(2, 3))
    if isinstance(signal, Tokens):
        return x.mean(dim=1)
    if isinstance(signal, Sequence):
        return x.mean(dim=2)
    return x


class ProbeFusion(Fusion):
    """Mean-pools each input to a vector and concatenates them (a conformance-check helper)."""

    class Config(FusionConfig):
        type: Literal["probe"] = "probe"

        def gives(self, takes: Mapping[str, Signal]) -> Signal:
            for name, signal in takes.items():
                _probe_name(signal)
            return Vector(sum(s.width for s in takes.values()))

    def __init__(self, config: Config, takes: Mapping[str, Signal]):
        super().__init__(config, takes)
        self.signals = dict(takes)

    def forward(self, features, present=None):
        return torch.cat([_pool(self.signals[n], features[n]) for n in self.signals], dim=1)


class ProbeHead(Head):
    """One linear output with an MSE loss (a conformance-check helper)."""

    class Config(HeadConfig):
        type: Literal["probe"] = "probe"

    def __init__(self, config: Config, takes: Vector):
        super().__init__(config, takes)
        self.linear = nn.Linear(takes.dim, 1)

    def forward(self, fused: torch.Tensor) -> torch.Tensor:
        return self.linear(fused)

    def loss(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return nn.functional.mse_loss(output, target.view_as(output))

    def predict(self, output: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"value": output}


def _probes_plugin() -> types.ModuleType:
    module = types.ModuleType("polymodal._testing.probes")

    @hookimpl
    def polymodal_components():
        return [ProbeAdapter, ProbeBackbone, ProbeFusion, ProbeHead]

    module.polymodal_components = polymodal_components  # type: ignore[attr-defined]
    return module


def _subject_plugin(cls: type[Component]) -> types.ModuleType:
    module = types.ModuleType(f"{cls.__module__}.subject")

    @hookimpl
    def polymodal_components():
        return [cls]

    module.polymodal_components = polymodal_components  # type: ignore[attr-defined]
    return module


def check_registry(cls: type[Component], registry: Registry | None = None) -> tuple[Registry, ComponentRecord]:
    """A registry holding the installed plugins, the probes, and ``cls`` (registered if needed)."""
    registry = registry or Registry()
    registry.load_all()
    if not any(p.package == PROBE_PACKAGE for p in registry.plugins):
        registry.add_plugin(_probes_plugin(), PROBE_PACKAGE, name="probes")
    record = next((r for r in registry.components() if r.cls is cls), None)
    if record is None:
        plugin = registry.add_plugin(_subject_plugin(cls), SUBJECT_PACKAGE,
                                     name=f"{cls.__module__}.{cls.__qualname__}")
        if plugin.status != "loaded":
            raise ConformanceError(f"registering {cls.__qualname__} failed: {plugin.error}")
        record = next(r for r in plugin.components if r.cls is cls)
    return registry, record


# -- the check -----------------------------------------------------------------------------


def _fail(cls: type, check: str, detail: str) -> ConformanceError:
    return ConformanceError(f"{cls.__qualname__}: {check}: {detail}")


def _fusion_inputs(config: Any, takes: Mapping[str, Signal]) -> FusionInputs:
    """``takes`` with the stages of each input the fusion conditions (the probe backbone's)."""
    stages = {}
    for target in config.conditions(list(takes)):
        signal = takes.get(target)
        if not isinstance(signal, FeatureMap):
            raise ConnectionMismatch(
                f"conditions input {target!r}, which the check gives a probe backbone only if it"
                " is a feature map; pass takes with a FeatureMap for it")
        stages[target] = ProbeBackbone.Config().stages(signal)
    return FusionInputs(takes, stages)


def _gives(kind: str, config: Any, takes: Any) -> Signal | None:
    if kind == "adapter":
        return config.gives()
    if kind == "backbone":
        return config.gives(takes)
    if kind == "fusion":
        return config.gives(_fusion_inputs(config, takes))
    config.check_takes(takes)
    return None


def _choose_takes(cls: type, kind: str, config: Any) -> Any:
    candidates: Iterable[Any] = (
        DEFAULT_FUSION_TAKES if kind == "fusion" else DEFAULT_TAKES if kind != "adapter" else (None,)
    )
    reasons = []
    for takes in candidates:
        try:
            _gives(kind, config, takes)
            return takes
        except PolymodalError as exc:
            reasons.append(str(exc))
    raise _fail(cls, "takes", "none of the default inputs fit; pass takes=... ("
                + "; ".join(reasons) + ")")


def _minimal_spec(record: ComponentRecord, config: Any, takes: Any, gives: Signal | None) -> dict[str, Any]:
    subject = {**config.model_dump(mode="json", exclude_none=True), "type": record.canonical}
    probe = f"{PROBE_PACKAGE}:probe"

    def probe_adapter(signal: Signal) -> dict[str, Any]:
        return {"type": probe, "signal": _probe_name(signal), "width": signal.width}

    spec: dict[str, Any] = {"name": f"conformance-{record.type}"}
    if record.kind == "adapter":
        spec["inputs"] = {"x": {"adapter": subject}}
        spec["fusion"] = {"type": probe}
        spec["heads"] = {"y": {"type": probe}}
    elif record.kind == "backbone":
        spec["inputs"] = {"x": {"adapter": probe_adapter(takes), "backbone": "subject"}}
        spec["backbones"] = {"subject": subject}
        spec["fusion"] = {"type": probe}
        spec["heads"] = {"y": {"type": probe}}
    elif record.kind == "fusion":
        conditioned = config.conditions(list(takes))
        spec["inputs"] = {
            name: {"adapter": probe_adapter(s), **({"backbone": {"type": probe}} if name in conditioned else {})}
            for name, s in takes.items()
        }
        spec["fusion"] = subject
        spec["heads"] = {"y": {"type": probe}}
    else:
        spec["inputs"] = {"x": {"adapter": probe_adapter(takes)}}
        if not isinstance(takes, Vector):
            spec["fusion"] = {"type": probe}
        spec["heads"] = {"y": subject}
    return spec


def _all_present(names: Iterable[str], batch_size: int) -> dict[str, torch.Tensor]:
    # Explicit masks make fusions use their absent-input parameters (placeholders) too.
    return {name: torch.ones(batch_size, dtype=torch.bool) for name in names}


def _subject_module(model: nn.Module, kind: str) -> nn.Module:
    if kind == "adapter":
        return model.adapters["x"]
    if kind == "backbone":
        return model.backbones["subject"]
    if kind == "fusion":
        (fusion,) = model.fusions.values()
        return fusion
    return model.heads["y"]


def _subject_location(kind: str) -> tuple[str, ...]:
    return {
        "adapter": ("inputs", "x", "adapter"),
        "backbone": ("backbones", "subject"),
        "fusion": ("fusion",),
        "head": ("heads", "y"),
    }[kind]


def _with_options(spec: dict[str, Any], kind: str, options: Mapping[str, Any]) -> dict[str, Any]:
    import copy

    bad = copy.deepcopy(spec)
    node = bad
    for part in _subject_location(kind):
        node = node[part]
    node.update(options)
    return bad


def _configured(cls: type[Component], options: Mapping[str, Any] | None, takes: Any):
    try:
        kind, type_name = component_identity(cls)
    except PolymodalError as exc:
        raise _fail(cls, "identity", str(exc)) from None
    options = dict(cls.example_options if options is None else options)
    try:
        config = cls.Config.model_validate({**options, "type": type_name})
    except ValidationError as exc:
        raise _fail(cls, "config", f"options {options!r} do not validate: {exc}") from None
    if takes is None and kind != "adapter":
        takes = _choose_takes(cls, kind, config)
    try:
        gives = _gives(kind, config, takes)
    except PolymodalError as exc:
        raise _fail(cls, "gives", f"config rejects takes={takes!r}: {exc}") from None
    return kind, type_name, config, takes, gives


def minimal_spec(
    cls: type[Component],
    options: Mapping[str, Any] | None = None,
    *,
    takes: Any = None,
    registry: Registry | None = None,
) -> tuple[dict[str, Any], Registry]:
    """The smallest spec holding ``cls`` configured with ``options`` (default: its
    ``example_options``), the rest made of probe components, and the registry that knows them.

    This is the model :func:`check_component` builds; a test can validate, build or train it."""
    _, _, config, takes, gives = _configured(cls, options, takes)
    registry, record = check_registry(cls, registry)
    return _minimal_spec(record, config, takes, gives), registry


def check_component(
    cls: type[Component],
    options: Mapping[str, Any] | None = None,
    *,
    takes: Any = None,
    bad_options: Iterable[Mapping[str, Any]] = (),
    batch_size: int = 2,
    registry: Registry | None = None,
) -> ConformanceReport:
    """Check that ``cls`` works as polymodal requires; raises :class:`ConformanceError`.

    ``options``: the config's options besides ``type`` (default: ``cls.example_options``).
    ``takes``: the signal a backbone or head takes, or a fusion's ``{input: signal}``
    (default: the first of a few common ones the config accepts).
    ``bad_options``: option sets that spec validation (connections included) must reject at the
    component's spec path; an unknown key always is checked.
    """
    from ._assembly import build, plan
    from ._modelfile import load, save
    from ._spec import validate_spec_data

    kind, type_name, config, takes, gives = _configured(cls, options, takes)

    # Shapes, on the module alone.
    torch.manual_seed(0)
    module = cls(config, _fusion_inputs(config, takes) if kind == "fusion" else takes)
    if not isinstance(module, Component):
        raise _fail(cls, "build", f"constructing it gave {type(module).__name__}")
    module.train()
    try:
        batch = module.example_input(batch_size)
    except NotImplementedError as exc:
        raise _fail(cls, "example_input", str(exc)) from None
    try:
        output = module(batch, _all_present(takes, batch_size)) if kind == "fusion" else module(batch)
    except Exception as exc:  # noqa: BLE001 - any failure here is the finding
        raise _fail(cls, "forward", f"{type(exc).__name__}: {exc}") from None
    if not isinstance(output, torch.Tensor):
        raise _fail(cls, "forward", f"returned {type(output).__name__}, not a tensor")
    shape = tuple(output.shape)
    if not shape or shape[0] != batch_size:
        raise _fail(cls, "shape", f"output {list(shape)} lost the batch dimension {batch_size}")
    if gives is not None:
        problem = gives.shape_problem(shape)
        if problem:
            raise _fail(cls, "shape", f"the config says it gives {gives.describe()}, but {problem}")
    if kind == "head":
        predictions = module.predict(output.detach())
        if not isinstance(predictions, Mapping) or not all(
            isinstance(v, torch.Tensor) for v in predictions.values()
        ):
            raise _fail(cls, "predict", "must return a dict of name -> tensor")

    # Gradients, through a minimal spec model (so conditioning and presence masks take part).
    registry, record = check_registry(cls, registry)
    spec = _minimal_spec(record, config, takes, gives)
    try:
        model = build(spec, pretrained=False, registry=registry)
    except PolymodalError as exc:
        raise _fail(cls, "spec", f"a minimal spec holding it does not build: {exc}") from None
    model.train()
    model_batch = {name: adapter.example_input(batch_size) for name, adapter in model.adapters.items()}
    present = _all_present(model.adapters, batch_size)
    try:
        outputs = model(model_batch, present)
    except Exception as exc:  # noqa: BLE001 - any failure here is the finding
        raise _fail(cls, "forward", f"in a minimal spec model: {type(exc).__name__}: {exc}") from None
    subject = _subject_module(model, kind)
    trainable = [(n, p) for n, p in subject.named_parameters() if p.requires_grad]
    if not any(o.requires_grad for o in outputs.values()):
        raise _fail(cls, "gradients", "the model's outputs are detached from the autograd graph")
    sum(o.float().pow(2).mean() + o.float().mean() for o in outputs.values()).backward()
    no_grad = [n for n, p in trainable if p.grad is None]
    if no_grad:
        raise _fail(cls, "gradients", "no gradient reaches parameter(s) " + ", ".join(no_grad[:8]))
    bad = [n for n, p in trainable if not bool(torch.isfinite(p.grad).all())]
    if bad:
        raise _fail(cls, "gradients", "non-finite gradient in " + ", ".join(bad[:8]))
    if kind != "adapter" and all(a.scale.grad is None for a in model.adapters.values()):
        raise _fail(cls, "gradients", "no gradient flows back to its input")

    # Save/load round trip of that model.
    model.eval()
    with torch.no_grad():
        before = model(model_batch)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "conformance.safetensors"
        save(model, path, registry=registry)
        try:
            loaded = load(path, registry=registry)
            with torch.no_grad():
                after = loaded(model_batch)
        except Exception as exc:  # noqa: BLE001 - any failure here is the finding
            raise _fail(cls, "save/load", f"the loaded model fails: {type(exc).__name__}: {exc}"
                        " (is every tensor a parameter or buffer?)") from None
    if set(before) != set(after):
        raise _fail(cls, "save/load", f"heads {sorted(before)} became {sorted(after)}")
    for head, value in before.items():
        if not torch.allclose(value, after[head], atol=1e-5, rtol=1e-4):
            raise _fail(cls, "save/load", f"outputs of head {head!r} differ after loading the saved model")

    # Bad options are rejected, at the component's own spec path.
    where = ".".join(_subject_location(kind))
    for bad_set in [{"no_such_option": 1}, *bad_options]:
        try:
            plan(validate_spec_data(_with_options(spec, kind, bad_set), registry))
        except SpecError as exc:
            if not any(loc.startswith(where) for loc, _ in exc.problems):
                raise _fail(cls, "bad options", f"{bad_set!r} was rejected, but not at {where}: {exc}") from None
            continue
        raise _fail(cls, "bad options", f"{bad_set!r} was accepted")

    parameters = sum(p.numel() for p in module.parameters())
    return ConformanceReport(kind, type_name, takes, gives, shape, parameters, spec)


def check_export(
    cls: type[Component],
    options: Mapping[str, Any] | None = None,
    *,
    takes: Any = None,
    onnx: bool | None = None,
    registry: Registry | None = None,
) -> dict[str, float | None]:
    """Check what ``cls.exportable`` states; raises :class:`ConformanceError`.

    ``True``: a minimal spec model holding the component (as :func:`check_component` builds it)
    exports with torch.export and, with ``onnx`` (default: when onnx, onnxscript and
    onnxruntime are installed), to ONNX, and each file gives the model's outputs on a random
    batch. A sentence (or ``False``): nothing to run, export refuses such a model and gives it.
    Returns each format checked with the largest difference from the model's outputs.
    """
    from ._assembly import build
    from ._errors import ExportError
    from ._export import export, refusal

    if getattr(cls, "exportable", None) is None:
        raise _fail(cls, "exportable", "states nothing: set the class attribute `exportable = True`"
                    " if a model holding it exports, or to a sentence saying why it cannot")
    if refusal(cls) is not None:
        return {}  # export refuses a model holding it, giving the reason: nothing to run
    spec, registry = minimal_spec(cls, options, takes=takes, registry=registry)
    torch.manual_seed(0)
    model = build(spec, pretrained=False, registry=registry).eval()
    if onnx is None:
        onnx = all(importlib.util.find_spec(m) for m in ("onnx", "onnxscript", "onnxruntime"))
    formats = {"torch-export": ".pt2", **({"onnx": ".onnx"} if onnx else {})}
    found: dict[str, float | None] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for fmt, suffix in formats.items():
            try:
                result = export(model, Path(tmp) / f"model{suffix}", format=fmt, registry=registry)
            except ExportError as exc:
                raise _fail(cls, "export", f"{fmt}: {exc}") from None
            found[fmt] = result.difference
    return found


__all__ = [
    "ConformanceError",
    "ConformanceReport",
    "ProbeAdapter",
    "ProbeBackbone",
    "ProbeFusion",
    "ProbeHead",
    "check_component",
    "check_export",
    "check_registry",
    "minimal_spec",
]

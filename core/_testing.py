"""Conformance checks for component classes, for plugin authors and polymodal's own suite.

:func:`check_component` takes a component class and checks what assembly and users rely on::

    from polymodal.plugin import check_component
    from my_plugin import MyBackbone

    def test_my_backbone_conforms():
        check_component(MyBackbone, {"depth": 2}, bad_options=[{"depth": 0}])

It builds the component from its config, runs a random batch through it and compares the
output's shape with the signal the config says it gives; for a fusion, checks that an input
marked absent for a sample has no influence on it; builds a minimal spec model holding it and
checks that gradients reach every trainable parameter of the component (and flow on to its
input); saves that model to a model file and loads it back with identical outputs; and checks
that an unknown option and each of ``bad_options`` are rejected by spec validation at the
component's spec path.

Unless ``takes`` is given, all of that runs once for every input the config accepts: each
signal kind for a backbone or head, and for a fusion every kind alone, beside an image, and all
together (:data:`DEFAULT_FUSION_TAKES`). A component that accepts an input must work with it.

Any failure, including an exception the component raises, is a :class:`ConformanceError` (an
``AssertionError``) naming the check and the input it was taking.

The component need not be installed: a class no entry point provides is registered for the
check under the package ``polymodal-testing-subject``. The rest of the minimal spec is made of
*probe* components defined here, so the check depends on no other plugin.
"""

from __future__ import annotations

import copy
import importlib.util
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import torch
from pydantic import ValidationError
from torch import nn

from ._components import (
    Component,
    FusionInputs,
    Head,
    ModalityAdapter,
    component_identity,
)
from ._errors import ConnectionMismatch, PolymodalError, SpecError
from ._probes import (
    PROBE_PACKAGE,
    ConformanceError,
    ProbeAdapter,
    ProbeBackbone,
    ProbeFusion,
    ProbeHead,
    check_registry,
    probe_name,
    probe_shape,
)
from ._registry import ComponentRecord, Registry
from ._signals import FeatureMap, Sequence, Signal, Tokens, Vector, example_signals

if TYPE_CHECKING:
    from ._assembly import PolymodalModel

#: Signals a backbone or head is probed with when ``takes`` is not given: each one its config
#: accepts is checked.
DEFAULT_TAKES: tuple[Signal, ...] = example_signals()
#: Two inputs of each signal kind, the first named as the kind's usual input.
_INPUTS_OF_KIND: tuple[tuple[tuple[str, Signal], tuple[str, Signal]], ...] = (
    (("image", FeatureMap(4)), ("scan", FeatureMap(2))),
    (("table", Vector(8)), ("row", Vector(6))),
    (("text", Tokens(6)), ("notes", Tokens(5))),
    (("series", Sequence(3)), ("ecg", Sequence(2))),
)


def _default_fusion_takes() -> tuple[dict[str, Signal], ...]:
    every_kind = dict(first for first, _ in _INPUTS_OF_KIND)
    two_of_a_kind = [dict(pair) for pair in _INPUTS_OF_KIND]
    one_input = [dict([first]) for first, _ in _INPUTS_OF_KIND]
    image = _INPUTS_OF_KIND[0][0]
    beside_an_image = [dict([image, first]) for first, _ in _INPUTS_OF_KIND[1:]]
    return (every_kind, *two_of_a_kind, *one_input, *beside_an_image)


#: Inputs a fusion is probed with when ``takes`` is not given, each set its config accepts
#: checked: every kind together; each kind alone (two inputs, and one); each other kind beside
#: an image (what a fusion that conditions an image's backbone takes).
DEFAULT_FUSION_TAKES: tuple[dict[str, Signal], ...] = _default_fusion_takes()
#: Positions along each free axis of what a fusion is fed: a backbone leaves few (7x7 for a
#: ResNet), unlike the 32x32 example image a backbone is fed. 7 is no probe's width, so a fusion
#: that pools or reads the wrong axis gives a wrong shape.
FUSION_POSITIONS = 7


@dataclass(frozen=True)
class ConformanceReport:
    """What :func:`check_component` found, for further assertions in a test: with the first
    input it checked (``takes``), and in ``probed`` every input it checked."""

    kind: str
    type: str
    takes: Any
    gives: Signal | None
    output_shape: tuple[int, ...]
    parameters: int
    spec: dict[str, Any]
    probed: tuple[Any, ...] = ()


# -- the check -----------------------------------------------------------------------------


def _describe_takes(takes: Any) -> str:
    if isinstance(takes, Signal):
        return takes.describe()
    if isinstance(takes, Mapping):
        return "{" + ", ".join(f"{name}: {s.describe()}" for name, s in takes.items()) + "}"
    return repr(takes)


def _fail(cls: type, check: str, detail: str, takes: Any = None) -> ConformanceError:
    taking = f" (taking {_describe_takes(takes)})" if takes is not None else ""
    return ConformanceError(f"{cls.__qualname__}: {check}: {detail}{taking}")


@contextmanager
def _check(cls: type, check: str, takes: Any = None, doing: str = "") -> Iterator[None]:
    """Turn anything but a :class:`ConformanceError` raised inside into one naming ``check``:
    an exception a component raises during a check is that check's finding."""
    try:
        yield
    except ConformanceError:
        raise
    except Exception as exc:  # noqa: BLE001 - any failure here is the finding
        raise _fail(cls, check, f"{doing}{type(exc).__name__}: {exc}", takes) from exc


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


def _accepted_takes(cls: type, kind: str, config: Any) -> list[Any]:
    """Every default input the config accepts (a :class:`PolymodalError` is a refusal; any other
    exception is a broken config)."""
    if kind == "adapter":
        return [None]
    accepted, reasons = [], []
    for takes in DEFAULT_FUSION_TAKES if kind == "fusion" else DEFAULT_TAKES:
        try:
            _gives(kind, config, takes)
        except PolymodalError as exc:
            reasons.append(str(exc))
            continue
        except Exception as exc:  # noqa: BLE001 - a config must refuse with a PolymodalError
            raise _fail(cls, "gives", f"raised {type(exc).__name__}: {exc}, not a"
                        " ConnectionMismatch", takes) from exc
        accepted.append(takes)
    if not accepted:
        raise _fail(cls, "takes", "none of the default inputs fit; pass takes=... ("
                    + "; ".join(dict.fromkeys(reasons)) + ")")
    return accepted


def _minimal_spec(record: ComponentRecord, config: Any, takes: Any) -> dict[str, Any]:
    subject = {**config.model_dump(mode="json", exclude_none=True), "type": record.canonical}
    probe = f"{PROBE_PACKAGE}:probe"

    def probe_adapter(signal: Signal, positions: int | None = None) -> dict[str, Any]:
        return {"type": probe, "signal": probe_name(signal), "width": signal.width,
                **({"positions": positions} if positions else {})}

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
            name: {"adapter": probe_adapter(s, FUSION_POSITIONS),
                   **({"backbone": {"type": probe}} if name in conditioned else {})}
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


def _subject_module(model: PolymodalModel, kind: str) -> nn.Module:
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
    bad = copy.deepcopy(spec)
    node = bad
    for part in _subject_location(kind):
        node = node[part]
    node.update(options)
    return bad


def _configured(cls: type[Component], options: Mapping[str, Any] | None) -> tuple[str, str, Any]:
    """The component's kind, type name and validated config."""
    with _check(cls, "identity"):
        try:
            kind, type_name = component_identity(cls)
        except PolymodalError as exc:
            raise _fail(cls, "identity", str(exc)) from None
    options = dict(cls.example_options if options is None else options)
    with _check(cls, "config", doing=f"validating options {options!r} raised "):
        try:
            config = cls.Config.model_validate({**options, "type": type_name})
        except ValidationError as exc:
            raise _fail(cls, "config", f"options {options!r} do not validate: {exc}") from None
    return kind, type_name, config


def _probed_takes(cls: type, kind: str, config: Any, takes: Any) -> list[Any]:
    """The inputs to check ``cls`` with: ``takes`` when given (the config must accept it),
    otherwise every default input the config accepts."""
    takes = getattr(cls, "example_takes", None) if takes is None else takes
    if takes is None:
        return _accepted_takes(cls, kind, config)
    with _check(cls, "gives", takes, "raised "):
        try:
            _gives(kind, config, takes)
        except PolymodalError as exc:
            raise _fail(cls, "gives", f"config rejects takes={takes!r}: {exc}") from None
    return [takes]


def minimal_spec(
    cls: type[Component],
    options: Mapping[str, Any] | None = None,
    *,
    takes: Any = None,
    registry: Registry | None = None,
) -> tuple[dict[str, Any], Registry]:
    """The smallest spec holding ``cls`` configured with ``options`` (default: its
    ``example_options``) and taking ``takes`` (default: the first default input it accepts),
    the rest made of probe components, and the registry that knows them.

    This is the model :func:`check_component` builds; a test can validate, build or train it."""
    kind, _, config = _configured(cls, options)
    takes = _probed_takes(cls, kind, config, takes)[0]
    registry, record = check_registry(cls, registry)
    return _minimal_spec(record, config, takes), registry


def _check_module(cls: type[Component], kind: str, config: Any, takes: Any, gives: Signal | None,
                  batch_size: int) -> tuple[nn.Module, tuple[int, ...]]:
    """Build the module alone, run a random batch through it and check the output's shape."""
    torch.manual_seed(0)
    with _check(cls, "build", takes):
        module = cls(config, _fusion_inputs(config, takes) if kind == "fusion" else takes)
    if not isinstance(module, Component):
        raise _fail(cls, "build", f"constructing it gave {type(module).__name__}", takes)
    module.train()
    with _check(cls, "example_input", takes):
        batch = (_fusion_features(takes, batch_size) if kind == "fusion"
                 else module.example_input(batch_size))
    with _check(cls, "forward", takes):
        output = module(batch, _all_present(takes, batch_size)) if kind == "fusion" else module(batch)
    if not isinstance(output, torch.Tensor):
        raise _fail(cls, "forward", f"returned {type(output).__name__}, not a tensor", takes)
    shape = tuple(output.shape)
    if not shape or shape[0] != batch_size:
        raise _fail(cls, "shape", f"output {list(shape)} lost the batch dimension {batch_size}", takes)
    if gives is not None and gives.shape_problem(shape):
        raise _fail(cls, "shape", f"the config says it gives {gives.describe()}"
                    f" ({gives.layout()}); it gave a tensor of shape {list(shape)}", takes)
    if kind == "head":
        assert isinstance(module, Head), "a component of kind head subclasses Head"
        with _check(cls, "predict", takes):
            predictions = module.predict(output.detach())
        if not isinstance(predictions, Mapping) or not all(
            isinstance(v, torch.Tensor) for v in predictions.values()
        ):
            raise _fail(cls, "predict", "must return a dict of name -> tensor", takes)
    if kind == "fusion":
        with _check(cls, "presence", takes):
            _check_presence(cls, module, batch, takes)
    return module, shape


def _fusion_features(takes: Mapping[str, Signal], batch_size: int) -> dict[str, torch.Tensor]:
    return {name: torch.randn(probe_shape(signal, batch_size, FUSION_POSITIONS))
            for name, signal in takes.items()}


def _check_presence(cls: type, fusion: nn.Module, batch: Mapping[str, torch.Tensor],
                    takes: Any) -> None:
    """An input marked absent for a sample has no influence on that sample's output, and a sample
    with every input absent still gets a finite output (in eval mode: dropout aside).

    One forward pass: for each input two copies of the first sample, that input marked absent
    in both and its values changed in the second; then the sample with nothing present."""
    fusion.eval()
    names = list(batch)
    rows = 2 * len(names) + 1
    features = {n: batch[n][:1].expand(rows, *batch[n].shape[1:]).clone() for n in names}
    present = _all_present(names, rows)
    for i, name in enumerate(names):
        features[name][2 * i + 1] = torch.randn_like(features[name][0]) * 5 + 2
        present[name][2 * i: 2 * i + 2] = False
        present[name][-1] = False
    with torch.no_grad():
        output = fusion(features, present)
    fusion.train()
    for i, name in enumerate(names):
        if not torch.allclose(output[2 * i], output[2 * i + 1], atol=1e-5, rtol=1e-4):
            raise _fail(cls, "presence", f"input {name!r}, marked absent for a sample, still"
                        " changes that sample's output", takes)
    if not bool(torch.isfinite(output[-1]).all()):
        raise _fail(cls, "presence", "a sample with every input absent gets a non-finite"
                    " output", takes)


def _check_model(cls: type[Component], kind: str, model: PolymodalModel, takes: Any,
                 batch_size: int) -> dict[str, torch.Tensor]:
    """Gradients reach every trainable parameter of the subject and flow on to its input;
    returns the batch used."""
    model.train()
    with _check(cls, "example_input", takes, "in a minimal spec model: "):
        batch = {name: cast(ModalityAdapter, adapter).example_input(batch_size)
                 for name, adapter in model.adapters.items()}
    with _check(cls, "forward", takes, "in a minimal spec model: "):
        outputs = model(batch, _all_present(model.adapters, batch_size))
    subject = _subject_module(model, kind)
    trainable = [(n, p) for n, p in subject.named_parameters() if p.requires_grad]
    if not any(o.requires_grad for o in outputs.values()):
        raise _fail(cls, "gradients", "the model's outputs are detached from the autograd graph", takes)
    with _check(cls, "gradients", takes, "backward raised "):
        sum(o.float().pow(2).mean() + o.float().mean() for o in outputs.values()).backward()
    no_grad = [n for n, p in trainable if p.grad is None]
    if no_grad:
        raise _fail(cls, "gradients", "no gradient reaches parameter(s) " + ", ".join(no_grad[:8]), takes)
    bad = [n for n, p in trainable
           if p.grad is not None and not bool(torch.isfinite(p.grad).all())]
    if bad:
        raise _fail(cls, "gradients", "non-finite gradient in " + ", ".join(bad[:8]), takes)
    reads_codes = kind == "backbone" and getattr(cls, "discrete_input", False)
    if kind != "adapter" and not reads_codes and all(
            a.scale.grad is None for a in model.adapters.values()):
        raise _fail(cls, "gradients", "no gradient flows back to its input", takes)
    return batch


def _check_save_load(cls: type, model: PolymodalModel, batch: Mapping[str, Any], takes: Any,
                     registry: Registry) -> None:
    """A saved and loaded model gives the same outputs."""
    from ._modelfile import load, save

    model.eval()
    with _check(cls, "forward", takes, "in a minimal spec model, in eval mode: "), torch.no_grad():
        before = model(batch)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "conformance.safetensors"
        with _check(cls, "save/load", takes, "saving the model fails: "):
            save(model, path, registry=registry)
        try:
            with torch.no_grad():
                after = load(path, registry=registry)(batch)
        except Exception as exc:  # noqa: BLE001 - any failure here is the finding
            raise _fail(cls, "save/load", f"the loaded model fails: {type(exc).__name__}: {exc}"
                        " (is every tensor a parameter or buffer?)", takes) from exc
    if set(before) != set(after):
        raise _fail(cls, "save/load", f"heads {sorted(before)} became {sorted(after)}", takes)
    for head, value in before.items():
        if value.shape != after[head].shape or not torch.allclose(value, after[head], atol=1e-5,
                                                                  rtol=1e-4):
            raise _fail(cls, "save/load", f"outputs of head {head!r} differ after loading the"
                        " saved model", takes)


def _raised_by_component(error: SpecError) -> BaseException | None:
    """The exception behind a problem that the component raised instead of reporting a user
    mistake (anything but a polymodal error or a validation error), if any."""
    for problem in error.problems:
        cause = getattr(problem, "cause", None)
        if cause is not None and not isinstance(cause, (PolymodalError, ValueError)):
            return cause
    return None


def _check_bad_options(cls: type, kind: str, spec: dict[str, Any],
                       bad_options: Iterable[Mapping[str, Any]], registry: Registry) -> None:
    """An unknown option and each of ``bad_options`` are rejected at the component's spec path."""
    from ._assembly import plan
    from ._spec import validate_spec_data

    where = ".".join(_subject_location(kind))
    for bad_set in [{"no_such_option": 1}, *bad_options]:
        with _check(cls, "bad options", doing=f"{bad_set!r} raised, instead of a spec error, "):
            try:
                plan(validate_spec_data(_with_options(spec, kind, bad_set), registry))
            except SpecError as exc:
                raised = _raised_by_component(exc)
                if raised is not None:  # reported for the user, but as the plugin's bug
                    raise raised  # noqa: B904 - the plugin's own exception, as it raised it
                if not any(loc.startswith(where) for loc, _ in exc.problems):
                    raise _fail(cls, "bad options", f"{bad_set!r} was rejected, but not at"
                                f" {where}: {exc}") from None
                continue
        raise _fail(cls, "bad options", f"{bad_set!r} was accepted")


def _check_taking(cls: type[Component], record: ComponentRecord, kind: str, type_name: str,
                  config: Any, takes: Any, batch_size: int, registry: Registry) -> ConformanceReport:
    """Every check but bad options, with the component taking ``takes``."""
    from ._assembly import build

    with _check(cls, "gives", takes, "raised "):
        gives = _gives(kind, config, takes)
    module, shape = _check_module(cls, kind, config, takes, gives, batch_size)
    try:
        spec = _minimal_spec(record, config, takes)
    except ConformanceError as exc:  # a signal the probes cannot give
        raise _fail(cls, "spec", str(exc), takes) from None
    with _check(cls, "spec", takes, "a minimal spec holding it does not build: "):
        try:
            model = build(spec, pretrained=False, registry=registry)
        except PolymodalError as exc:
            raise _fail(cls, "spec", f"a minimal spec holding it does not build: {exc}", takes) from None
    batch = _check_model(cls, kind, model, takes, batch_size)
    _check_save_load(cls, model, batch, takes, registry)
    parameters = sum(p.numel() for p in module.parameters())
    return ConformanceReport(kind, type_name, takes, gives, shape, parameters, spec)


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
    (default: the class's ``example_takes`` if set, else every one of :data:`DEFAULT_TAKES`, or
    of :data:`DEFAULT_FUSION_TAKES` for a fusion, that the config accepts; each is checked).
    ``bad_options``: option sets that spec validation (connections included) must reject at the
    component's spec path; an unknown key always is checked.

    The report describes the check with the first input checked; ``probed`` lists them all.
    """
    kind, type_name, config = _configured(cls, options)
    probed = _probed_takes(cls, kind, config, takes)
    with _check(cls, "registration"):
        registry, record = check_registry(cls, registry)
    reports = [_check_taking(cls, record, kind, type_name, config, t, batch_size, registry)
               for t in probed]
    _check_bad_options(cls, kind, reports[0].spec, bad_options, registry)
    return replace(reports[0], probed=tuple(probed))


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

"""The four component kinds a plugin can provide.

A component is an ``nn.Module`` subclass of one of :class:`ModalityAdapter`, :class:`Backbone`,
:class:`Fusion` or :class:`Head`, with a nested Pydantic ``Config`` whose ``type`` literal names
it in specs. The config states what the component gives (a signal:
:class:`polymodal.plugin.Vector`, ...) from what it takes, so a spec's connections are checked
before any weight exists; the module is built from the config and the signal it takes::

    class Identity(Backbone):
        \"\"\"Passes its input on unchanged.\"\"\"

        class Config(BackboneConfig):
            type: Literal["identity"] = "identity"

            def gives(self, takes: Signal) -> Signal:
                return takes

        def forward(self, x):
            return x
"""

from __future__ import annotations

import typing
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field
from pydantic.json_schema import GenerateJsonSchema
from torch import nn

from ._errors import ConnectionMismatch, DataError, PolymodalError
from ._freezing import Freeze, apply_freeze, keep_eval
from ._signals import Signal, Vector

if TYPE_CHECKING:
    from ._data.codec import Codec, TargetCodec

#: ``modulate(stage, output) -> output``: changes a backbone stage's output (conditioning).
Modulate = Callable[[int, torch.Tensor], torch.Tensor]


class SchemaWithDefaults(GenerateJsonSchema):
    """The JSON Schema of a spec or a config, stating the defaults a factory makes too (``{}``,
    ``[]``), which pydantic leaves out: editors and the generated reference show them."""

    def get_default_value(self, schema: Any) -> Any:
        factory = schema.get("default_factory")
        if factory is not None and not schema.get("default_factory_takes_data"):
            return factory()
        return super().get_default_value(schema)


class ComponentConfig(BaseModel):
    """Options of a component. Subclasses add typed, described fields and a ``type`` literal."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: str

    def describe(self) -> str:
        """A short phrase naming this configured component in messages (``timm resnet18``)."""
        return self.type

    def diagram_settings(self) -> list[str]:
        """The settings a model diagram shows on this component's node, below :meth:`describe`:
        short phrases for what changes the built model and is not in ``describe()`` already
        (``in_chans 5``, ``frozen: all``, ``modality dropout 0.2``).

        The default lists every option set to another value than its default as
        ``option: value`` (long values shortened). Override it to leave out options that do not
        change the model (a table column's name) or to word them better."""
        return changed_options(self)


def _short(value: Any, items: int = 6) -> str:
    """``value`` in a few words: long lists and mappings are cut, with their length."""
    if isinstance(value, BaseModel):
        value = value.model_dump()
    if isinstance(value, Mapping):
        shown = [f"{k}: {_short(v)}" for k, v in list(value.items())[:items]]
        more = f", ... {len(value)} entries" if len(value) > items else ""
        return "{" + ", ".join(shown) + more + "}"
    if isinstance(value, (list, tuple)):
        shown = [_short(v) for v in value[:items]]
        more = f", ... {len(value)} items" if len(value) > items else ""
        return "[" + ", ".join(shown) + more + "]"
    return str(value)


def changed_options(config: ComponentConfig, skip: Collection[str] = ()) -> list[str]:
    """``option: value`` for each option of ``config`` whose value is not its default (``type``
    and the options in ``skip`` left out): the default of
    :meth:`ComponentConfig.diagram_settings`."""
    found = []
    for name, field in type(config).model_fields.items():
        if name == "type" or name in skip or field.is_required():
            continue
        default = field.get_default(call_default_factory=True)
        value = getattr(config, name)
        if value != default:
            found.append(f"{name}: {_short(value)}")
    return found


class AdapterConfig(ComponentConfig):
    def gives(self) -> Signal:
        """The signal this adapter gives from its raw input."""
        raise NotImplementedError

    def fix_for(self, wanted: Signal) -> str | None:
        """How to change this config so that it gives ``wanted`` (``set project_to: 3``)."""
        return None

    def codec(self, name: str, where: str) -> Codec | None:
        """How this adapter reads table columns (for training and prediction on tables): a
        :class:`~polymodal.plugin.Codec` made with this config, the input's ``name`` and the
        adapter's spec path ``where``. None (the default): it cannot."""
        return None


class BackboneConfig(ComponentConfig):
    def gives(self, takes: Signal) -> Signal:
        """The features given for input ``takes``; raise :class:`ConnectionMismatch` if unfit."""
        raise NotImplementedError

    def stages(self, takes: Signal) -> tuple[Signal, ...]:
        """What each stage the backbone exposes gives, in forward order; ``()`` for none.

        Stages are where a fusion may condition the backbone (FiLM) and what freezing by stage
        counts; the module lists the same stages in :meth:`Backbone.stage_modules`."""
        return ()


class FusionInputs(dict):
    """What a fusion takes: each input's features signal by input name (a plain mapping), and in
    ``stages`` the stage signals of every input the fusion conditions (see
    :meth:`FusionConfig.conditions`)."""

    def __init__(self, features: Mapping[str, Signal],
                 stages: Mapping[str, Sequence[Signal]] | None = None):
        super().__init__(features)
        self.stages: dict[str, tuple[Signal, ...]] = {
            name: tuple(s) for name, s in (stages or {}).items()}


class Auxiliary(BaseModel):
    """Per-input heads trained beside the fused head (``fusion.auxiliary``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    weight: float = Field(0.3, gt=0.0, le=10.0, description="Weight of the per-input heads' mean"
                          " loss, added to the fused heads' loss.")


class FusionConfig(ComponentConfig):
    auxiliary: Auxiliary | None = Field(
        None,
        description="Training only: each input also feeds a copy of each head it is fused for"
        " (on its pooled features), whose loss, times `weight`, is added to the fused heads':"
        " every input must predict on its own, so a strong input cannot leave a weak one"
        " untrained. Prediction uses the fused heads; the model file keeps the per-input"
        " heads. Give {} for the default weight.")
    modality_dropout: float = Field(
        0.0, ge=0.0, lt=1.0,
        description="Training only: each input of a sample is treated as absent with this"
        " probability (at least one present input is kept), so the model learns to predict"
        " when inputs are missing.")

    def gives(self, takes: Mapping[str, Signal]) -> Signal:
        """The fused signal given for the features of each input, by input name."""
        raise NotImplementedError

    def conditions(self, inputs: Sequence[str]) -> dict[str, tuple[int, ...]]:
        """Inputs (of ``inputs``, the set some heads read) whose backbone this fusion modulates while it
        runs, each with the stage numbers: ``{"photo": (3, 4)}``. Assembly then encodes the
        other inputs first and runs those backbones through :meth:`Fusion.modulate`."""
        return {}


class HeadConfig(ComponentConfig):
    inputs: list[str] | None = Field(
        None,
        description="Inputs this head uses (default: all). A head is computed only when all"
        " its inputs are in the batch; heads over different inputs get their own fusion.",
        min_length=1,
    )

    target: str | None = Field(
        None, description="Table column holding this head's target (default: the head's name).",
        min_length=1)

    def diagram_settings(self) -> list[str]:
        # The diagram's edges show a head's inputs; its target column does not change the model.
        return changed_options(self, skip=("inputs", "target"))

    def check_takes(self, takes: Signal) -> None:
        """Raise :class:`ConnectionMismatch` if the head cannot take ``takes``."""
        if not isinstance(takes, Vector):
            raise ConnectionMismatch(f"takes a vector, not {takes.describe()}", wanted=None)

    def codec(self, name: str, where: str) -> TargetCodec | None:
        """How this head reads its target column and decodes its outputs: a
        :class:`~polymodal.plugin.TargetCodec` made with this config, the head's ``name`` and
        its spec path ``where``. None (the default): it cannot."""
        return None


class Component(nn.Module):
    """Base of every component module; subclass one of the four kinds below."""

    kind: ClassVar[str]
    Config: ClassVar[type[ComponentConfig]]
    #: Options (besides ``type``) of a small working config: the example of the generated
    #: reference and the default of :func:`polymodal.plugin.check_component`. Empty when the
    #: defaults alone make a valid config.
    example_options: ClassVar[Mapping[str, Any]] = {}
    #: Whether a model holding this component exports (``polymodal export``: ONNX and
    #: torch.export): ``True`` when it does, which :func:`polymodal.plugin.check_export` verifies;
    #: or a sentence saying why it cannot, which export reports instead of trying. ``None``:
    #: not stated; export tries, and names the component if it fails.
    exportable: ClassVar[bool | str | None] = None
    #: The input (a signal, or a fusion's ``{input: signal}``) that
    #: :func:`polymodal.plugin.check_component` and the reference's example check the component
    #: with when no ``takes`` is given; ``None``: every default input its config accepts. For a
    #: component that takes only what one adapter gives (plugin API 2.2).
    example_takes: ClassVar[Any] = None

    def __init__(self, config: ComponentConfig, takes: Any = None):
        super().__init__()
        self.config = config
        self.takes = takes

    def load_pretrained(self) -> None:
        """Load pretrained weights named by the config, if any.

        Called once after a fresh build, never when a model file is loaded (its weights come
        from the file)."""

    @classmethod
    def type_name(cls) -> str:
        return component_identity(cls)[1]

    def example_input(self, batch_size: int = 2) -> Any:
        """A random batch this module takes (for tests): made from the signal(s) it takes.

        Adapters take raw data whose form only they know, so each adapter overrides this."""
        takes = self.takes
        if isinstance(takes, Signal):
            return torch.randn(takes.example_shape(batch_size))
        if isinstance(takes, Mapping):
            return {name: torch.randn(sig.example_shape(batch_size)) for name, sig in takes.items()}
        raise NotImplementedError(
            f"{type(self).__qualname__} takes raw input; override example_input(batch_size)"
        )


class ModalityAdapter(Component):
    """Turns one raw input (a batched tensor, or a dict of column tensors) into a signal."""

    kind = "adapter"
    Config = AdapterConfig
    config: AdapterConfig

    def export_example(self, batch_size: int = 2, state: Mapping[str, Any] | None = None) -> Any:
        """A batch of raw input in the form an exported model takes: an exported program has a
        fixed dtype and fixed sizes (all but the batch size) for each input. ``state`` is the
        fitted state of the adapter's codec when the model was trained on a table (it may hold
        the sizes trained on), else None. Default: :meth:`example_input` in
        :meth:`export_form`."""
        return self.export_form(self.example_input(batch_size))

    def export_form(self, value: Any) -> Any:
        """``value``, a raw input of this adapter (as its codec encodes it), in the form of
        :meth:`export_example` (e.g. images of any dtype as float32). Default: unchanged.
        Predicting from an export calls it on a weightless module: read no parameter or
        buffer."""
        return value


class Backbone(Component):
    """Turns an adapter's signal into features (a vector, a feature map or tokens).

    A backbone with stages lists their modules in :meth:`stage_modules` (matching
    ``Config.stages``); it then supports conditioning (:meth:`modulated`) and freezing by stage
    (:meth:`freeze`) without further code.
    """

    kind = "backbone"
    Config = BackboneConfig
    config: BackboneConfig
    #: Whether the backbone reads its input as discrete codes (token ids), so that no gradient
    #: can flow back to its input; the conformance check then asks for none (plugin API 2.2).
    discrete_input: ClassVar[bool] = False

    def __init__(self, config: ComponentConfig, takes: Any = None):
        super().__init__(config, takes)
        self._eval_norms: list[nn.Module] = []

    def stage_modules(self) -> list[nn.Module]:
        """The submodules whose outputs are the stages of ``Config.stages``, in order."""
        return []

    def modulated(self, x: torch.Tensor, modulate: Modulate, stages: Collection[int]) -> torch.Tensor:
        """``forward(x)`` with the output of each stage in ``stages`` passed through
        ``modulate(stage, output)``."""
        modules = self.stage_modules()
        handles = []
        try:
            for stage in stages:
                def hook(_module, _args, output, stage=stage):
                    return modulate(stage, output)

                handles.append(modules[stage].register_forward_hook(hook))
            return self(x)
        finally:
            for handle in handles:
                handle.remove()

    def freeze(self, option: Freeze) -> None:
        """Apply a ``freeze`` option (:data:`polymodal.plugin.Freeze`): ``none`` trains
        everything; ``all`` gives no parameter a gradient and keeps every BatchNorm layer's
        statistics; ``batchnorm`` trains every weight but keeps BatchNorm statistics;
        ``{train_last: N}`` trains only the last N of :meth:`stage_modules` (and what follows
        them), the earlier stages frozen with their statistics."""
        self._eval_norms = apply_freeze(self, self.stage_modules(), option)
        keep_eval(self._eval_norms)

    def train(self, mode: bool = True) -> Backbone:
        super().train(mode)
        keep_eval(self._eval_norms)  # frozen statistics stay frozen in training mode
        return self


class Fusion(Component):
    """Fuses the features of several inputs into one tensor."""

    kind = "fusion"
    Config = FusionConfig
    config: FusionConfig

    def forward(
        self, features: Mapping[str, torch.Tensor], present: Mapping[str, torch.Tensor] | None = None
    ) -> torch.Tensor:
        """Fuse ``features``. ``present`` maps some inputs to a boolean ``[B]`` mask; a sample's
        input marked ``False`` must contribute nothing to that sample's output."""
        raise NotImplementedError

    def modulate(
        self, target: str, stage: int, output: torch.Tensor, features: Mapping[str, torch.Tensor],
        present: Mapping[str, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Change ``output`` of ``stage`` of ``target``'s backbone, given the features of the
        other inputs; only called for what :meth:`FusionConfig.conditions` declares."""
        raise NotImplementedError(f"{type(self).__name__} conditions no backbone")

    def presence(
        self, names: Sequence[str], present: Mapping[str, torch.Tensor] | None, batch_size: int,
        device: torch.device | str = "cpu",
    ) -> dict[str, torch.Tensor] | None:
        """Per-sample boolean masks of ``names`` from the caller's ``present`` masks, with this
        fusion's ``modality_dropout`` applied in training. ``None`` when every input is present."""
        masks: dict[str, torch.Tensor] | None = None
        if present:
            masks = {}
            for name in names:
                if name not in present:
                    continue
                mask = torch.as_tensor(present[name], device=device).reshape(-1).to(torch.bool)
                if mask.shape[0] != batch_size:
                    raise DataError(f"present[{name!r}] has {mask.shape[0]} values for a batch"
                                    f" of {batch_size}")
                masks[name] = mask
        rate = self.config.modality_dropout
        if not (self.training and rate > 0 and len(names) > 1):
            return masks
        given = torch.stack([
            (masks or {}).get(n, torch.ones(batch_size, dtype=torch.bool, device=device))
            for n in names], dim=1)
        kept = given & (torch.rand(given.shape, device=device) >= rate)
        emptied = ~kept.any(dim=1) & given.any(dim=1)
        if emptied.any():
            # Keep one of the sample's present inputs, chosen at random.
            choice = torch.multinomial(given[emptied].float(), 1).squeeze(1)
            kept[emptied] = nn.functional.one_hot(choice, len(names)).to(torch.bool)
        return {n: kept[:, i] for i, n in enumerate(names)}


class Head(Component):
    """Predicts one task from the fused features and knows its loss."""

    kind = "head"
    Config = HeadConfig
    config: HeadConfig

    def loss(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The training loss of ``output`` (this head's forward result) against ``target``."""
        raise NotImplementedError

    def predict(self, output: torch.Tensor) -> dict[str, torch.Tensor]:
        """Turn outputs into predictions (``{"class": ..., "probabilities": ...}`` etc.)."""
        raise NotImplementedError


KIND_BASES: dict[str, type[Component]] = {
    "adapter": ModalityAdapter,
    "backbone": Backbone,
    "fusion": Fusion,
    "head": Head,
}
CONFIG_BASES: dict[str, type[ComponentConfig]] = {
    "adapter": AdapterConfig,
    "backbone": BackboneConfig,
    "fusion": FusionConfig,
    "head": HeadConfig,
}


def component_identity(cls: object) -> tuple[str, str]:
    """``(kind, type)`` of a component class, or a clear error saying why it is not one."""
    if not isinstance(cls, type) or not issubclass(cls, Component):
        raise PolymodalError(
            f"returned {cls!r}, which is not a component class (a subclass of"
            " polymodal.plugin.ModalityAdapter, Backbone, Fusion or Head)"
        )
    kind = next((k for k, base in KIND_BASES.items() if issubclass(cls, base)), None)
    if kind is None or cls in KIND_BASES.values():
        raise PolymodalError(f"{cls.__qualname__} must subclass one of the four component kinds")
    config = cls.__dict__.get("Config")
    base = CONFIG_BASES[kind]
    if not (isinstance(config, type) and issubclass(config, base)) or config is base:
        raise PolymodalError(
            f"{cls.__qualname__} needs its own nested `class Config({base.__name__})`"
        )
    field = config.model_fields.get("type")
    literal = field.annotation if field is not None else None
    if typing.get_origin(literal) is not Literal or len(typing.get_args(literal)) != 1:
        raise PolymodalError(
            f"{cls.__qualname__}.Config needs `type: Literal[\"<name>\"] = \"<name>\"`"
        )
    (type_name,) = typing.get_args(literal)
    if not isinstance(type_name, str) or not type_name or ":" in type_name:
        raise PolymodalError(f"{cls.__qualname__}.Config type {type_name!r} is not a valid name")
    try:
        config.model_json_schema()
    except Exception as exc:  # noqa: BLE001 - a broken config must not break the registry
        raise PolymodalError(f"{cls.__qualname__}.Config is invalid: {exc}") from None
    return kind, type_name


def check_defaults(cls: type[Component]) -> None:
    """Refuse a component whose config has a default that breaks its own option's type or
    constraints (``Field(-3, gt=0)``): every spec that leaves the option out would be invalid,
    and it would only show when a model is built. Raises a PolymodalError naming the component,
    the option and the problem."""
    from pydantic import ValidationError, create_model

    config = cls.Config
    defaulted = {name: (field.annotation, field) for name, field in config.model_fields.items()
                 if name != "type" and not field.is_required()}
    if not defaulted:
        return
    settings = ConfigDict(**{**config.model_config, "validate_default": True})
    try:
        probe = create_model(f"{config.__name__}Defaults", __config__=settings, **defaulted)  # type: ignore[call-overload]
        probe.model_validate({})
    except ValidationError as exc:
        problems = []
        for error in exc.errors(include_url=False):
            option = ".".join(str(part) for part in error["loc"])
            problems.append(f"the default of option {option!r} ({error['input']!r}) is invalid:"
                            f" {error['msg']}")
        raise PolymodalError(
            f"{cls.__qualname__}.Config ({cls.kind} {component_identity(cls)[1]!r}): "
            + "; ".join(problems) + "; change the default or the option's constraints") from None
    except Exception as exc:  # noqa: BLE001 - a default that cannot even be checked
        raise PolymodalError(f"{cls.__qualname__}.Config: its defaults cannot be checked:"
                             f" {type(exc).__name__}: {exc}") from None

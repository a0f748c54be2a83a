"""The declarative model spec: parsing (YAML, TOML, JSON), validation, and its JSON Schema.

One Pydantic model describes the spec. :class:`ModelSpec` declares the sections and the checks
across them (a named backbone exists, a head's inputs exist, a fusion is there when a head needs
one, the early-stopping metric is a metric); :func:`spec_model` makes, once per registry, its
subclass whose component places are unions of the installed components, discriminated on
``type``. That subclass validates every spec, and :func:`spec_json_schema` is its JSON Schema,
so what an editor underlines and what ``polymodal validate`` refuses are the same, apart from
what a JSON Schema cannot say (docs/editor.md lists it).

A component's ``type`` is resolved through the registry (short name or ``package:type``), so an
unknown type gets its close matches and, where the catalog knows a package providing it, the
``pip install`` line. Every problem is reported with its place in the spec.
"""

from __future__ import annotations

import json
import re
import unicodedata
import weakref
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, Optional, Union

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    PrivateAttr,
    SerializeAsAny,
    Tag,
    ValidationError,
    ValidationInfo,
    create_model,
    model_validator,
)
from pydantic_core import PydanticCustomError

from ._components import (
    AdapterConfig,
    BackboneConfig,
    ComponentConfig,
    FusionConfig,
    HeadConfig,
    SchemaWithDefaults,
)
from ._errors import (
    SpecError,
    did_you_mean,
    excerpt,
)
from ._options import TrainingOptions
from ._registry import ComponentRecord, Registry, component_problems, get_registry
from ._search import DESCRIPTION as SEARCH_DESCRIPTION, SearchSpace, search_problems
from ._spec_files import (
    MAX_SPEC_VALUES,
    SPEC_FOLDER,
    check_spec_size,
    read_spec_file,
    too_many_values,
)
from ._spec_problems import MAX_PROBLEMS, format_loc, pydantic_problems
from ._spec_slots import PLUGIN_LOADED, ComponentSlot, custom_problem

if TYPE_CHECKING:
    from pydantic.json_schema import JsonDict

NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*$"
#: Names of inputs, backbones and heads (the same rule in validation and in the JSON Schema).
_NAMES: JsonDict = {"propertyNames": {"pattern": NAME_PATTERN}}


def _valid_name(name: str) -> str:
    if not re.match(NAME_PATTERN, name):
        raise custom_problem(
            "spec_name", f"name {excerpt(name)} is not valid: use letters, digits and _,"
                         " not starting with a digit")
    return name


#: A name of an input, backbone or head.
Name = Annotated[str, AfterValidator(_valid_name)]

#: The longest model name: it becomes part of file and folder names (``<name>.cv``,
#: ``<name>_oof_predictions.csv``), which a file system limits to 255 bytes.
MODEL_NAME_MAX = 100
#: What a model name may not hold: path separators (the name would become a path outside the
#: output folder), control characters (NUL cannot be in a path at all), characters that
#: Windows file names or shells take apart (``*?:<>|"``), and a leading ``-`` (a file named
#: ``-rf.cv`` reads as an option to most tools).
_NOT_IN_MODEL_NAME = re.compile(r'[/\\\x00-\x1f\x7f*?:<>|"]|^-')


def _valid_model_name(name: str) -> str:
    """A model name is a label; commands use it in file and folder names, so it must be one
    name that stays in its folder."""
    if not name.strip():
        raise custom_problem(
            "spec_name", "the model's name is empty; give a label such as `claims`")
    if len(name) > MODEL_NAME_MAX:
        raise custom_problem(
            "spec_name", f"the model's name has {len(name):,} characters; give one of"
                         f" at most {MODEL_NAME_MAX} (it becomes part of file names)")
    invisible = any(unicodedata.category(c) in ("Cc", "Cf") for c in name)  # e.g. U+202E
    if _NOT_IN_MODEL_NAME.search(name) or invisible or name in (".", ".."):
        raise custom_problem(
            "spec_name", f"the model's name {excerpt(name)} is not a label: it becomes"
                         " part of file and folder names, so it may not be `.` or `..`, begin"
                         " with `-`, nor hold `/`, `\\`, `*?:<>|\"` or control or invisible"
                         " characters")
    return name


class _StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, arbitrary_types_allowed=True)


class InputSpec(_StrictModel):
    """One input of the model: its adapter and, optionally, the backbone its signal goes through."""

    adapter: SerializeAsAny[AdapterConfig] = Field(description="How this input's raw data becomes a signal.")
    backbone: str | SerializeAsAny[BackboneConfig] | None = Field(
        None,
        description="A name from `backbones` (shared by every input naming it), an inline"
        " backbone, or nothing (the adapter's signal goes to the fusion directly).",
    )
    missing: Literal["auto", "absent", "bad_row"] = Field(
        "auto",
        description="A row whose cells hold no value for this input (an empty image path; every"
        " column of a tabular input empty): `absent` gives the fusion the input as absent in"
        " that row (through its per-sample `present` mask) and uses the row with its other"
        " inputs; `bad_row` makes the row a bad row (see --on-bad-row); `auto` is `absent` where"
        " every head that uses the input fuses it with other inputs, and otherwise leaves the row"
        " to the adapter (an empty image path is a bad row, a tabular row's empty values are"
        " imputed).")

    @model_validator(mode="before")
    @classmethod
    def _a_mapping(cls, data: Any) -> Any:
        if not isinstance(data, (Mapping, InputSpec)):
            raise custom_problem(
                "spec_input", "an input is a mapping with an `adapter` and, optionally,"
                              " a `backbone`")
        return data


class ModelSpec(_StrictModel):
    """A whole model: inputs, shared backbones, fusion and heads."""

    name: Annotated[str, AfterValidator(_valid_model_name)] = Field(
        "model", description="The model's name: a label, also used in output file names (no"
        " leading `-`, no `/`, `\\`, `*?:<>|\"` or control characters; at most 100 characters).")
    description: str | None = Field(None, description="Free text kept with the model.")
    inputs: dict[Name, InputSpec] = Field(description="Inputs by name.", min_length=1,
                                          json_schema_extra=_NAMES)
    backbones: dict[Name, SerializeAsAny[BackboneConfig]] = Field(
        default_factory=dict, description="Named backbones that inputs can share.",
        json_schema_extra=_NAMES)
    fusion: SerializeAsAny[FusionConfig] | None = Field(
        None,
        description="How the features of a head's inputs are fused. Optional when every head"
        " uses exactly one input.",
    )
    heads: dict[Name, SerializeAsAny[HeadConfig]] = Field(
        description="Prediction heads by name.", min_length=1, json_schema_extra=_NAMES)
    training: TrainingOptions = Field(default_factory=TrainingOptions,
                                      description=TrainingOptions.__doc__)
    search: SearchSpace | None = Field(None, description=SEARCH_DESCRIPTION)
    #: The folder of the file the spec was read from: relative paths in it (a ``pretrained``
    #: weights file) are read from there. None for specs made from data.
    _folder: Path | None = PrivateAttr(None)

    @model_validator(mode="after")
    def _check_references(self, info: ValidationInfo) -> ModelSpec:
        """Names that must point at something in the spec do; all such problems at once."""
        context = info.context or {}
        problems = [*_backbone_reference_problems(self), *_head_input_problems(self),
                    *_fusion_problems(self, context.get("registry") or get_registry()),
                    *_loss_weight_problems(self), *_missing_problems(self)]
        if context.get("for_training", True):
            problems += monitored_metric_problems(self.training, self.heads, None)
        if problems:
            raise PydanticCustomError("spec_references", "{count} problem(s) across the spec",
                                      {"count": len(problems), "problems": problems})
        return self

    # -- derived views -------------------------------------------------------------------------
    def head_inputs(self, head: str) -> tuple[str, ...]:
        """The inputs a head uses, in the spec's input order."""
        chosen = self.heads[head].inputs
        return tuple(n for n in self.inputs if chosen is None or n in chosen)

    def heads_by_inputs(self) -> dict[tuple[str, ...], list[str]]:
        """Distinct input sets used by heads, each with the heads that use it."""
        found: dict[tuple[str, ...], list[str]] = {}
        for head in self.heads:
            found.setdefault(self.head_inputs(head), []).append(head)
        return found

    def read_alone_by(self, name: str) -> str | None:
        """A head that reads input ``name`` alone (no other input to fuse it with), so the input
        cannot be absent in a row; None where every head using it fuses it with others."""
        return next((h for inputs, heads in self.heads_by_inputs().items()
                     if inputs == (name,) for h in heads), None)

    def absent_inputs(self) -> set[str]:
        """The inputs a row may lack (``missing`` is ``absent``, or ``auto`` where every head
        using the input fuses it with others): such a row gives the fusion the input as absent."""
        return {n for n, i in self.inputs.items()
                if i.missing == "absent" or (i.missing == "auto" and self.read_alone_by(n) is None)}

    def components(self) -> list[tuple[str, ComponentConfig]]:
        """Every component config with its spec location."""
        found: list[tuple[str, ComponentConfig]] = []
        for name, inp in self.inputs.items():
            found.append((f"inputs.{name}.adapter", inp.adapter))
            if isinstance(inp.backbone, ComponentConfig):
                found.append((f"inputs.{name}.backbone", inp.backbone))
        found += [(f"backbones.{n}", b) for n, b in self.backbones.items()]
        if self.fusion is not None:
            found.append(("fusion", self.fusion))
        found += [(f"heads.{n}", h) for n, h in self.heads.items()]
        return found

    def to_dict(self, registry: Registry | None = None) -> dict[str, Any]:
        """Plain data with canonical component ids (``package:type``), as saved in model files."""
        registry = registry or get_registry()
        data = self.model_dump(mode="json", exclude_none=True)
        for loc, config in self.components():
            node: Any = data
            for part in loc.split("."):
                node = node[part]
            node["type"] = registry.record_for_config(type(config)).canonical
        return data


# -- references across the spec (checked by ModelSpec's validator) ---------------------------


def _backbone_reference_problems(spec: ModelSpec) -> list[tuple[str, str]]:
    named = ", ".join(sorted(spec.backbones)) or "none"
    return [(f"inputs.{name}.backbone", f"unknown backbone {excerpt(inp.backbone)}."
             f"{did_you_mean(inp.backbone, spec.backbones)} Named backbones: {named}.")
            for name, inp in spec.inputs.items()
            if isinstance(inp.backbone, str) and inp.backbone not in spec.backbones]


def _head_input_problems(spec: ModelSpec) -> list[tuple[str, str]]:
    known = ", ".join(spec.inputs)
    return [(f"heads.{name}.inputs[{i}]", f"unknown input {excerpt(ref)}."
             f"{did_you_mean(ref, spec.inputs)} Inputs: {known}.")
            for name, head in spec.heads.items()
            for i, ref in enumerate(head.inputs or []) if ref not in spec.inputs]


def _fusion_problems(spec: ModelSpec, registry: Registry) -> list[tuple[str, str]]:
    """Without a fusion, every head uses one input."""
    if spec.fusion is not None:
        return []
    for name in spec.heads:
        used = spec.head_inputs(name)
        if len(used) > 1:
            fusions = ", ".join(sorted({c.type for c in registry.components("fusion")}))
            return [("fusion", f"missing: head {name!r} uses {len(used)} inputs"
                     f" ({', '.join(used)}), which need a fusion (one of:"
                     f" {fusions or 'none installed'})")]
    return []


def _missing_problems(spec: ModelSpec) -> list[tuple[str, str]]:
    """``missing: absent`` needs every head that uses the input to fuse it with another."""
    problems = []
    for name, inp in spec.inputs.items():
        alone = spec.read_alone_by(name) if inp.missing == "absent" else None
        if alone is not None:
            problems.append((f"inputs.{name}.missing", f"absent: head {alone!r} reads input"
                             f" {name!r} alone, so a row without it has nothing to predict from;"
                             " use bad_row (or auto), or give the head another input to fuse"))
    return problems


def _loss_weight_problems(spec: ModelSpec) -> list[tuple[str, str]]:
    return [(f"training.loss_weights.{head}", f"unknown head {excerpt(head)}."
             f"{did_you_mean(head, spec.heads)} Heads: {', '.join(spec.heads)}.")
            for head in spec.training.loss_weights if head not in spec.heads]


def monitored_metric_problems(training: TrainingOptions, heads: Mapping[str, HeadConfig],
                               raw_heads: Any) -> Sequence[tuple[str, str]]:
    """``early_stopping.metric`` names a head and, where its target codec says which metrics it
    computes, one of them."""
    metric = training.early_stopping.metric
    where = "training.early_stopping.metric"
    if metric == "loss":
        return []
    head, name = metric.split(".", 1)
    if head not in heads:
        if isinstance(raw_heads, Mapping) and head in raw_heads:
            return []  # the head itself is wrong, and reported as such
        return [(where, f"unknown head {head!r}.{did_you_mean(head, heads)} Heads: {', '.join(heads)}.")]
    try:
        codec = heads[head].codec(head, f"heads.{head}")
    except Exception as exc:  # noqa: BLE001 - the head's error, reported at its path
        return component_problems(exc, f"heads.{head}", heads[head])
    if codec is None:
        return []  # it cannot be trained on a table, which training reports
    known = [m.name for m in codec.declared_metrics]
    if name not in (*known, "loss"):  # every head also reports its own loss
        return [unknown_metric(head, name, known)]
    return []


def unknown_metric(head: str, name: str, known: Sequence[str]) -> tuple[str, str]:
    """The problem of an ``early_stopping.metric`` that names no metric of its head."""
    return ("training.early_stopping.metric", f"head {head!r} has no metric {name!r}."
            f"{did_you_mean(name, known)} Its metrics: {', '.join(known)}.")


# -- one spec model per registry ---------------------------------------------------------------

#: ``registry -> (its loaded components, the spec model made from them)``
_SPEC_MODELS: weakref.WeakKeyDictionary[Registry, tuple[tuple, type[ModelSpec]]] = \
    weakref.WeakKeyDictionary()
#: Union tags of an input's backbone (a tag may show in error locations: no key is spelt so).
_BACKBONE_NAME, _INLINE_BACKBONE = "backbone name", "inline backbone"


def spec_model(registry: Registry | None = None) -> type[ModelSpec]:
    """The :class:`ModelSpec` subclass whose component places accept the registry's loaded
    components; made once, and again when more are loaded.

    A plugin listed by a manifest is imported when a spec first names one of its components
    (:func:`spec_json_schema` loads them all)."""
    registry = registry or get_registry()
    records = [rec for rec in registry.components() if rec.cls is not None]
    key = tuple((rec.kind, rec.canonical, rec.cls) for rec in records)
    cached = _SPEC_MODELS.get(registry)
    if cached is None or cached[0] != key:
        cached = _SPEC_MODELS[registry] = (key, _make_spec_model(registry, records))
    return cached[1]


def _backbone_form(value: Any) -> str:
    return _BACKBONE_NAME if isinstance(value, str) else _INLINE_BACKBONE


def _none_is(empty: Any) -> AfterValidator:
    """A section written without entries (``backbones:`` in YAML) is the empty section."""
    return AfterValidator(lambda value: empty() if value is None else value)


def _make_spec_model(registry: Registry, records: Sequence[ComponentRecord]) -> type[ModelSpec]:
    adapters, backbones, fusions, heads = (
        ComponentSlot(kind, registry, [r for r in records if r.kind == kind])
        for kind in ("adapter", "backbone", "fusion", "head"))
    backbone = Annotated[BackboneConfig, backbones]
    backbone_place = Annotated[Union[Annotated[str, Tag(_BACKBONE_NAME)],
                                     Annotated[backbone, Tag(_INLINE_BACKBONE)]],
                               Discriminator(_backbone_form)]
    field = InputSpec.model_fields
    input_model = create_model(
        "InputSpec", __base__=InputSpec, __module__=__name__,
        adapter=(Annotated[AdapterConfig, adapters], field["adapter"]),
        backbone=(Optional[backbone_place], field["backbone"]),
    )
    field = ModelSpec.model_fields
    return create_model(
        "ModelSpec", __base__=ModelSpec, __module__=__name__,
        inputs=(dict[Name, input_model], field["inputs"]),
        backbones=(Annotated[Optional[dict[Name, backbone]], _none_is(dict)], field["backbones"]),
        fusion=(Optional[Annotated[FusionConfig, fusions]], field["fusion"]),
        heads=(dict[Name, Annotated[HeadConfig, heads]], field["heads"]),
        training=(Annotated[Optional[TrainingOptions], _none_is(TrainingOptions)],
                  field["training"]),
    )


def validate_spec_data(
    data: Mapping[str, Any], registry: Registry | None = None, source: str | None = None,
    for_training: bool = True,
) -> ModelSpec:
    """Validate plain spec data into a :class:`ModelSpec`; raises :class:`SpecError`.
    ``for_training=False`` (a model file's spec) skips what only training reads: a trained model
    loads whatever its early-stopping metric was called."""
    registry = registry or get_registry()
    if not isinstance(data, Mapping):
        raise SpecError([("", f"a spec is a mapping, not {type(data).__name__}")], source)
    data = _json_data(data, source)
    text = json.dumps(data)
    context = {"registry": registry, "for_training": for_training}
    # Each pass that names a component not loaded yet loads its plugin: the passes end.
    for _ in range(len(registry.plugins) + 1):
        model = spec_model(registry)
        try:
            # As JSON, strictly: a spec means what its JSON Schema says ("3" is not 3, 1 is not
            # true, a list is what a tuple option takes).
            spec = _plain(model.model_validate_json(text, strict=True, context=context))
            break
        except ValidationError as exc:
            if not any(err["type"] == PLUGIN_LOADED for err in exc.errors()):
                raise SpecError(pydantic_problems(exc, "", model, data), source) from None
    else:
        raise AssertionError("a plugin was loaded on every pass")  # pragma: no cover
    if spec.search:
        # Each end of a range and each choice must make a spec a trial can train.
        problems = search_problems(spec.search, spec, data, lambda trial: validate_spec_data(
            trial, registry, for_training=for_training))
        if problems:
            raise SpecError(problems, source)
    return spec


def _plain(spec: ModelSpec) -> ModelSpec:
    """``spec`` as an instance of :class:`ModelSpec` itself (the per-registry subclass is made
    at run time: copies, pickles and equality should not depend on it)."""
    inputs = {name: InputSpec.model_construct(**{f: getattr(inp, f) for f in InputSpec.model_fields})
              for name, inp in spec.inputs.items()}
    return ModelSpec.model_construct(
        name=spec.name, description=spec.description, inputs=inputs,
        backbones=dict(spec.backbones), fusion=spec.fusion, heads=dict(spec.heads),
        training=spec.training, search=spec.search)


def _json_data(data: Mapping[str, Any], source: str | None) -> dict[str, Any]:
    """``data`` as the JSON data its schema describes: keys are text, a whole number is an int
    (``2.0`` is 2, as JSON counts), tuples and NumPy scalars are lists and numbers. A value JSON
    has no form for, a value that contains itself, and aliases that expand beyond MAX_SPEC_VALUES
    values are refused."""
    problems: list[tuple[str, str]] = []
    memo: dict[int, tuple[Any, int]] = {}
    try:
        converted, size = _json_value(data, (), memo, set(), problems)
    except RecursionError:
        raise SpecError([("", "the spec is nested too deeply to read")], source) from None
    if size > MAX_SPEC_VALUES:
        problems.append(("", too_many_values()))
    if problems:
        raise SpecError(problems[:MAX_PROBLEMS], source)
    return converted


def _json_value(value: Any, loc: tuple[Any, ...], memo: dict[int, tuple[Any, int]],
                open_: set[int], problems: list[tuple[str, str]]) -> tuple[Any, int]:
    """``(value as JSON data, how many values it holds)``. A container repeated by YAML aliases
    is converted once (``memo``); ``open_`` holds the containers being converted."""
    if isinstance(value, float) and value.is_integer() and abs(value) < 2.0 ** 63:
        value = int(value)  # a count written as 1e3; a larger float stays a float (1e300)
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 63:
        # No size, count or seed is this large; torch would fail on it with C++ frames.
        problems.append((format_loc(loc), f"{excerpt(value)} is too large a number: no size,"
                                           " count or seed exceeds 2**63"))
        return None, 1
    if value is None or isinstance(value, (bool, int, str, float)):
        return value, 1
    if isinstance(value, (Mapping, list, tuple)):
        if id(value) in open_:
            problems.append((format_loc(loc), "this value contains itself (an alias inside"
                                               " its own anchor)"))
            return None, 1
        if id(value) not in memo:
            open_.add(id(value))
            memo[id(value)] = _json_container(value, loc, memo, open_, problems)
            open_.discard(id(value))
        return memo[id(value)]
    item = getattr(value, "item", None)  # a NumPy scalar: the number it holds
    if callable(item) and getattr(value, "shape", None) == ():
        return _json_value(item(), loc, memo, open_, problems)
    problems.append((format_loc(loc), f"a spec holds text, numbers, true/false, lists and"
                                       f" mappings, not {type(value).__name__} (got"
                                       f" {excerpt(value)})"))
    return None, 1


def _json_container(value: Mapping | list | tuple, loc: tuple[Any, ...], memo: dict[int, Any],
                    open_: set[int], problems: list[tuple[str, str]]) -> tuple[Any, int]:
    size = 1
    if not isinstance(value, Mapping):
        items = []
        for i, item in enumerate(value):
            converted, count = _json_value(item, (*loc, i), memo, open_, problems)
            items.append(converted)
            size += count
        return items, size
    mapping = {}
    for key, item in value.items():
        if not (key is None or isinstance(key, (bool, int, float, str))):
            problems.append((format_loc((*loc, excerpt(key))), "a key is text"))
            continue
        text = key if isinstance(key, str) else json.dumps(key)  # 1 -> "1", as JSON has it
        mapping[text], count = _json_value(item, (*loc, text), memo, open_, problems)
        size += count
    return mapping, size


def load_spec(source: ModelSpec | str | Path | Mapping[str, Any],
              registry: Registry | None = None) -> ModelSpec:
    """Read and validate a spec from a file path (YAML, TOML, JSON) or from plain data."""
    if isinstance(source, ModelSpec):
        return source
    if isinstance(source, Mapping):
        check_spec_size(dict(source))
        return validate_spec_data(source, registry)
    data = read_spec_file(source)
    folder = Path(source).resolve().parent
    reading = SPEC_FOLDER.set(folder)
    try:
        spec = validate_spec_data(data, registry, source=str(source))
    finally:
        SPEC_FOLDER.reset(reading)
    spec._folder = folder
    return spec


# -- JSON Schema -----------------------------------------------------------------------------


def spec_json_schema(registry: Registry | None = None) -> dict[str, Any]:
    """JSON Schema of the spec: the JSON Schema of the model that validates specs."""
    registry = registry or get_registry()
    registry.load_all()
    schema = spec_model(registry).model_json_schema(schema_generator=SchemaWithDefaults)
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", **schema,
            "title": "polymodal model spec"}

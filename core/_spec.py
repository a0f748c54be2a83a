"""The declarative model spec: parsing (YAML, TOML, JSON), validation, and its JSON Schema.

Validation runs in two steps so that every problem is reported with its place in the file:
first each component's ``type`` is resolved through the registry (unknown types get close
matches and, where the catalog knows a package providing them, the ``pip install`` line) and its
options are validated by that component's own config; then the spec's structure and
cross-references (named backbones, head inputs) are checked.
"""

from __future__ import annotations

import json
import re
import tomllib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, Union

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    PrivateAttr,
    SerializeAsAny,
    Tag,
    ValidationError,
    create_model,
)

from ._components import AdapterConfig, BackboneConfig, ComponentConfig, FusionConfig, HeadConfig
from ._errors import ComponentError, SpecError, close_matches, did_you_mean
from ._registry import ComponentRecord, Registry, get_registry
from ._search import DESCRIPTION as SEARCH_DESCRIPTION
from ._search import SearchSpace, validate_search
from ._training.options import TrainingOptions

NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*$"
SPEC_SUFFIXES = {".yaml": "yaml", ".yml": "yaml", ".toml": "toml", ".json": "json"}


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


class ModelSpec(_StrictModel):
    """A whole model: inputs, shared backbones, fusion and heads."""

    name: str = Field("model", description="The model's name.")
    description: str | None = Field(None, description="Free text kept with the model.")
    inputs: dict[str, InputSpec] = Field(description="Inputs by name.", min_length=1)
    backbones: dict[str, SerializeAsAny[BackboneConfig]] = Field(
        default_factory=dict, description="Named backbones that inputs can share."
    )
    fusion: SerializeAsAny[FusionConfig] | None = Field(
        None,
        description="How the features of a head's inputs are fused. Optional when every head"
        " uses exactly one input.",
    )
    heads: dict[str, SerializeAsAny[HeadConfig]] = Field(description="Prediction heads by name.", min_length=1)
    training: TrainingOptions = Field(default_factory=TrainingOptions,
                                      description=TrainingOptions.__doc__)
    search: SearchSpace | None = Field(None, description=SEARCH_DESCRIPTION)
    #: The folder of the file the spec was read from: relative paths in it (a ``pretrained``
    #: weights file) are read from there. None for specs made from data.
    _folder: Path | None = PrivateAttr(None)

    # -- derived views -------------------------------------------------------------------------
    def head_inputs(self, head: str) -> tuple[str, ...]:
        """The inputs a head uses, in the spec's input order."""
        chosen = self.heads[head].inputs
        return tuple(n for n in self.inputs if chosen is None or n in chosen)

    def fusion_groups(self) -> dict[tuple[str, ...], list[str]]:
        """Distinct input sets used by heads, each with the heads that use it."""
        groups: dict[tuple[str, ...], list[str]] = {}
        for head in self.heads:
            groups.setdefault(self.head_inputs(head), []).append(head)
        return groups

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


# -- reading files ---------------------------------------------------------------------------


class _UniqueKeyLoader(yaml.SafeLoader):
    """safe_load that refuses duplicate keys instead of keeping the last one."""


def _construct_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode, deep: bool = False):
    seen: dict[Any, Any] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            mark = key_node.start_mark
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r} (line {mark.line + 1})", mark
            )
        seen[key] = True
    return loader.construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping
)


def parse_spec_text(text: str, fmt: str, source: str = "<spec>") -> dict[str, Any]:
    """Parse spec text of format ``yaml``, ``toml`` or ``json`` into plain data."""
    try:
        if fmt == "yaml":
            data = yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
        elif fmt == "toml":
            data = tomllib.loads(text)
        elif fmt == "json":
            data = json.loads(text)
        else:
            raise SpecError([("", f"unknown spec format {fmt!r}; use yaml, toml or json")], source)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise SpecError([("", f"YAML syntax error at {where}{problem}")], source) from None
    except tomllib.TOMLDecodeError as exc:
        raise SpecError([("", f"TOML syntax error: {exc}")], source) from None
    except json.JSONDecodeError as exc:
        raise SpecError(
            [("", f"JSON syntax error at line {exc.lineno}, column {exc.colno}: {exc.msg}")],
            source,
        ) from None
    if data is None or data == {} and not text.strip():
        raise SpecError([("", "the spec is empty")], source)
    if not isinstance(data, dict):
        raise SpecError(
            [("", f"a spec is a mapping (inputs, heads, ...), not {type(data).__name__}")], source
        )
    return data


def read_spec_file(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    fmt = SPEC_SUFFIXES.get(path.suffix.lower())
    if fmt is None:
        raise SpecError(
            [("", f"unknown spec file type {path.suffix!r}; use .yaml, .yml, .toml or .json")],
            str(path),
        )
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SpecError([("", "no such file")], str(path)) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SpecError([("", f"cannot read: {exc}")], str(path)) from None
    return parse_spec_text(text, fmt, str(path))


# -- validation ------------------------------------------------------------------------------

_SLOT_KIND = {"adapter": "adapter", "backbone": "backbone", "fusion": "fusion", "head": "head"}


def _format_loc(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


def _pydantic_problems(
    exc: ValidationError, prefix: str, model: type[BaseModel], data: Any = None
) -> list[tuple[str, str]]:
    """One ``(location, message)`` per wrong place. With the validated ``data``, the names
    pydantic gives the members of a union (``constrained-int``, ``literal['auto']``) are left out
    of locations and the members' complaints are joined into one message."""
    problems: dict[str, list[str]] = {}
    got: dict[str, str] = {}
    suggested: set[str] = set()  # keys a misspelt key points to: their "missing" goes unsaid
    for err in exc.errors(include_url=False):
        loc = tuple(err["loc"])
        if data is not None:
            loc = _data_location(loc, data, missing=err["type"] == "missing")
        where = ".".join(filter(None, [prefix, _format_loc(loc)]))
        if err["type"] == "extra_forbidden":
            fields = _fields_at(model, loc[:-1])
            hint = did_you_mean(str(loc[-1]), fields) if fields else ""
            suggested.update(".".join(filter(None, [prefix, _format_loc((*loc[:-1], f))]))
                             for f in close_matches(str(loc[-1]), fields or ()))
            known = f" Known keys: {', '.join(sorted(fields))}." if fields else ""
            problems.setdefault(where, []).append(_unknown_key(hint, known))
            continue
        messages = problems.setdefault(where, [])
        msg = err["msg"]
        if err["type"] == "value_error":
            msg = msg.removeprefix("Value error, ")  # a validator's own sentence
        if messages and msg.startswith("Input should "):
            msg = msg[len("Input should "):]  # "... greater than 0 or be 'auto'"
        if msg not in messages:
            messages.append(msg)
        # A whole component's options (a validator across fields) would only repeat the spec.
        if err["type"] != "missing" and "input" in err and not isinstance(err["input"], Mapping):
            got[where] = f" (got {err['input']!r})"
    return [(where, " or ".join(msgs) + got.get(where, "")) for where, msgs in problems.items()
            if not (where in suggested and msgs == ["Field required"])]


def _data_location(loc: tuple[Any, ...], data: Any, missing: bool) -> tuple[Any, ...]:
    """``loc`` without the parts that name no key or index of ``data`` (union member names);
    the last part of a ``missing`` error names a key that is absent by definition."""
    kept: list[Any] = []
    node = data
    for i, part in enumerate(loc):
        if isinstance(node, Mapping) and part in node:
            node = node[part]
        elif isinstance(node, (list, tuple)) and isinstance(part, int) and -len(node) <= part < len(node):
            node = node[part]
        elif not (missing and i == len(loc) - 1):
            continue
        kept.append(part)
    return tuple(kept)


def _unknown_key(hint: str, known: str) -> str:
    return f"unknown key.{hint}{known}"


def _fields_at(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    """Field names of the (nested) model at ``loc`` inside ``model``, when it is a plain model."""
    current: Any = model
    for part in loc:
        if not (isinstance(current, type) and issubclass(current, BaseModel)):
            return []
        field = current.model_fields.get(str(part))
        if field is None:
            return []
        current = field.annotation
    if isinstance(current, type) and issubclass(current, BaseModel):
        return list(current.model_fields)
    return []


def _component(
    raw: Any, kind: str, loc: str, registry: Registry, problems: list[tuple[str, str]]
) -> ComponentConfig | None:
    if not isinstance(raw, Mapping):
        problems.append((loc, f"a {kind} is a mapping with a `type`, not {raw!r}"))
        return None
    type_name = raw.get("type")
    installed = sorted({c.type for c in registry.components(kind)})
    if not isinstance(type_name, str) or not type_name:
        problems.append(
            (f"{loc}.type", f"missing: name the {kind} type, one of {', '.join(installed)}")
        )
        return None
    try:
        record = registry.resolve(kind, type_name)
        cls = registry.load(record)
    except ComponentError as exc:
        problems.append((f"{loc}.type", str(exc)))
        return None
    config_cls = cls.Config
    data = dict(raw)
    data["type"] = record.type
    try:
        return config_cls.model_validate(data)
    except ValidationError as exc:
        problems.extend(_pydantic_problems(exc, loc, config_cls, data))
        return None


def _check_name(name: Any, loc: str, problems: list[tuple[str, str]]) -> bool:
    if isinstance(name, str) and re.match(NAME_PATTERN, name):
        return True
    problems.append(
        (loc, f"name {name!r} is not valid: use letters, digits and _, not starting with a digit")
    )
    return False


def _mapping(raw: Any, loc: str, what: str, problems: list[tuple[str, str]]) -> dict[str, Any]:
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        problems.append((loc, f"{what} is a mapping of name -> settings, not {type(raw).__name__}"))
        return {}
    return dict(raw)


def validate_spec_data(
    data: Mapping[str, Any], registry: Registry | None = None, source: str | None = None,
    for_training: bool = True,
) -> ModelSpec:
    """Validate plain spec data into a :class:`ModelSpec`; raises :class:`SpecError`.
    ``for_training=False`` (a model file's spec) skips what only training reads: a trained model
    loads whatever its early-stopping metric was called."""
    registry = registry or get_registry()
    problems: list[tuple[str, str]] = []
    if not isinstance(data, Mapping):
        raise SpecError([("", f"a spec is a mapping, not {type(data).__name__}")], source)
    known_top = list(ModelSpec.model_fields)
    for key in data:
        if key not in known_top:
            problems.append(
                (str(key), _unknown_key(did_you_mean(str(key), known_top),
                                        f" Known keys: {', '.join(known_top)}."))
            )
    for required in ("inputs", "heads"):
        if not data.get(required):
            problems.append((required, f"missing: a spec needs at least one entry in `{required}`"))

    inputs: dict[str, InputSpec] = {}
    for name, raw in _mapping(data.get("inputs"), "inputs", "inputs", problems).items():
        loc = f"inputs.{name}"
        if not _check_name(name, loc, problems):
            continue
        if not isinstance(raw, Mapping):
            problems.append((loc, f"an input is a mapping with an `adapter`, not {raw!r}"))
            continue
        for key in raw:
            if key not in InputSpec.model_fields:
                problems.append(
                    (f"{loc}.{key}", _unknown_key(did_you_mean(str(key), InputSpec.model_fields),
                                                  " An input has `adapter` and `backbone`."))
                )
        if "adapter" not in raw:
            problems.append((f"{loc}.adapter", "missing: every input needs an adapter"))
            continue
        adapter = _component(raw["adapter"], "adapter", f"{loc}.adapter", registry, problems)
        backbone_raw = raw.get("backbone")
        backbone: str | ComponentConfig | None = None
        if isinstance(backbone_raw, str):
            backbone = backbone_raw
        elif backbone_raw is not None:
            backbone = _component(backbone_raw, "backbone", f"{loc}.backbone", registry, problems)
        if adapter is not None and (backbone_raw is None or backbone is not None):
            inputs[name] = InputSpec.model_construct(adapter=adapter, backbone=backbone)

    backbones: dict[str, ComponentConfig] = {}
    for name, raw in _mapping(data.get("backbones"), "backbones", "backbones", problems).items():
        if _check_name(name, f"backbones.{name}", problems):
            config = _component(raw, "backbone", f"backbones.{name}", registry, problems)
            if config is not None:
                backbones[name] = config

    fusion = None
    if data.get("fusion") is not None:
        fusion = _component(data["fusion"], "fusion", "fusion", registry, problems)

    heads: dict[str, ComponentConfig] = {}
    for name, raw in _mapping(data.get("heads"), "heads", "heads", problems).items():
        if _check_name(name, f"heads.{name}", problems):
            config = _component(raw, "head", f"heads.{name}", registry, problems)
            if config is not None:
                heads[name] = config

    # Cross-references, checked on what did validate.
    raw_inputs = _mapping(data.get("inputs"), "inputs", "inputs", [])
    for name, inp in inputs.items():
        if isinstance(inp.backbone, str) and inp.backbone not in backbones:
            raw_named = _mapping(data.get("backbones"), "", "", [])
            if inp.backbone in raw_named:
                continue  # its own problem is already reported
            named = ", ".join(sorted(raw_named)) or "none"
            problems.append(
                (f"inputs.{name}.backbone", f"unknown backbone {inp.backbone!r}."
                 f"{did_you_mean(inp.backbone, raw_named)} Named backbones: {named}.")
            )
    for name, head in heads.items():
        for i, ref in enumerate(head.inputs or []):
            if ref not in raw_inputs:
                problems.append(
                    (f"heads.{name}.inputs[{i}]", f"unknown input {ref!r}."
                     f"{did_you_mean(ref, raw_inputs)} Inputs: {', '.join(raw_inputs) or 'none'}.")
                )
    if fusion is None and data.get("fusion") is None:
        for name, head in heads.items():
            used = [n for n in raw_inputs if head.inputs is None or n in head.inputs]
            if len(used) > 1:
                fusions = ", ".join(sorted({c.type for c in registry.components("fusion")}))
                problems.append(
                    ("fusion", f"missing: head {name!r} uses {len(used)} inputs"
                     f" ({', '.join(used)}), which need a fusion (one of: {fusions or 'none installed'})")
                )
                break

    training = TrainingOptions()
    if data.get("training") is not None:
        if not isinstance(data["training"], Mapping):
            problems.append(("training", "training is a mapping of options (epochs, lr, ...)"))
        else:
            try:
                training = TrainingOptions.model_validate(data["training"])
            except ValidationError as exc:
                problems.extend(_pydantic_problems(exc, "training", TrainingOptions, data["training"]))
            for head in training.loss_weights:
                if head not in heads and head not in _mapping(data.get("heads"), "", "", []):
                    problems.append((f"training.loss_weights.{head}", f"unknown head {head!r}."
                                     f"{did_you_mean(head, heads)} Heads: {', '.join(heads)}."))
            if for_training:
                problems.extend(_monitored_metric_problems(training, heads, data.get("heads")))

    for key, value in (("name", data.get("name")), ("description", data.get("description"))):
        if value is not None and not isinstance(value, str):
            problems.append((key, f"must be text, not {type(value).__name__}"))
    if problems:
        raise SpecError(problems, source)
    parts = dict(name=data.get("name", "model"), description=data.get("description"),
                 inputs=inputs, backbones=backbones, fusion=fusion, heads=heads, training=training)
    spec = ModelSpec.model_construct(**parts)
    if data.get("search") is None:
        return spec
    search, problems = validate_search(
        data["search"], spec, data,
        lambda trial: validate_spec_data(trial, registry, for_training=for_training))
    if problems:
        raise SpecError(problems, source)
    return ModelSpec.model_construct(**parts, search=search)


def _monitored_metric_problems(training: TrainingOptions, heads: Mapping[str, ComponentConfig],
                               raw_heads: Any) -> list[tuple[str, str]]:
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
    make = getattr(heads[head], "codec", None)
    known = getattr(make(), "metric_names", ()) if callable(make) else ()
    if known and name not in (*known, "loss"):  # every head also reports its own loss
        return [unknown_metric(head, name, known)]
    return []


def unknown_metric(head: str, name: str, known: Sequence[str]) -> tuple[str, str]:
    """The problem of an ``early_stopping.metric`` that names no metric of its head."""
    return ("training.early_stopping.metric", f"head {head!r} has no metric {name!r}."
            f"{did_you_mean(name, known)} Its metrics: {', '.join(known)}.")


def load_spec(source: str | Path | Mapping[str, Any], registry: Registry | None = None) -> ModelSpec:
    """Read and validate a spec from a file path (YAML, TOML, JSON) or from plain data."""
    if isinstance(source, ModelSpec):
        return source
    if isinstance(source, Mapping):
        return validate_spec_data(source, registry)
    data = read_spec_file(source)
    spec = validate_spec_data(data, registry, source=str(source))
    spec._folder = Path(source).resolve().parent
    return spec


# -- JSON Schema -----------------------------------------------------------------------------


def spec_json_schema(registry: Registry | None = None) -> dict[str, Any]:
    """JSON Schema of the spec with every installed component as a discriminated union."""
    registry = registry or get_registry()
    registry.load_all()

    def union(kind: str) -> Any:
        records = registry.components(kind)
        if not records:
            return CONFIG_BASE[kind]
        short_counts: dict[str, int] = {}
        for rec in records:
            short_counts[rec.type] = short_counts.get(rec.type, 0) + 1
        variants = []
        for rec in records:
            cls = registry.load(rec)
            names = [rec.canonical] + ([rec.type] if short_counts[rec.type] == 1 else [])
            variant = create_model(
                f"{rec.package}_{rec.type}_{kind}".replace("-", "_"),
                __base__=cls.Config,
                __doc__=(cls.__doc__ or "").strip() or None,
                type=(
                    Union[tuple(_literal(n) for n in names)],  # type: ignore[arg-type]
                    Field(description=f"The {kind} type: "
                          + " or ".join(repr(n) for n in reversed(names)) + "."),
                ),
            )
            variants.append(Annotated[variant, Tag(rec.canonical)])
        if len(variants) == 1:
            return variants[0]
        return Annotated[Union[tuple(variants)], Discriminator(_tag_of)]  # type: ignore[arg-type]

    adapter, backbone, fusion, head = (union(k) for k in ("adapter", "backbone", "fusion", "head"))
    input_model = create_model(
        "InputSpec",
        __base__=_StrictModel,
        __doc__=InputSpec.__doc__,
        adapter=(adapter, InputSpec.model_fields["adapter"]),
        backbone=(Union[str, backbone, None], InputSpec.model_fields["backbone"]),
    )
    fields = dict(ModelSpec.model_fields)
    spec_model = create_model(
        "ModelSpec",
        __base__=_StrictModel,
        __doc__=ModelSpec.__doc__,
        name=(str, fields["name"]),
        description=(str | None, fields["description"]),
        inputs=(dict[str, input_model], fields["inputs"]),
        backbones=(dict[str, backbone], fields["backbones"]),
        fusion=(Union[fusion, None], fields["fusion"]),
        heads=(dict[str, head], fields["heads"]),
        training=(TrainingOptions, fields["training"]),
        search=(SearchSpace | None, fields["search"]),
    )
    schema = spec_model.model_json_schema()
    for key in ("inputs", "backbones", "heads"):
        schema["properties"][key]["propertyNames"] = {"pattern": NAME_PATTERN}
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "polymodal model spec"
    return schema


CONFIG_BASE = {
    "adapter": AdapterConfig,
    "backbone": BackboneConfig,
    "fusion": FusionConfig,
    "head": HeadConfig,
}


def _literal(value: str) -> Any:
    from typing import Literal

    return Literal[value]


def _tag_of(value: Any) -> str | None:
    # Only used to generate the schema; specs are validated by validate_spec_data.
    return value.get("type") if isinstance(value, Mapping) else getattr(value, "type", None)

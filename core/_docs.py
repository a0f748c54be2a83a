"""The component reference, generated from the installed components' configs and docstrings."""

from __future__ import annotations

import inspect
import json
import typing
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined, to_jsonable_python

from ._registry import ComponentRecord, Registry, get_registry

if TYPE_CHECKING:
    from ._components import Component

KIND_TITLES = {
    "adapter": "Adapters (ModalityAdapter)",
    "backbone": "Backbones (Backbone)",
    "fusion": "Fusions (Fusion)",
    "head": "Heads (Head)",
}
KIND_FLOW = {
    "adapter": ("one raw input of a modality (batched tensors)",
                "a signal a backbone or the fusion accepts"),
    "backbone": ("an adapter's signal", "features: a vector, a feature map or tokens"),
    "fusion": ("the features of each input a head uses, by name", "one fused vector"),
    "head": ("the fused vector", "one task's output; knows its loss and predictions"),
}


@dataclass(frozen=True)
class OptionRow:
    name: str
    type: str
    default: str
    required: bool
    constraints: str
    description: str


def _type_name(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Literal:
        return " | ".join(json.dumps(a) for a in args)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        return " | ".join(_type_name(a) for a in args)
    if origin is typing.Annotated:
        return _type_name(args[0])
    if origin in (list, tuple, set):
        return f"list[{', '.join(_type_name(a) for a in args)}]"
    if origin is dict:
        return f"dict[{', '.join(_type_name(a) for a in args)}]"
    if annotation is type(None):
        return "null"
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return _model_type(annotation)
    if isinstance(annotation, type):
        return {"str": "string", "int": "integer", "float": "number", "bool": "boolean"}.get(
            annotation.__name__, annotation.__name__)
    return str(annotation).replace("typing.", "")


def _model_type(model: type[BaseModel]) -> str:
    """A nested options model written out: ``{train_last: integer, batchnorm: boolean = false}``."""
    parts = []
    for name, field in model.model_fields.items():
        text = f"{name}: {_type_name(field.annotation)}"
        if not field.is_required():
            text += f" = {json.dumps(field.get_default(call_default_factory=True))}"
        parts.append(text)
    return "{" + ", ".join(parts) + "}"


def _schema_type(schema: dict[str, Any]) -> str:
    """A JSON Schema's type in the words of :func:`_type_name`."""
    if "const" in schema:
        return json.dumps(schema["const"])
    if "anyOf" in schema:
        return " | ".join(_schema_type(s) for s in schema["anyOf"])
    if schema.get("type") == "array":
        return f"list[{_schema_type(schema.get('items', {}))}]"
    if schema.get("type") == "object":
        values = schema.get("additionalProperties")
        return f"dict[string, {_schema_type(values)}]" if isinstance(values, dict) else "dict"
    return schema.get("type", "any")


def _field_type(field: FieldInfo) -> str:
    """The option's type as editors see it: the field's own schema (``json_schema_extra``)
    when it states one, its annotation otherwise."""
    extra = field.json_schema_extra
    if isinstance(extra, dict) and isinstance(extra.get("anyOf"), list):
        return _schema_type(extra)
    return _type_name(field.annotation)


def _constraints(field: FieldInfo) -> str:
    found = []
    symbols = {"gt": ">", "ge": ">=", "lt": "<", "le": "<=", "min_length": "min length",
               "max_length": "max length", "multiple_of": "multiple of", "pattern": "pattern"}
    for meta in field.metadata:
        for attr, symbol in symbols.items():
            value = getattr(meta, attr, None)
            if value is not None:
                found.append(f"{symbol} {value}")
    annotation = field.annotation
    for arg in typing.get_args(annotation) or ():
        for meta in getattr(arg, "__metadata__", ()):
            for attr, symbol in symbols.items():
                value = getattr(meta, attr, None)
                if value is not None:
                    found.append(f"{symbol} {value}")
    if annotation is not None and "PositiveInt" in repr(annotation) and not found:
        found.append("> 0")
    return ", ".join(dict.fromkeys(found))


def option_rows(config: type[BaseModel]) -> list[OptionRow]:
    """The options of a component config, ``type`` excluded, in declaration order."""
    rows = []
    for name, field in config.model_fields.items():
        if name == "type":
            continue
        required = field.is_required()
        if required:
            default = "—"
        elif field.default_factory is not None:
            default = json.dumps(to_jsonable_python(field.get_default(call_default_factory=True)))
        else:
            default = json.dumps(field.default) if field.default is not PydanticUndefined else "—"
        rows.append(OptionRow(name, _field_type(field), default, required,
                              _constraints(field), field.description or ""))
    return rows


def _option_table(rows: list[OptionRow]) -> list[str]:
    lines = ["| option | type | default | constraints | description |",
             "| --- | --- | --- | --- | --- |"]
    for row in rows:
        default = "required" if row.required else f"`{_cell(row.default)}`"
        lines.append(f"| `{row.name}` | `{_cell(row.type)}` | {default} |"
                     f" {_cell(row.constraints)} | {_cell(row.description)} |")
    return lines


#: The lines that enclose the generated list of training options in docs/training.md.
TRAINING_OPTIONS_BEGIN = ("<!-- training options: generated from core/_training/options.py by"
                          " `make docs`; edit the descriptions there -->")
TRAINING_OPTIONS_END = "<!-- end of training options -->"


def training_option_rows() -> list[OptionRow]:
    """Every option of a spec's ``training`` section, a section's own options as
    ``section.option`` (``early_stopping.patience``)."""
    from ._training.options import TrainingOptions

    rows: list[OptionRow] = []
    for row, field in zip(option_rows(TrainingOptions), TrainingOptions.model_fields.values()):
        section = field.annotation
        if isinstance(section, type) and issubclass(section, BaseModel):
            rows += [replace(inner, name=f"{row.name}.{inner.name}")
                     for inner in option_rows(section)]
        else:
            rows.append(row)
    return rows


def with_training_options(document: str) -> str:
    """``document`` (docs/training.md) with the list of training options between its markers
    made anew."""
    before, found, rest = document.partition(TRAINING_OPTIONS_BEGIN + "\n")
    _, end, after = rest.partition(TRAINING_OPTIONS_END)
    if not (found and end):
        raise ValueError("the document has no markers of the training options list")
    table = "\n".join(_option_table(training_option_rows()))
    return f"{before}{found}{table}\n{end}{after}"


def _cell(text: str) -> str:
    """Text made safe for a Markdown table cell (a ``|`` would end the cell)."""
    return " ".join(text.split()).replace("|", "\\|")


def example_config(record: ComponentRecord, cls: type[Component]) -> dict[str, Any]:
    """A small working config: the type and the component's ``example_options``."""
    return {"type": record.type, **dict(getattr(cls, "example_options", {}) or {})}


SLOTS = {
    "adapter": ("inputs", "NAME", "adapter"),
    "backbone": ("backbones", "NAME"),
    "fusion": ("fusion",),
    "head": ("heads", "NAME"),
}


def example_snippet(record: ComponentRecord, cls: type[Component]) -> str:
    """The example config at its place in a spec, as YAML (``NAME`` is the user's name)."""
    path = SLOTS[record.kind]
    lines = []
    for depth, part in enumerate(path[:-1]):
        lines.append("  " * depth + f"{part}:")
    lines.append("  " * (len(path) - 1) + f"{path[-1]}: {_flow(example_config(record, cls))}")
    return "\n".join(lines)


def _flow(value: Any) -> str:
    """A YAML flow-style rendering (JSON scalars are valid YAML)."""
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_flow(v)}" for k, v in value.items()) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_flow(v) for v in value) + "]"
    return json.dumps(value)


#: Built-in parts a complete example puts around the documented component: an image input, a
#: table input, a head. Tried in turn until the spec's connections check.
IMAGE_INPUT = {"adapter": {"type": "image", "channels": 3},
               "backbone": {"type": "timm", "model": "resnet18"}}
TABLE_INPUT = {"adapter": {"type": "tabular", "categorical": {"make": 40},
                           "numerical": ["age", "mileage"]},
               "backbone": {"type": "mlp", "hidden": [32]}}
EXAMPLE_HEAD = {"type": "regression"}


def _example_candidates(kind: str, config: dict[str, Any]) -> list[dict[str, Any]]:
    """Specs using ``config`` (a ``kind`` component) among built-in parts, simplest first."""
    heads = {"outcome": EXAMPLE_HEAD}
    if kind == "adapter":
        return [{"inputs": {"data": {"adapter": config, **extra}}, **more, "heads": heads}
                for extra, more in (({}, {}), ({"backbone": TABLE_INPUT["backbone"]}, {}),
                                    ({"backbone": IMAGE_INPUT["backbone"]}, {}),
                                    ({}, {"fusion": {"type": "concat"}}))]
    if kind == "backbone":
        return [{"inputs": {"data": {"adapter": part["adapter"], "backbone": "encoder"}},
                 "backbones": {"encoder": config}, **more, "heads": heads}
                for part in (IMAGE_INPUT, TABLE_INPUT)
                for more in ({}, {"fusion": {"type": "concat"}})]
    if kind == "fusion":
        return [{"inputs": {"image": IMAGE_INPUT, "table": TABLE_INPUT}, "fusion": config,
                 "heads": heads}]
    return [{"inputs": {"table": TABLE_INPUT}, "heads": {"outcome": config}},
            {"inputs": {"image": IMAGE_INPUT}, "heads": {"outcome": config}}]


def example_spec(record: ComponentRecord, cls: type, registry: Registry | None = None
                 ) -> dict[str, Any] | None:
    """A complete spec using the component's example config among built-in parts, whose
    connections check; None when none of the tried arrangements fits it."""
    from ._assembly import plan
    from ._spec import load_spec

    config = example_config(record, cls)
    for candidate in _example_candidates(record.kind, config):
        spec = {"name": f"{record.type} example", **candidate}
        try:
            plan(load_spec(spec, registry))
        except Exception:  # noqa: BLE001 - this arrangement does not fit; try the next
            continue
        return spec
    return None


def _example_section(record: ComponentRecord, cls: type, registry: Registry | None) -> list[str]:
    import yaml

    spec = example_spec(record, cls, registry)
    if spec is None:
        return []
    text = yaml.safe_dump(spec, sort_keys=False, default_flow_style=None, width=96)
    return ["## A complete spec", "",
            f"A model using this {record.kind} with built-in parts around it. Save it as"
            " `spec.yaml`; `polymodal validate spec.yaml` checks it, `polymodal build spec.yaml"
            " -o model.safetensors` builds it.", "", "```yaml", text.rstrip("\n"), "```", ""]


def connections(record: ComponentRecord, cls: type[Component]) -> tuple[str, str]:
    """What the example config takes and gives, worked out from its ``gives``."""
    from ._errors import PolymodalError
    from ._signals import Vector, example_signals

    try:
        # Any: the methods used below (gives, check_takes) are those of the record's kind
        config: Any = cls.Config.model_validate(example_config(record, cls))
    except Exception:  # noqa: BLE001 - a component without a valid example still gets a page
        return KIND_FLOW[record.kind]
    kind = record.kind
    try:
        if kind == "adapter":
            return KIND_FLOW[kind][0], f"{config.gives().describe()} (with the example options)"
        accepted: list[str] = []
        given: list[str] = []
        for signal in example_signals():
            try:
                if kind == "backbone":
                    given.append(f"{signal.describe()} -> {config.gives(signal).describe()}")
                elif kind == "fusion":
                    config.gives({"a": signal})
                else:
                    config.check_takes(signal)
                accepted.append(type(signal).__name__)
            except PolymodalError:
                continue
        takes = ", ".join(_kind_words(a) for a in accepted) or "nothing the built-in signals describe"
        if kind == "backbone":
            return takes, "; ".join(given) + " (with the example options)"
        if kind == "fusion":
            out = config.gives({"a": Vector(16), "b": Vector(8)}).describe()
            return ("the features of each input, by name: " + takes,
                    f"{out} from vectors of 16 and 8 (with the example options)")
        return takes, KIND_FLOW[kind][1]
    except PolymodalError:
        return KIND_FLOW[kind]


def _kind_words(name: str) -> str:
    return {"FeatureMap": "feature maps", "Vector": "vectors", "Tokens": "tokens",
            "Sequence": "sequences"}.get(name, name)


def component_page(record: ComponentRecord, cls: type[Component], registry: Registry | None = None) -> str:
    takes, gives = connections(record, cls)
    # The first paragraph is the summary, shown above; the rest is the page's body.
    doc = inspect.cleandoc(cls.__doc__ or "").split("\n\n", 1)
    body = doc[1] if len(doc) > 1 else ""
    lines = [
        f"# {record.kind} `{record.type}`",
        "",
        record.summary,
        "",
        f"- kind: {record.kind}",
        f"- type: `{record.type}` (canonical id `{record.canonical}`)",
        f"- package: `{record.package}` {record.version}",
        f"- class: `{record.target}`",
        f"- takes: {takes}",
        f"- gives: {gives}",
        "",
        *([body, ""] if body else []),
        "## Options",
        "",
    ]
    rows = option_rows(cls.Config)
    if rows:
        lines += _option_table(rows)
    else:
        lines.append("None besides `type`.")
    lines += ["", "## Example", "", "```yaml", example_snippet(record, cls), "```", ""]
    lines += _example_section(record, cls, registry)
    return "\n".join(lines)


def page_name(record: ComponentRecord) -> str:
    package = "" if record.package == "polymodal" else f"{record.package}-"
    return f"{record.kind}-{package}{record.type}.md"


def reference_pages(registry: Registry | None = None, packages: set[str] | None = None) -> dict[str, str]:
    """File name -> Markdown of ``index.md`` and one page per installed component."""
    from ._registry import normalize_package

    registry = registry or get_registry()
    records = registry.load_all()
    if packages is not None:
        wanted = {normalize_package(p) for p in packages}
        records = [r for r in records if r.package in wanted]
    pages: dict[str, str] = {}
    index = [
        "# Component reference",
        "",
        "Generated by `polymodal docs` from the installed components; do not edit by hand.",
        "",
    ]
    for kind, title in KIND_TITLES.items():
        of_kind = [r for r in records if r.kind == kind]
        if not of_kind:
            continue
        index += [f"## {title}", "", "| type | package | summary |", "| --- | --- | --- |"]
        for rec in of_kind:
            cls = registry.load(rec)
            name = page_name(rec)
            pages[name] = component_page(rec, cls, registry)
            index.append(f"| [`{rec.type}`]({name}) | {rec.package} {rec.version} | {_cell(rec.summary)} |")
        index.append("")
    pages["index.md"] = "\n".join(index)
    return pages


def write_reference(
    directory: Path, registry: Registry | None = None, packages: set[str] | None = None
) -> list[Path]:
    """Write ``index.md`` and one page per component; remove pages of components now gone.

    Each page is written to a temporary file and renamed, so a page is never half-written."""
    from ._files import write_text

    pages = reference_pages(registry, packages)
    directory.mkdir(parents=True, exist_ok=True)
    written = [write_text(directory / name, text) for name, text in pages.items()]
    for stale in directory.glob("*.md"):
        if stale.name not in pages and _is_component_page(stale):
            stale.unlink()  # a component now gone; any other file is the user's, left alone
    return written


def _is_component_page(path: Path) -> bool:
    """Whether ``path`` is a component page an earlier ``polymodal docs`` wrote: named
    ``KIND-....md`` and headed ``# KIND `TYPE```."""
    kind, _, rest = path.stem.partition("-")
    if not rest:
        return False
    try:
        with path.open(encoding="utf-8") as handle:
            first = handle.readline(200)
    except (OSError, UnicodeDecodeError):
        return False
    return first.startswith(f"# {kind} `")

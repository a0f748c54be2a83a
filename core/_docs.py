"""The component reference, generated from the installed components' configs and docstrings."""

from __future__ import annotations

import inspect
import json
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

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
    if isinstance(annotation, type):
        return {"str": "string", "int": "integer", "float": "number", "bool": "boolean"}.get(
            annotation.__name__, annotation.__name__)
    return str(annotation).replace("typing.", "")


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
            default = json.dumps(field.get_default(call_default_factory=True))
        else:
            default = json.dumps(field.default) if field.default is not PydanticUndefined else "—"
        rows.append(OptionRow(name, _type_name(field.annotation), default, required,
                              _constraints(field), field.description or ""))
    return rows


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


def component_page(record: ComponentRecord, cls: type[Component]) -> str:
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
        lines += ["| option | type | default | constraints | description |",
                  "| --- | --- | --- | --- | --- |"]
        for row in rows:
            default = "required" if row.required else f"`{_cell(row.default)}`"
            lines.append(f"| `{row.name}` | `{_cell(row.type)}` | {default} |"
                         f" {_cell(row.constraints)} | {_cell(row.description)} |")
    else:
        lines.append("None besides `type`.")
    lines += ["", "## Example", "", "```yaml", example_snippet(record, cls), "```", ""]
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
            pages[name] = component_page(rec, cls)
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
        if stale.name not in pages:
            stale.unlink()
    return written

"""The component reference, generated from the installed components' configs and docstrings."""

from __future__ import annotations

import inspect
import json
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from .registry import ComponentRecord, Registry, get_registry

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
            default = json.dumps(field.default_factory())
        else:
            default = json.dumps(field.default) if field.default is not PydanticUndefined else "—"
        rows.append(OptionRow(name, _type_name(field.annotation), default, required,
                              _constraints(field), field.description or ""))
    return rows


def _example(record: ComponentRecord, cls: type) -> dict[str, Any]:
    """A minimal config: the type and each required option with a value that validates."""
    example: dict[str, Any] = {"type": record.type}
    samples = getattr(cls, "spec_example", None)
    if isinstance(samples, dict):
        example.update(samples)
    return example


def component_page(record: ComponentRecord, cls: type) -> str:
    takes, gives = KIND_FLOW[record.kind]
    doc = inspect.cleandoc(cls.__doc__ or record.summary or "")
    lines = [
        f"# {record.kind} `{record.type}`",
        "",
        f"- id: `{record.canonical}`",
        f"- package: `{record.package}` {record.version}",
        f"- class: `{record.target}`",
        f"- takes: {takes}",
        f"- gives: {gives}",
        "",
        doc,
        "",
        "## Options",
        "",
        "| option | type | default | constraints | description |",
        "| --- | --- | --- | --- | --- |",
    ]
    for row in option_rows(cls.Config):
        default = "required" if row.required else f"`{row.default}`"
        desc = row.description.replace("|", "\\|")
        lines.append(f"| `{row.name}` | `{row.type}` | {default} | {row.constraints} | {desc} |")
    lines += ["", "## Example", "", "```yaml"]
    lines.append(_yaml_line(_example(record, cls)))
    lines += ["```", ""]
    return "\n".join(lines)


def _yaml_line(data: dict[str, Any]) -> str:
    return "{" + ", ".join(f"{k}: {json.dumps(v)}" for k, v in data.items()) + "}"


def page_name(record: ComponentRecord) -> str:
    package = "" if record.package == "polymodal" else f"{record.package}-"
    return f"{record.kind}-{package}{record.type}.md"


def write_reference(directory: Path, registry: Registry | None = None) -> list[Path]:
    """Write ``index.md`` and one page per installed component; remove stale pages."""
    registry = registry or get_registry()
    records = registry.load_all()
    directory.mkdir(parents=True, exist_ok=True)
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
            index.append(f"| [`{rec.type}`]({name}) | {rec.package} | {rec.summary} |")
        index.append("")
    pages["index.md"] = "\n".join(index)
    written = []
    for stale in directory.glob("*.md"):
        if stale.name not in pages:
            stale.unlink()
    for name, text in pages.items():
        path = directory / name
        path.write_text(text, encoding="utf-8")
        written.append(path)
    return written

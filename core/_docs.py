"""The component reference, generated from the installed components' configs and docstrings."""

from __future__ import annotations

import inspect
import itertools
import json
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from ._components import SchemaWithDefaults
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


def _schema_type(schema: dict[str, Any], defs: dict[str, Any]) -> str:
    """A JSON Schema's type in words (``integer | null``, ``"mean" | "max"``, ``list[string]``,
    a nested object written out as ``{train_last: integer, batchnorm: boolean = false}``)."""
    if "$ref" in schema:
        return _object_type(defs[schema["$ref"].rsplit("/", 1)[-1]], defs)
    if "const" in schema:
        return json.dumps(schema["const"])
    if "enum" in schema:
        return " | ".join(json.dumps(value) for value in schema["enum"])
    if "anyOf" in schema:
        return " | ".join(_schema_type(s, defs) for s in schema["anyOf"])
    kind = schema.get("type")
    if kind == "array":
        items = schema.get("prefixItems") or [schema.get("items", {})]
        return f"list[{', '.join(_schema_type(item, defs) for item in items)}]"
    if kind == "object" and "properties" in schema:
        return _object_type(schema, defs)
    if kind == "object":
        values = schema.get("additionalProperties", True)  # JSON Schema's default: any value
        return f"dict[string, {_schema_type(values, defs) if isinstance(values, dict) else 'any'}]"
    return kind or "any"


def _object_type(schema: dict[str, Any], defs: dict[str, Any]) -> str:
    parts = []
    for name, prop in schema.get("properties", {}).items():
        text = f"{name}: {_schema_type(prop, defs)}"
        if name not in schema.get("required", ()) and "default" in prop:
            text += f" = {json.dumps(prop['default'])}"
        parts.append(text)
    return "{" + ", ".join(parts) + "}"


#: JSON Schema keywords of a constraint, and how the reference writes them.
CONSTRAINT_WORDS = {"exclusiveMinimum": ">", "minimum": ">=", "exclusiveMaximum": "<",
                    "maximum": "<=", "minLength": "min length", "maxLength": "max length",
                    "minItems": "min items", "maxItems": "max items", "multipleOf": "multiple of",
                    "pattern": "pattern"}


def _constraints(schema: dict[str, Any]) -> str:
    """The option's constraints, from its schema and from each branch of a union."""
    found = []
    for branch in [schema, *schema.get("anyOf", ())]:
        found += [f"{word} {branch[key]}" for key, word in CONSTRAINT_WORDS.items()
                  if key in branch]
        for inner in ("items", "additionalProperties"):  # each item of a list, each value of a map
            if isinstance(branch.get(inner), dict) and (each := _constraints(branch[inner])):
                found.append(f"each {each}")
    return ", ".join(dict.fromkeys(found))


def option_rows(config: type[BaseModel]) -> list[OptionRow]:
    """The options of a config, ``type`` excluded, in declaration order, read from the JSON
    Schema the config gives (the one editors and ``polymodal schema`` use)."""
    schema = config.model_json_schema(schema_generator=SchemaWithDefaults)
    defs = schema.get("$defs", {})
    rows = []
    for name, prop in schema.get("properties", {}).items():
        if name == "type":
            continue
        required = name in schema.get("required", ())
        default = "—" if required or "default" not in prop else json.dumps(prop["default"])
        rows.append(OptionRow(name, _schema_type(prop, defs), default, required,
                              _constraints(prop), prop.get("description", "")))
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
TRAINING_OPTIONS_BEGIN = ("<!-- training options: generated from core/_options.py by"
                          " `make docs`; edit the descriptions there -->")
TRAINING_OPTIONS_END = "<!-- end of training options -->"


def training_option_rows() -> list[OptionRow]:
    """Every option of a spec's ``training`` section, a section's own options as
    ``section.option`` (``early_stopping.patience``)."""
    from ._options import TrainingOptions

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


def _parts(registry: Registry, kind: str, package: str) -> list[dict[str, Any]]:
    """The example config of every installed component of ``kind``, those of ``package`` (the
    documented component's) first: the parts an example may put around it."""
    records = sorted(registry.components(kind), key=lambda r: (r.package != package, r.package,
                                                                  r.type))
    return [example_config(r, registry.load(r)) for r in records]


def _example_candidates(kind: str, config: dict[str, Any], registry: Registry,
                        package: str) -> Iterator[dict[str, Any]]:
    """Specs using ``config`` (a ``kind`` component) among other installed components'
    examples: each input named after its adapter's type, with a backbone where one fits (else
    none), one head, and a fusion where the documented component is one (of two inputs) or where
    nothing fits without one."""
    adapters = [config] if kind == "adapter" else _parts(registry, "adapter", package)
    backbones = [config] if kind == "backbone" else _parts(registry, "backbone", package)
    heads = [config] if kind == "head" else _parts(registry, "head", package)
    fusions = [config] if kind == "fusion" else [None, *_parts(registry, "fusion", package)]
    inputs = [(adapter, backbone) for backbone in [*backbones, None] for adapter in adapters]
    if kind == "backbone":
        inputs = [(adapter, config) for adapter in adapters]
    arrangements = itertools.combinations(inputs, 2) if kind == "fusion" else \
        ((each,) for each in inputs)
    for fusion, chosen, head in itertools.product(fusions, list(arrangements), heads):
        if len({adapter["type"] for adapter, _ in chosen}) < len(chosen):
            continue  # two inputs of one modality say less than two modalities
        spec: dict[str, Any] = {"inputs": {
            adapter["type"]: {"adapter": adapter, **({"backbone": backbone} if backbone else {})}
            for adapter, backbone in chosen}}
        if kind == "backbone":  # a named backbone: its options at their own place in the spec
            spec = {"inputs": {name: {**part, "backbone": "encoder"}
                               for name, part in spec["inputs"].items()},
                    "backbones": {"encoder": config}}
        if fusion is not None:
            spec["fusion"] = fusion
        yield {**spec, "heads": {"outcome": head}}


def example_spec(record: ComponentRecord, cls: type, registry: Registry | None = None
                 ) -> dict[str, Any] | None:
    """A complete spec using the component's example config among other installed components,
    whose connections check; None when none of the arrangements tried fits it."""
    from ._assembly import plan
    from ._spec import load_spec

    registry = registry or get_registry()
    config = example_config(record, cls)
    for tried, candidate in enumerate(_example_candidates(record.kind, config, registry,
                                                          record.package)):
        if tried == MAX_EXAMPLE_TRIES:
            break
        spec = {"name": f"{record.type} example", **candidate}
        try:
            plan(load_spec(spec, registry))
        except Exception:  # noqa: BLE001 - this arrangement does not fit; try the next
            continue
        return spec
    return None


#: Arrangements tried before a page goes without a complete example (each is planned, which
#: measures the components it uses).
MAX_EXAMPLE_TRIES = 200


def _example_section(record: ComponentRecord, cls: type, registry: Registry | None) -> list[str]:
    import yaml

    spec = example_spec(record, cls, registry)
    if spec is None:
        return []
    text = yaml.safe_dump(spec, sort_keys=False, default_flow_style=None, width=96)
    return ["## A complete spec", "",
            f"A model using this {record.kind} with other installed components around it. Save"
            " it as `spec.yaml`; `polymodal validate spec.yaml` checks it, `polymodal build spec.yaml"
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

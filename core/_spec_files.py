"""Reading spec text (YAML, TOML, JSON) into plain data, bounded in time and memory.

Specs travel between people, so reading one must not be a way to hang or exhaust a machine. The
text is limited in size; YAML is first read as a stream of parser events (PyYAML's parser keeps
its own stack, so this is safe for any nesting) and refused before anything is built when it
nests too deeply or when its aliases would expand to too many values (the "billion laughs"
bomb); JSON and TOML are checked the same way after parsing. Each limit names itself in the
message, so a real spec that reaches one says what was too large.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Iterator
from contextvars import ContextVar
from pathlib import Path
from typing import Any

import yaml

from ._errors import SpecError, excerpt

if sys.version_info >= (3, 11):
    import tomllib
else:  # the same parser, before it joined the standard library
    import tomli as tomllib

SPEC_SUFFIXES = {".yaml": "yaml", ".yml": "yaml", ".toml": "toml", ".json": "json"}

#: The folder of the spec file being read or built, if it came from a file: ``pretrained:
#: weights.safetensors`` then means the file beside the spec, wherever the command runs, and
#: validation checks that the file is there.
SPEC_FOLDER: ContextVar[Path | None] = ContextVar("polymodal_spec_folder", default=None)

#: The largest spec text read, in bytes. Real specs are a few kilobytes; a table of tens of
#: thousands of columns still fits.
MAX_SPEC_BYTES = 4 * 1024 * 1024
#: How deeply mappings and lists may nest. Specs nest about six levels.
MAX_SPEC_DEPTH = 64
#: How many values (mappings, lists and scalars, with every alias expanded) a spec may hold.
MAX_SPEC_VALUES = 100_000


class _UniqueKeyLoader(yaml.SafeLoader):
    """safe_load that refuses duplicate keys instead of keeping the last one."""


def _construct_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode, deep: bool = False):
    seen: dict[Any, Any] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            mark = key_node.start_mark
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {excerpt(key)} (line {mark.line + 1})", mark
            )
        seen[key] = True
    return loader.construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping
)
# Values read as YAML 1.2 (and so every editor checking the spec's schema) reads them: ``1e-3``
# is a number, ``yes`` and ``off`` are text (only true and false are booleans), and so is
# ``2024-05-01`` (YAML 1.2 has no dates).
_UniqueKeyLoader.yaml_implicit_resolvers = {
    first: [(tag, pattern) for tag, pattern in resolvers
            if tag not in ("tag:yaml.org,2002:bool", "tag:yaml.org,2002:timestamp")]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}
_UniqueKeyLoader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF"))
_UniqueKeyLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."),
)


def _too_deep(line: int | None = None) -> str:
    where = f" (line {line})" if line is not None else ""
    return f"the spec nests deeper than {MAX_SPEC_DEPTH} levels{where}"


def too_many_values(aliases: bool = True) -> str:
    """The message of a spec over MAX_SPEC_VALUES values; ``aliases``: it uses YAML aliases
    (or shared Python objects), which is then the likely cause."""
    if aliases:
        return (f"the spec holds more than {MAX_SPEC_VALUES:,} values once its aliases are"
                " expanded")
    return (f"the spec holds more than {MAX_SPEC_VALUES:,} values (mappings, lists, numbers and"
            " texts); a spec describes a model: give long lists (choices, columns) shorter")


def _check_yaml_events(text: str) -> None:
    """Refuse YAML that nests too deeply or expands too far, from its events alone."""
    sizes: dict[str, int] = {}  # anchor -> values its node expands to
    stack: list[list[Any]] = []  # open collections: [anchor, values so far]
    total = 0
    aliased = False
    for event in yaml.parse(text, Loader=_UniqueKeyLoader):
        if isinstance(event, (yaml.MappingStartEvent, yaml.SequenceStartEvent)):
            stack.append([event.anchor, 1])
            if len(stack) > MAX_SPEC_DEPTH:
                line = event.start_mark.line + 1 if event.start_mark else 0  # the parser marks every event
                raise SpecError([("", _too_deep(line))])
            continue
        if isinstance(event, (yaml.MappingEndEvent, yaml.SequenceEndEvent)):
            anchor, size = stack.pop()
        elif isinstance(event, yaml.ScalarEvent):
            anchor, size = event.anchor, 1
        elif isinstance(event, yaml.AliasEvent):
            anchor, size = None, sizes.get(event.anchor or "", 1)
            aliased = True
        else:
            continue
        if anchor is not None:
            sizes[anchor] = size
        if stack:
            stack[-1][1] += size
        else:
            total += size
        if total + sum(open_[1] for open_ in stack) > MAX_SPEC_VALUES:
            raise SpecError([("", too_many_values(aliased))])


def walk(data: Any) -> Iterator[tuple[Any, int]]:
    """Every value of plain data with its depth, without recursion."""
    pending = [(data, 1)]
    while pending:
        value, depth = pending.pop()
        yield value, depth
        if isinstance(value, dict):
            pending.extend((v, depth + 1) for v in value.values())
        elif isinstance(value, list):
            pending.extend((v, depth + 1) for v in value)


def check_spec_size(data: Any) -> None:
    """Refuse parsed spec data that nests too deeply or holds too many values."""
    for count, (_, depth) in enumerate(walk(data), 1):
        if depth > MAX_SPEC_DEPTH:
            raise SpecError([("", _too_deep())])
        if count > MAX_SPEC_VALUES:
            raise SpecError([("", too_many_values(aliases=False))])


def _parse(text: str, fmt: str) -> Any:
    if fmt == "yaml":
        _check_yaml_events(text)
        return yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
    if fmt == "toml":
        return tomllib.loads(text)
    if fmt == "json":
        return json.loads(text)
    raise SpecError([("", f"unknown spec format {fmt!r}; use yaml, toml or json")])


def parse_spec_text(text: str, fmt: str, source: str = "<spec>") -> dict[str, Any]:
    """Parse spec text of format ``yaml``, ``toml`` or ``json`` into plain data."""
    size = len(text.encode("utf-8", "surrogatepass")) if len(text) * 4 > MAX_SPEC_BYTES else 0
    if size > MAX_SPEC_BYTES:
        raise SpecError([("", f"the spec is {size / 2**20:.1f} MiB; the limit is"
                          f" {MAX_SPEC_BYTES // 2**20} MiB")], source)
    try:
        data = _parse(text, fmt)
        if fmt != "yaml":  # YAML was checked on its events, aliases and all
            check_spec_size(data)
    except SpecError as exc:
        raise exc.with_source(source) from None
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
    except RecursionError:  # JSON and TOML parsers recurse; their depth is checked after
        raise SpecError([("", _too_deep())], source) from None
    except ValueError as exc:  # a number too long to convert, in any of the formats
        raise SpecError([("", f"cannot read a value: {excerpt(str(exc))}")], source) from None
    if data is None or data == {} and not text.strip():
        raise SpecError([("", "the spec is empty")], source)
    if not isinstance(data, dict):
        raise SpecError(
            [("", f"a spec is a mapping (inputs, heads, ...), not {type(data).__name__}")], source
        )
    return data


def read_spec_file(path: str | Path) -> dict[str, Any]:
    """The plain data of a spec file, its format told by its suffix."""
    path = Path(path)
    fmt = SPEC_SUFFIXES.get(path.suffix.lower())
    if fmt is None:
        raise SpecError(
            [("", f"unknown spec file type {path.suffix!r}; use .yaml, .yml, .toml or .json")],
            str(path),
        )
    try:
        with path.open("rb") as file:
            raw = file.read(MAX_SPEC_BYTES + 1)
    except FileNotFoundError:
        raise SpecError([("", "no such file")], str(path)) from None
    except OSError as exc:
        raise SpecError([("", f"cannot read: {exc}")], str(path)) from None
    if len(raw) > MAX_SPEC_BYTES:
        raise SpecError([("", f"the spec file is larger than the limit of"
                          f" {MAX_SPEC_BYTES // 2**20} MiB")], str(path))
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SpecError([("", f"cannot read: not UTF-8 text ({exc.reason} at byte"
                          f" {exc.start})")], str(path)) from None
    return parse_spec_text(text, fmt, str(path))

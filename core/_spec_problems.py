"""Pydantic's errors about a spec, made one line per wrong place: where it is in the spec as
written, and what is wrong there in the words of the component or section that refused it."""

from __future__ import annotations

import re
import types
import typing
from collections.abc import Mapping
from typing import TYPE_CHECKING, Annotated, Any, Union

from pydantic import (
    BaseModel,
    Tag,
    ValidationError,
)

from ._errors import (
    Problem,
    close_matches,
    did_you_mean,
    excerpt,
    shorten,
    validator_problem,
)

if TYPE_CHECKING:
    pass

from ._spec_slots import ComponentSlot

#: The message of a section a spec cannot do without, when it is absent or empty.
REQUIRED_SECTIONS = {
    "inputs": "missing: a spec needs at least one entry in `inputs`",
    "heads": "missing: a spec needs at least one entry in `heads`",
}



#: At most this many problems are listed; a value with a million wrong items is one line each.
MAX_PROBLEMS = 30


def format_loc(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + shorten(str(part), 60)
    return out


def pydantic_problems(
    exc: ValidationError, prefix: str, model: type[BaseModel] | Any, data: Any = None
) -> list[tuple[str, str]]:
    """One ``(location, message)`` per wrong place. With the validated ``data``, the names
    pydantic gives the members of a union (``constrained-int``, ``literal['auto']``, a
    component's canonical id) are left out of locations and the members' complaints are joined
    into one message."""
    # By place, and whether the complaint is about the name (the key) there or its value.
    problems: dict[tuple[str, bool], list[str]] = {}
    causes: dict[str, BaseException] = {}  # a component's own exception behind a problem
    got: dict[tuple[str, bool], str] = {}
    suggested: set[str] = set()  # keys a misspelt key points to: their "missing" goes unsaid
    for err in exc.errors(include_url=False):
        if err["type"] == "spec_references":
            for where, message in err["ctx"]["problems"]:
                problems.setdefault((where, False), []).append(message)
            continue
        raw_loc = tuple(err["loc"])
        loc = raw_loc if data is None else _data_location(raw_loc, data, err["type"] == "missing")
        if err["type"] == "spec_type":
            loc += ("type",)
        place = (_join(prefix, loc), raw_loc[-1:] == ("[key]",))
        reported = validator_problem(place[0], err)  # a component's ConfigError, at its option
        if reported is not None:
            problems.setdefault((reported[0], False), []).append(reported[1])
            continue
        if err["type"] == "extra_forbidden":
            fields = _fields_at(model, raw_loc[:-1])
            hint = did_you_mean(str(loc[-1]), fields) if fields else ""
            suggested.update(_join(prefix, (*loc[:-1], f))
                             for f in close_matches(str(loc[-1]), fields or ()))
            known = f" Known keys: {', '.join(sorted(fields))}." if fields else ""
            problems.setdefault(place, []).append(_unknown_key(hint, known))
            continue
        if isinstance((err.get("ctx") or {}).get("cause"), BaseException):
            causes[place[0]] = err["ctx"]["cause"]
        messages = problems.setdefault(place, [])
        msg = _message(err, loc if not prefix else None)
        if messages and msg.startswith("Input should "):
            msg = msg[len("Input should "):]  # "... greater than 0 or be 'auto'"
        if msg not in messages:
            messages.append(msg)
        # A whole component's options (a validator across fields) would only repeat the spec;
        # a problem with a name or a type says the value itself.
        if err["type"] not in _SAYS_WHAT_IT_GOT and msg not in REQUIRED_SECTIONS.values() \
                and "input" in err and not isinstance(err["input"], Mapping) \
                and not (err["type"] in _VALIDATOR_ERRORS and _states_value(msg, err["input"])):
            got[place] = f" (got {excerpt(err['input'])})"
    found: list[tuple[str, str]] = [
        Problem(where, " or ".join(msgs) + got.get((where, key), ""), causes.get(where))
        for (where, key), msgs in problems.items()
        if not (where in suggested and msgs == ["Field required"])]
    if len(found) > MAX_PROBLEMS:
        found = found[:MAX_PROBLEMS] + [("", f"... and {len(found) - MAX_PROBLEMS} more problems")]
    return found


_SAYS_WHAT_IT_GOT = {"missing", "spec_type", "spec_name"}


#: Errors a config's own validator raised: its message is the plugin author's, and may state the
#: value (pydantic's own messages state bounds, never the value).
_VALIDATOR_ERRORS = {"value_error", "assertion_error"}


def _states_value(message: str, value: Any) -> bool:
    """Whether ``message`` already shows ``value`` (a validator's ``must be even, got 3``): as
    its repr, or a number or a word of three letters or more as written (3 in "got 3." but not
    in "got 30")."""
    if excerpt(value) in message:
        return True
    plain = isinstance(value, (int, float)) and not isinstance(value, bool) \
        or isinstance(value, str) and len(value.strip()) >= 3
    return plain and re.search(rf"(?<![\w.]){re.escape(str(value))}(?!\w|\.\d)",
                               message) is not None


def _join(prefix: str, loc: tuple[Any, ...]) -> str:
    return ".".join(filter(None, [prefix, format_loc(loc)]))


def _message(err: Any, spec_loc: tuple[Any, ...] | None) -> str:
    """Pydantic's message of ``err``, in the words of a spec where they are Python's."""
    kind = err["type"]
    if spec_loc is not None and len(spec_loc) == 1 and spec_loc[0] in REQUIRED_SECTIONS \
            and (kind in ("missing", "too_short") or err.get("input", 0) is None):
        return REQUIRED_SECTIONS[spec_loc[0]]
    if kind in ("dict_type", "model_type", "model_attributes_type"):
        return f"should be a mapping of names to values, not {type(err.get('input')).__name__}"
    if kind == "value_error":
        return err["msg"].removeprefix("Value error, ")  # a validator's own sentence
    return err["msg"]


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


def _fields_at(model: Any, loc: tuple[Any, ...]) -> list[str]:
    """Field names of the model at Pydantic's error location ``loc`` (union tags included)
    inside ``model``: what an unknown key there could have meant."""
    current: Any = model
    for part in loc:
        current = _inside(current, part)
        if current is None:
            return []
    current, _ = _annotated(current)
    if typing.get_origin(current) in (Union, types.UnionType):  # ``Model | None``
        members = [m for m in typing.get_args(current) if m is not type(None)]
        current = _annotated(members[0])[0] if len(members) == 1 else None
    if isinstance(current, type) and issubclass(current, BaseModel):
        return list(current.model_fields)
    return []


def _annotated(annotation: Any) -> tuple[Any, list[Any]]:
    """An annotation without ``Annotated``, and the metadata that was on it."""
    metadata: list[Any] = []
    while typing.get_origin(annotation) is Annotated:
        metadata += annotation.__metadata__
        annotation = annotation.__origin__
    return annotation, metadata


def _type_tag(member: Any) -> Any:
    """The tag of a union member told apart by a ``type: Literal[...]`` field (pydantic puts
    it in error locations)."""
    model = _annotated(member)[0]
    if not (isinstance(model, type) and issubclass(model, BaseModel)) or "type" not in model.model_fields:
        return None
    values = typing.get_args(model.model_fields["type"].annotation)
    return values[0] if len(values) == 1 else None


def _inside(annotation: Any, part: Any) -> Any:
    """The annotation of what ``part`` (a field, key, index or union tag) names in a value of
    ``annotation``; None where that is not known."""
    annotation, metadata = _annotated(annotation)
    slot = next((m for m in metadata if isinstance(m, ComponentSlot)), None)
    if slot is not None:
        record = slot.records.get(part)
        return record.cls.Config if record is not None and record.cls is not None else None
    origin = typing.get_origin(annotation)
    if origin in (Union, types.UnionType):
        members = [m for m in typing.get_args(annotation) if m is not type(None)]
        for member in members:
            if any(isinstance(m, Tag) and m.tag == part for m in _annotated(member)[1]):
                return member
            if getattr(_annotated(member)[0], "__name__", None) == part or _type_tag(member) == part:
                return member
        return _inside(members[0], part) if len(members) == 1 else None
    if origin is dict:
        return typing.get_args(annotation)[1]
    if origin is list:
        return typing.get_args(annotation)[0]
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        field = annotation.model_fields.get(str(part))
        if field is None:
            return None
        if not field.metadata:
            return field.annotation
        annotated = (field.annotation, *field.metadata)  # Annotated[annotation, *metadata]
        return Annotated[annotated]
    return None



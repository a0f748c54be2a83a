"""The ``search`` section of a spec: the options a hyperparameter search varies, and over what.

```yaml
search:
  training.lr: {type: float, low: 0.0001, high: 0.01, log: true}
  training.batch_size: {type: int, low: 16, high: 64, step: 16}
  fusion.hidden: {type: categorical, choices: [[64], [128, 64]]}
  backbones.vision.model: {type: categorical, choices: [resnet10t, resnet18]}
  fusion: {type: categorical, choices: [{type: concat}, {type: attention, dim: 64}]}
```

Each key is a spec path that must name an option the spec has (a default counts; an inline
component's options are its own config's); each value is a distribution. Every end of a range
and every choice is put into the spec on its own and the result validated, so a value no trial
could use is an error located at ``search.PATH`` before any trial runs. Only Pydantic here: a
spec validates without torch or Optuna.
"""

from __future__ import annotations

import copy
import json
from collections import Counter
from collections.abc import Callable, Mapping
from typing import Annotated, Any, Literal, Union

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    JsonValue,
    PositiveInt,
    model_validator,
)
from pydantic_core import PydanticCustomError

from ._errors import SpecError, did_you_mean


class _Distribution(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class FloatRange(_Distribution):
    """A real number between ``low`` and ``high`` (both included)."""

    type: Literal["float"] = Field(description="A real number.")
    low: float = Field(description="The smallest value.")
    high: float = Field(description="The largest value.")
    log: bool = Field(False, description="Sample on a log scale (learning rates, weight decay);"
                      " needs low > 0.")
    step: float | None = Field(None, description="Only multiples of step above low (not with"
                               " log).", gt=0)

    @model_validator(mode="after")
    def _check(self):
        _check_range(self.low, self.high, self.log)
        if self.log and self.step is not None:
            raise ValueError("log and step cannot be combined")
        return self


class IntRange(_Distribution):
    """A whole number between ``low`` and ``high`` (both included)."""

    type: Literal["int"] = Field(description="A whole number.")
    low: int = Field(description="The smallest value.")
    high: int = Field(description="The largest value.")
    step: PositiveInt = Field(1, description="Only every step-th value from low.")
    log: bool = Field(False, description="Sample on a log scale (needs low > 0 and step 1).")

    @model_validator(mode="after")
    def _check(self):
        _check_range(self.low, self.high, self.log)
        if self.log and self.step != 1:
            raise ValueError("log needs step 1")
        if (self.high - self.low) % self.step:
            raise ValueError(f"high - low ({self.high - self.low}) is not a multiple of step"
                             f" ({self.step})")
        return self


class Choice(_Distribution):
    """One of several values: numbers, text, lists, or whole components and sections."""

    type: Literal["categorical"] = Field(description="One of the choices.")
    choices: list[JsonValue] = Field(description="The values to choose from: numbers, text,"
                                     " lists, or mappings (a whole component, e.g."
                                     " `{type: attention, dim: 64}`).", min_length=2)

    @model_validator(mode="after")
    def _check(self):
        if len(self.choices) > MAX_CHECKED_VALUES:  # before the work that grows with them
            raise ValueError(f"{len(self.choices):,} choices; at most {MAX_CHECKED_VALUES:,}"
                             " (each is checked by validating a whole spec): give numbers as a"
                             " float or int range")
        counts = Counter(label(c) for c in self.choices)
        twice = sorted(x for x, n in counts.items() if n > 1)
        if twice:
            raise ValueError(f"choices repeat: {', '.join(twice[:5])}"
                             + (f" and {len(twice) - 5} more" if len(twice) > 5 else ""))
        return self


def _check_range(low: float, high: float, log: bool) -> None:
    if not low < high:
        raise ValueError(f"low ({low}) must be below high ({high})")
    if log and low <= 0:
        raise ValueError(f"log needs low > 0 (got {low})")


DISTRIBUTIONS: dict[str, type[_Distribution]] = {"float": FloatRange, "int": IntRange,
                                                 "categorical": Choice}


def _known_distribution(value: Any) -> Any:
    """A distribution is a mapping whose ``type`` names one (said here, with a suggestion,
    rather than as the union's bare tag error)."""
    kinds = ", ".join(DISTRIBUTIONS)
    if not isinstance(value, Mapping):
        raise _problem(f"a distribution is a mapping with a `type` ({kinds}), not {label(value)}")
    given = value.get("type")
    if given not in DISTRIBUTIONS:
        hint = did_you_mean(given, DISTRIBUTIONS) if isinstance(given, str) else ""
        said = f"unknown distribution type {label(given)}" if given is not None else "no `type`"
        raise _problem(f"{said}.{hint} Distributions: {kinds}")
    return value


def _at_least_one(space: dict[str, Any]) -> dict[str, Any]:
    if not space:
        raise _problem("empty: name at least one spec path to search over")
    return space


def _problem(message: str) -> PydanticCustomError:
    # The message goes in through the context: a template would read braces in it as fields.
    return PydanticCustomError("spec_search", "{message}", {"message": message})


Distribution = Annotated[Union[FloatRange, IntRange, Choice], Field(discriminator="type"),
                         BeforeValidator(_known_distribution)]
#: Spec path -> distribution, as the spec's ``search`` section holds it.
SearchSpace = Annotated[dict[str, Distribution], AfterValidator(_at_least_one)]
DESCRIPTION = ("Hyperparameter search (`polymodal tune`): spec path (`training.lr`,"
               " `fusion.hidden`, `backbones.vision.model`) -> distribution.")
#: Range ends and choices a search may hold: each is checked by validating a whole spec.
MAX_CHECKED_VALUES = 1000
#: What trials may not vary: the metric they are compared by, and its direction.
FIXED = {"training.early_stopping.metric": "the metric trials are compared by",
         "training.early_stopping.mode": "the direction trials are compared in",
         "search": "the search itself"}


def label(choice: Any) -> str:
    """A choice written as compact JSON: in messages, and to tell choices apart."""
    return json.dumps(choice, separators=(", ", ": "), sort_keys=True)


def plain_data(spec: Any) -> dict[str, Any]:
    """What the spec's author wrote, as plain data (defaults left out), without ``search``:
    a trial's spec is this with the trial's values put in."""
    data = spec.model_dump(mode="json", exclude_unset=True)
    data.pop("search", None)
    # Parts a spec is built with whether written or not: left out where empty.
    for key in ("description", "fusion", "backbones"):
        if not data.get(key):
            data.pop(key, None)
    for each in data.get("inputs", {}).values():
        if each.get("backbone") is None:
            each.pop("backbone", None)
    return data


def put(data: Mapping[str, Any], path: str, value: Any) -> dict[str, Any]:
    """A deep copy of ``data`` with ``value`` at the dotted ``path`` (sections made as needed)."""
    out = copy.deepcopy(dict(data))
    node = out
    *parents, last = path.split(".")
    for part in parents:
        if not isinstance(node.get(part), dict):
            node[part] = {}
        node = node[part]
    node[last] = copy.deepcopy(value)
    return out


def search_problems(space: Mapping[str, _Distribution], spec: Any, data: Mapping[str, Any],
                    validate: Callable[[dict[str, Any]], Any]) -> list[tuple[str, str]]:
    """Where the search ``space`` of the validated ``spec`` (written as ``data``) names no option
    of the spec, or a value that makes no valid spec. ``validate`` validates spec data (raising
    SpecError), to try each end of a range and each choice."""
    problems: list[tuple[str, str]] = []
    values = sum(len(candidates(d)) for d in space.values())
    if values > MAX_CHECKED_VALUES:  # each is a spec validated: the time stays bounded
        return [("search", f"{values} values to check (range ends and choices); at most"
                           f" {MAX_CHECKED_VALUES}: give numbers as a float or int range")]
    base = {k: v for k, v in data.items() if k != "search"}
    for path, distribution in space.items():
        where = f"search.{path}"
        found = _path_problem(spec, path)
        if found:
            problems.append((where, found))
            continue
        for at, candidate in candidates(distribution):
            _try(validate, base, path, candidate, f"{where}{at}", problems)
    return problems + _overlaps(list(space))


def _overlaps(paths: list[str]) -> list[tuple[str, str]]:
    """A path inside another searched path (``fusion.hidden`` and ``fusion``) would be put in
    and then overwritten, or the other way round."""
    return [(f"search.{inner}", f"lies inside search.{outer}, which replaces all of {outer};"
                                 " search one or the other")
            for inner in paths for outer in paths if inner.startswith(outer + ".")]


def candidates(distribution: _Distribution) -> list[tuple[str, Any]]:
    """The values that stand for a distribution when it is checked: both ends of a range, each
    choice; with where each is written (``.low``, ``.choices[1]``)."""
    if isinstance(distribution, Choice):
        return [(f".choices[{i}]", c) for i, c in enumerate(distribution.choices)]
    assert isinstance(distribution, (FloatRange, IntRange))
    return [(".low", distribution.low), (".high", distribution.high)]


def _try(validate: Callable[[dict[str, Any]], Any], base: Mapping[str, Any], path: str,
         value: Any, where: str, problems: list[tuple[str, str]]) -> None:
    try:
        validate(put(base, path, value))
    except SpecError as exc:
        said = "; ".join(exc.problem_lines())
        if path.endswith(".type"):  # another component type rarely takes the same options
            component = path.removesuffix(".type")
            said = said.rstrip(".") + (
                ". To switch between components with options of their own, search over whole"
                f" components: `{component}: {{type: categorical, choices: [{{type: ..., ...}},"
                " {type: ..., ...}]}`")
        problems.append((where, f"{label(value)} does not make a valid spec: {said}"))


def _path_problem(spec: Any, path: str) -> str | None:
    """Why ``path`` names no option of ``spec``; None where it does."""
    if path in FIXED or path.split(".")[0] == "search":
        return f"{path} cannot be searched over: it is {FIXED.get(path, FIXED['search'])}"
    node: Any = spec
    walked: list[str] = []
    for part in path.split("."):
        here = ".".join(walked) or "the spec"
        if isinstance(node, BaseModel):
            fields = [f for f in type(node).model_fields if not (not walked and f == "search")]
            if part not in fields:
                return f"{here} has no option {part!r}.{did_you_mean(part, fields)}" \
                       f" Its options: {', '.join(fields)}"
            node = getattr(node, part)
        elif isinstance(node, Mapping):
            if part not in node:
                names = ", ".join(map(str, node)) or "none"
                return f"{here} has no entry {part!r}.{did_you_mean(part, map(str, node))}" \
                       f" Its entries: {names}"
            node = node[part]
        elif isinstance(node, str) and walked[-1:] == ["backbone"]:
            return f"{here} names the shared backbone {node!r}: search backbones.{node}" \
                   f"{path[len(here):]} instead"
        elif node is None:
            return f"{here} is not set in the spec, so it has no option {part!r}; set it first," \
                   " or search over the whole of it"
        else:
            return f"{here} is a value ({node!r}), not a section with options"
        walked.append(part)
    return None

"""Errors polymodal raises for bad input.

Every error a user can cause is a :class:`PolymodalError`; the CLI prints its message alone,
without a traceback. Messages name what is wrong, where (a spec path, a file, a plugin), and
the fix when one is known.
"""

from __future__ import annotations

import contextlib
import difflib
import io
import reprlib
import warnings
from collections.abc import Iterable, Iterator, Mapping
from itertools import islice
from typing import TYPE_CHECKING, Any, TypeGuard

if TYPE_CHECKING:
    from ._signals import Signal


class PolymodalError(Exception):
    """Base class of every error caused by input (specs, files, plugins, data)."""


class SpecError(PolymodalError):
    """A spec is malformed, names something unknown, or its parts do not connect.

    ``problems`` holds one ``(location, message)`` pair per problem; ``location`` is the dotted
    path inside the spec (``inputs.photo.adapter.channels``) or ``""`` for the whole spec. A plain
    message (``SpecError("...")``) is one problem without a location; raised by a component, it
    is reported at the component's spec path.
    """

    def __init__(self, problems: str | Iterable[tuple[str, str]], source: str | None = None):
        if isinstance(problems, str):
            problems = [("", problems)]
        elif _is_pair(problems):
            problems = [problems]  # one (location, message) pair
        self.problems: list[tuple[str, str]] = list(problems)
        self.source = source
        #: The exceptions the problems came from (a component's own errors), for ``--debug``.
        self.causes = [p.cause for p in self.problems
                       if isinstance(p, Problem) and p.cause is not None]
        super().__init__(self._render())

    def problem_lines(self) -> list[str]:
        """Each problem as ``location: message`` (the message alone without a location)."""
        return [f"{loc}: {msg}" if loc else msg for loc, msg in self.problems]

    def _render(self) -> str:
        prefix = f"{self.source}: " if self.source else ""
        lines = self.problem_lines()
        if len(lines) == 1:
            return prefix + lines[0]
        head = f"{prefix}{len(lines)} problems in the spec:"
        return "\n".join([head, *(f"  - {line}" for line in lines)])

    def with_source(self, source: str) -> SpecError:
        return SpecError(self.problems, source=source)


def _is_pair(problems: object) -> TypeGuard[tuple[str, str]]:
    """Whether ``problems`` is one ``(location, message)`` pair rather than a list of them."""
    return isinstance(problems, tuple) and len(problems) == 2 and all(
        isinstance(part, str) for part in problems)


class ConfigError(PolymodalError, ValueError):
    """A user mistake in a component's options, reported by the component itself.

    The one way a component says that the spec asks for something it cannot do, wherever
    polymodal calls it: its config's validators, ``gives``, ``fix_for``, ``stages``,
    ``conditions`` and ``codec``, its module's constructor and ``load_pretrained``. polymodal
    reports it at the component's spec path, extended by ``option`` when given::

        raise ConfigError("must be even", option="size")
        # inputs.photo.adapter.size: must be even

    It is a ``ValueError`` too, so pydantic validators may raise it like any ``ValueError``.
    """

    def __init__(self, message: str, option: str | None = None):
        self.message = message
        self.option = option
        super().__init__(f"{option}: {message}" if option else message)


class Problem(tuple[str, str]):
    """A ``(location, message)`` pair of a :class:`SpecError` that keeps the exception it came
    from, so ``--debug`` can show where a component raised it."""

    cause: BaseException | None

    def __new__(cls, location: str, message: str, cause: BaseException | None = None) -> Problem:
        problem = super().__new__(cls, (location, message))
        problem.cause = cause
        return problem


def spec_path(where: str, option: str | None) -> str:
    """``where`` extended by a relative ``option`` path (``size``, ``mean[1]``, ``a.b``)."""
    if not option:
        return where
    if not where:
        return option
    return where + option if option.startswith("[") else f"{where}.{option}"


def located(exc: PolymodalError, where: str) -> list[Problem]:
    """The spec problems a component's own error stands for, at the component's path ``where``:
    a :class:`ConfigError` at its option, a :class:`SpecError`'s problems where they say (those
    without a location at ``where``), any other error at ``where``."""
    if isinstance(exc, ConfigError):
        return [Problem(spec_path(where, exc.option), exc.message, exc)]
    if isinstance(exc, SpecError):
        return [Problem(loc or where, msg, exc) for loc, msg in exc.problems]
    return [Problem(where, str(exc), exc)]


def validator_problem(where: str, error: Mapping[str, Any]) -> tuple[str, str] | None:
    """A pydantic error (one of ``ValidationError.errors()``) that a :class:`ConfigError`
    raised in a validator caused, placed at ``where`` extended by its option; None for others."""
    cause = (error.get("ctx") or {}).get("error")
    if not isinstance(cause, ConfigError):
        return None
    return spec_path(where, cause.option), cause.message


class ConnectionMismatch(PolymodalError):
    """Raised by a component config whose input does not fit what it takes.

    ``wanted`` is the signal the consumer would accept, so that the producer upstream can
    suggest how to give it (``set project_to: 3``).
    """

    def __init__(self, message: str, wanted: Signal | None = None):
        self.wanted = wanted
        super().__init__(message)


class ComponentError(PolymodalError):
    """A component cannot be found, is ambiguous, or its plugin is broken."""


class ModelFileError(PolymodalError):
    """A model file is missing, not a safetensors file, not polymodal's, or does not match its spec."""


class DataError(PolymodalError):
    """A batch or table does not fit the model (missing input, wrong shape, bad value)."""


class DivergedError(PolymodalError):
    """Training went where no more can be learned: a loss that is not a finite number."""


class OutputError(PolymodalError):
    """An output (model file, predictions, run folder) cannot be written: the file system
    refuses, or another run is writing it."""


class OutputLockedError(OutputError):
    """Another running polymodal process holds the lock of an output."""


class CheckpointError(PolymodalError):
    """A training checkpoint cannot be resumed from: truncated, corrupt, or not polymodal's."""


class ExportError(PolymodalError):
    """A model cannot be exported (a component that does not export, a missing exporter), or
    an exported file cannot be used."""


def out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` says an allocation failed (host or GPU memory)."""
    return isinstance(exc, MemoryError) or (
        isinstance(exc, RuntimeError) and ("can't allocate memory" in str(exc)
                                           or "out of memory" in str(exc).lower()))


def first_line(exc: BaseException, limit: int | None = None) -> str:
    """The first line of an exception's message (its type's name when it has none), for a
    message of ours that quotes it; cut to ``limit`` characters when given."""
    line = (str(exc).strip() or type(exc).__name__).splitlines()[0]
    return line[:limit] if limit else line


def close_matches(word: str, candidates: Iterable[str], n: int = 3) -> list[str]:
    """Candidates that look like ``word`` (typos, case), best first."""
    pool = sorted(set(candidates))
    lowered = {c.lower(): c for c in pool}
    found = difflib.get_close_matches(word.lower(), list(lowered), n=n, cutoff=0.6)
    return [lowered[f] for f in found]


def did_you_mean(word: str, candidates: Iterable[str]) -> str:
    """`` Did you mean 'x'?`` (a sentence, to follow one) or an empty string."""
    matches = close_matches(word, candidates)
    if not matches:
        return ""
    return " Did you mean " + " or ".join(repr(m) for m in matches) + "?"


class _Excerpt(reprlib.Repr):
    """A bounded repr: nested and long values are cut short (a YAML alias bomb expands to
    millions of items; its repr would never end)."""

    def __init__(self) -> None:
        super().__init__()
        self.maxlevel, self.maxlist, self.maxdict, self.maxstring, self.maxother = 3, 6, 4, 60, 60

    def repr_dict(self, x: dict, level: int) -> str:  # reprlib's sorts every key first
        if not x:
            return "{}"
        if level <= 0:
            return "{...}"
        items = [f"{self.repr1(k, level - 1)}: {self.repr1(v, level - 1)}"
                 for k, v in islice(x.items(), self.maxdict)]
        return "{" + ", ".join(items) + (", ..." if len(x) > self.maxdict else "") + "}"

    def repr_int(self, x: int, level: int) -> str:
        if x.bit_length() > 200:  # repr of a huge int is slow, or refused
            return f"<an integer of {x.bit_length()} bits>"
        return super().repr_int(x, level)


_EXCERPT = _Excerpt()


def excerpt(value: Any, limit: int = 100) -> str:
    """``repr(value)``, bounded in length and in the work it takes."""
    return shorten(_EXCERPT.repr(value), limit)


def shorten(text: str, limit: int = 100) -> str:
    return text if len(text) <= limit else text[:limit - 3] + "..."


def exception_summary(exc: BaseException) -> str:
    """``Type: first line of the message``: an exception a library raised, in one line."""
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    return f"{type(exc).__name__}: {lines[0] if lines else ''}".rstrip(": ")


@contextlib.contextmanager
def silenced() -> Iterator[None]:
    """Whatever a library prints or warns while inside: exporters print progress, dump graphs
    that fail and warn about their internals, none of it the user's to act on (what failed is
    raised, and reported naming the component)."""
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), \
            contextlib.redirect_stderr(io.StringIO()):
        warnings.simplefilter("ignore")
        yield

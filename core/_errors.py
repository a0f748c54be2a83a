"""Errors polymodal raises for bad input.

Every error a user can cause is a :class:`PolymodalError`; the CLI prints its message alone,
without a traceback. Messages name what is wrong, where (a spec path, a file, a plugin), and
the fix when one is known.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class PolymodalError(Exception):
    """Base class of every error caused by input (specs, files, plugins, data)."""


class SpecError(PolymodalError):
    """A spec is malformed, names something unknown, or its parts do not connect.

    ``problems`` holds one ``(location, message)`` pair per problem; ``location`` is the dotted
    path inside the spec (``inputs.photo.adapter.channels``) or ``""`` for the whole spec.
    """

    def __init__(self, problems: Iterable[tuple[str, str]], source: str | None = None):
        self.problems = list(problems)
        self.source = source
        super().__init__(self._render())

    def _render(self) -> str:
        prefix = f"{self.source}: " if self.source else ""
        lines = [f"{loc}: {msg}" if loc else msg for loc, msg in self.problems]
        if len(lines) == 1:
            return prefix + lines[0]
        head = f"{prefix}{len(lines)} problems in the spec:"
        return "\n".join([head, *(f"  - {line}" for line in lines)])

    def with_source(self, source: str) -> SpecError:
        return SpecError(self.problems, source=source)


class ConnectionMismatch(PolymodalError):
    """Raised by a component config whose input does not fit what it takes.

    ``wanted`` is the signal the consumer would accept, so that the producer upstream can
    suggest how to give it (``set project_to: 3``).
    """

    def __init__(self, message: str, wanted: object | None = None):
        self.wanted = wanted
        super().__init__(message)


class ComponentError(PolymodalError):
    """A component cannot be found, is ambiguous, or its plugin is broken."""


class ModelFileError(PolymodalError):
    """A model file is missing, not a safetensors file, not polymodal's, or does not match its spec."""


class DataError(PolymodalError):
    """A batch or table does not fit the model (missing input, wrong shape, bad value)."""


class ExportError(PolymodalError):
    """A model cannot be exported (a component that does not export, a missing exporter), or
    an exported file cannot be used."""


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

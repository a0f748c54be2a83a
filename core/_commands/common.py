"""What several commands share: the bad-row choice, the component registry, a text table, a spec."""

from __future__ import annotations

from typing import Any

import click

#: ``--on-bad-row``: a row with a bad value stops the command, or is left out and reported.
BAD_ROW = click.Choice(["fail", "skip"])


def component_registry() -> Any:
    """The registry of installed components (imported on use: the CLI's import stays light)."""
    from .._registry import get_registry

    return get_registry()


def table(rows: list[list[str]], headers: list[str]) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(headers, *rows)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths)).rstrip()]
    lines += ["  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows]
    return "\n".join(lines)


def load_spec(path: str) -> Any:
    from .._spec import load_spec as read

    return read(path)

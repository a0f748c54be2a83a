"""The flags of ``train``, ``cv`` and ``tune`` that override a training option, made in one
place from one table: each flag is named after the ``training`` field it sets (``--batch-size``
sets ``batch_size``), and a test checks every entry against the spec's ``TrainingOptions``, so a
field cannot drift from its flag.

Kept free of pydantic and torch: the command line builds its options from it at start-up.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import click

#: The overridable ``training`` fields: the flag's type, and what its help adds after
#: "Override training.FIELD".
OVERRIDES: dict[str, tuple[Any, str]] = {
    "epochs": (int, ""),
    "batch_size": (int, ""),
    "lr": (float, ""),
    "seed": (int, ""),
    "device": (str, " (auto, cpu, cuda, cuda:N)"),
    "workers": (int, ""),
    "precision": (click.Choice(["auto", "fp32", "bf16", "fp16"]), ""),
    "channels_last": (click.Choice(["auto", "true", "false"]), ""),
}
#: Flags that set a ``training`` field with help of their own (not "Override ..."): ``train``'s
#: split options (``cv`` and ``tune`` take ``--group-by`` as a fold setting), and ``--track``,
#: which ``--track-uri`` and ``--experiment`` complete.
OWN_HELP = ("val_fraction", "group_by", "track")


def flag(field: str) -> str:
    return "--" + field.replace("_", "-")


def override_options(fields: tuple[str, ...],
                     notes: Mapping[str, str] | None = None) -> Callable[[Any], Any]:
    """Click options for the overrides of ``fields`` (in that order); ``notes`` replace what a
    field's help adds (``seed`` also draws the folds of ``cv``)."""
    def decorate(command: Any) -> Any:
        for field in reversed(fields):
            kind, added = OVERRIDES[field]
            added = (notes or {}).get(field, added)
            command = click.option(flag(field), field, type=kind,
                                   help=f"Override training.{field}{added}.")(command)
        return command
    return decorate


def overrides(values: Mapping[str, Any]) -> dict[str, Any]:
    """The override flags among a command's ``values``, by ``training`` field."""
    return {field: values[field] for field in OVERRIDES if field in values}

"""The flags of train, cv and tune that set a training option match the option they set."""

from __future__ import annotations

import click
import pytest

from polymodal._cli import cli
from polymodal._options import TrainingOptions
from polymodal._run_flags import OVERRIDES, OWN_HELP, flag

SAMPLES = {int: "3", float: "0.01", str: "cpu"}


@pytest.mark.parametrize("field", sorted(OVERRIDES))
def test_each_override_flag_sets_a_training_field_of_its_type(field):
    assert field in TrainingOptions.model_fields, f"{flag(field)} names no training option"
    kind, _ = OVERRIDES[field]
    if isinstance(kind, click.Choice):  # every choice is a value the field takes
        for choice in kind.choices:
            options = TrainingOptions.model_validate({field: choice})
            assert str(getattr(options, field)).lower() == choice
        return
    value = click.types.convert_type(kind).convert(SAMPLES[kind], None, None)
    options = TrainingOptions.model_validate({field: value})
    assert getattr(options, field) == value


def _values(annotation) -> set[str]:
    """Every value a field of ``annotation`` (Literal, bool, or a union of them) takes, as a
    command line spells it."""
    from typing import Literal, get_args, get_origin

    if annotation is bool:
        return {"true", "false"}
    if get_origin(annotation) is Literal:
        return {str(a).lower() for a in get_args(annotation)}
    return set().union(*(_values(a) for a in get_args(annotation)))


def test_a_choice_flag_offers_every_value_its_field_takes():
    for field, (kind, _) in OVERRIDES.items():
        if isinstance(kind, click.Choice):
            annotation = TrainingOptions.model_fields[field].annotation
            assert set(kind.choices) == _values(annotation), field


@pytest.mark.parametrize("command", ["train", "cv", "tune"])
def test_every_flag_named_after_a_training_field_comes_from_the_one_table(command):
    params = {p.name: p for p in cli.commands[command].params if isinstance(p, click.Option)}
    restating = {name for name in params if name in TrainingOptions.model_fields}
    assert restating - set(OWN_HELP) <= set(OVERRIDES)
    for name in restating & set(OVERRIDES):
        assert params[name].opts == [flag(name)]
        assert params[name].help.startswith(f"Override training.{name}")


def test_the_overrides_are_picked_from_a_commands_values_by_field():
    from polymodal._run_flags import overrides

    assert overrides({"epochs": 2, "batch_size": None, "quiet": True}) == {"epochs": 2,
                                                                         "batch_size": None}

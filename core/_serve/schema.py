"""The OpenAPI form of one model: Pydantic models made at start-up from its inputs and heads.

A column a codec reads files from takes ``{"base64": ..., "filename": ...}`` (or a path under
``--data-root``); a column with a fitted vocabulary lists its categories as an enum (a value
outside it is read as an unseen category, as ``predict`` does); a numerical column takes a
number; a classification head's answer lists its classes. The server reads bodies itself (to
bound them and word errors as the CLI does), so these models document the API: ``/docs`` shows
this model's form.
"""

from __future__ import annotations

import json
from typing import Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, create_model

from .predictor import Predictor

Policy = Literal["fail", "skip"]


class FileCell(BaseModel):
    """A file's bytes: PNG, JPEG, TIFF or ``.npy``."""

    base64: str = Field(description="The file's bytes, base64-encoded.")
    filename: Optional[str] = Field(None, description="Its name; the type is read from the bytes.")


def _column_type(predictor: Predictor, name: str, column: str) -> tuple[Any, str]:
    """The annotation and description of one column read by input ``name``."""
    codec = predictor.binding.input_codec(name)
    fitted = predictor.state["inputs"].get(name, {})
    if getattr(codec, "reads_files", False):
        expects = codec.expects(fitted)
        return (Union[FileCell, str, None],
                f"input {name!r}: the file's bytes, or (with --data-root) a path under it"
                + (f"; expects {json.dumps(expects)}" if expects else ""))
    vocabulary = (fitted.get("vocabularies") or {}).get(column)
    if vocabulary:
        return (Optional[Union[Literal[tuple(vocabulary)], str]],
                f"input {name!r}: a category ({len(vocabulary)} seen in training; others are"
                " read as unseen)")
    if column in (getattr(codec.config, "numerical", None) or ()):
        return Optional[float], f"input {name!r}: a number (null: missing)"
    return Optional[Union[float, str, bool]], f"input {name!r}"


def row_model(predictor: Predictor) -> type[BaseModel]:
    """One row of the model's inputs: a field per column it reads."""
    fields: dict[str, Any] = {}
    for bound in predictor.binding.inputs:
        for column in bound.codec.columns():
            annotation, description = _column_type(predictor, bound.name, column)
            fields[column] = (annotation, Field(None, description=description))
    return create_model(f"{_title(predictor)}Row", __config__=ConfigDict(extra="allow"), **fields)


def request_model(predictor: Predictor) -> type[BaseModel]:
    row = row_model(predictor)
    return create_model(
        f"{_title(predictor)}Request",
        rows=(list[row], Field(description="Rows to predict (column -> value), as a table's.")),  # type: ignore[valid-type]
        on_bad_row=(Policy, Field(
            "fail", description="fail: a bad row fails the request; skip: it is left out and"
            " listed")))


def response_model(predictor: Predictor) -> type[BaseModel]:
    heads: dict[str, Any] = {}
    for bound in predictor.binding.heads:
        classes = predictor.state["heads"].get(bound.name, {}).get("classes")
        fields: dict[str, Any] = {}
        if classes:
            fields[bound.name] = (Literal[tuple(classes)], Field(description="The predicted class."))
            for name in classes:
                fields[f"{bound.name}_prob_{name}"] = (float, Field(description=f"P({name})"))
        heads[bound.name] = (create_model(f"{_title(predictor)}Head_{bound.name}",
                                          __config__=ConfigDict(extra="allow"), **fields), ...)
    head_model = create_model(f"{_title(predictor)}Heads", **heads)
    predicted = create_model(
        f"{_title(predictor)}PredictedRow", row=(int, Field(description="The row, from 1.")),
        heads=(head_model, ...), inputs_used=(list[str], Field(description="Inputs the row held.")))
    skipped = create_model("SkippedRow", row=(Optional[int], None), column=(Optional[str], None),
                           message=(str, ...))
    batch = create_model("Batch", number=(int, ...), rows=(int, ...), requests=(int, ...))
    return create_model(f"{_title(predictor)}Response", request_id=(str, ...),
                        rows=(list[predicted], ...), skipped=(list[skipped], ...),
                        notes=(dict[str, int], Field(description="Oddities tolerated in the rows,"
                                                     " as predict reports them: how many rows")),
                        note_examples=(dict[str, list[Any]], Field(
                            description="A few values behind each note")),
                        batch=(batch, ...))


def _title(predictor: Predictor) -> str:
    name = "".join(part.capitalize() for part in str(predictor.spec.name).replace("-", "_").split("_"))
    return "".join(ch for ch in name if ch.isalnum()) or "Model"

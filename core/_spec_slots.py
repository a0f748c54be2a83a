"""The places of a spec that hold a component: validated by the installed component its `type`
names, and described in the JSON Schema by one branch per installed component."""

from __future__ import annotations

import weakref
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from pydantic import (
    ValidationError,
)
from pydantic_core import PydanticCustomError, core_schema

from ._components import (
    ComponentConfig,
)
from ._errors import (
    ComponentError,
    excerpt,
)
from ._registry import ComponentRecord, Registry, component_problems

if TYPE_CHECKING:
    pass

def config_class(record: ComponentRecord) -> type[ComponentConfig]:
    """The config class of a loaded component's ``record``."""
    assert record.cls is not None, "a spec model is made of loaded components only"
    return record.cls.Config


#: The error of a pass that loaded a plugin: the spec is validated again.
PLUGIN_LOADED = "spec_plugin_loaded"


def custom_problem(kind: str, message: str,
                   cause: BaseException | None = None) -> PydanticCustomError:
    """A validation error of our own ``kind`` whose message is ``message`` as written (the
    message goes in through the context: a template would read braces in it as fields); the
    exception a component raised, if it caused it, travels along for --debug and the
    conformance kit."""
    context: dict[str, Any] = {"message": message}
    if cause is not None:
        context["cause"] = cause
    return PydanticCustomError(kind, "{message}", context)


def a_kind(kind: str) -> str:
    return f"{'an' if kind[0] in 'aeiou' else 'a'} {kind}"


class ComponentSlot:
    """Pydantic annotation of a place in the spec that holds one component of ``kind``.

    Validation resolves ``type`` through the registry (short name or ``package:type``; an
    unknown one is a problem that names close matches and install hints), then validates the
    options with that component's own config. The JSON Schema has one ``if type is ... then
    <config>`` branch per component, its summary as the branch's description."""

    def __init__(self, kind: str, registry: Registry, records: Sequence[ComponentRecord]):
        self.kind = kind
        # Weak: the model made per registry is kept while its registry lives, not longer.
        self._registry = weakref.ref(registry)
        self.records = {rec.canonical: rec for rec in records}
        shorts = [rec.type for rec in records]
        # A short name two packages share is ambiguous: only the canonical ids stand for them.
        self.names = {rec.canonical: ([rec.type] if shorts.count(rec.type) == 1 else [])
                      + [rec.canonical] for rec in records}

    @property
    def registry(self) -> Registry:
        registry = self._registry()
        assert registry is not None, "a spec model outlived its registry"
        return registry

    def __get_pydantic_core_schema__(self, source: Any, handler: Any) -> core_schema.CoreSchema:
        if not self.records:  # nothing of this kind installed: every type is unknown
            return core_schema.no_info_plain_validator_function(self._resolve)
        choices: dict[str, core_schema.CoreSchema] = {
            canonical: core_schema.no_info_wrap_validator_function(
                self._branch(rec), handler.generate_schema(config_class(rec)))
            for canonical, rec in self.records.items()}
        union = core_schema.tagged_union_schema(choices, discriminator=self._tag)
        return core_schema.no_info_before_validator_function(self._resolve, union,
                                                             ref=f"polymodal-{self.kind}")

    def _resolve(self, value: Any) -> dict[str, Any]:
        """``value`` with its ``type`` replaced by the canonical id of the component it names."""
        if not isinstance(value, Mapping):
            raise custom_problem(
                "spec_component", f"{a_kind(self.kind)} is a mapping with a `type` and its options")
        name = value.get("type")
        if not isinstance(name, str) or not name:
            installed = ", ".join(sorted({r.type for r in self.registry.components(self.kind)}))
            missing = "missing" if name is None or name == "" else f"{excerpt(name)} is not a name"
            raise custom_problem("spec_type", f"{missing}: name the {self.kind} type, one of"
                                 f" {installed or 'none installed'}")
        try:
            record = self.registry.resolve(self.kind, name)
            if record.canonical not in self.records:
                # Listed by a manifest: its plugin is imported now that a spec names it, and the
                # spec is validated again by a model that has it (validate_spec_data).
                self.registry.load(record)
                raise custom_problem(PLUGIN_LOADED, f"{record.canonical} is loaded now")
        except ComponentError as exc:
            raise custom_problem("spec_type", str(exc)) from None
        return {**value, "type": record.canonical}

    def _tag(self, value: Any) -> str | None:
        if isinstance(value, Mapping):
            return value.get("type")
        return self.registry.record_for_config(type(value)).canonical

    def _branch(self, record: ComponentRecord):
        def validate(value: dict[str, Any], handler: Any) -> ComponentConfig:
            try:  # the config's `type` literal is the short name
                return handler({**value, "type": record.type})
            except (ValidationError, PydanticCustomError):
                raise
            except Exception as exc:  # noqa: BLE001 - a validator's own error (SpecError, TypeError, ...)
                problems = component_problems(exc, "", record, self.registry)
                said = "; ".join(f"{where}: {message}" if where else message
                                 for where, message in problems)
                raise custom_problem("spec_component", said, cause=exc) from None
        return validate

    def __get_pydantic_json_schema__(self, schema: Any, handler: Any) -> dict[str, Any]:
        if not self.records:
            return {"not": {}, "description": f"No {self.kind} is installed."}
        generated = handler(schema)
        union = handler.resolve_ref_schema(generated)
        if "oneOf" not in union:
            return generated  # a second place holding this kind: its definition is made
        branches = []
        # One branch a component, in the order of the union's choices (each its own config).
        for ref, (canonical, record) in zip(union.pop("oneOf"), self.records.items(), strict=True):
            names = self.names[canonical]
            config = handler.resolve_ref_schema(ref)
            config.update(title=f"{record.kind} {canonical}", description=record.summary)
            config["properties"]["type"] = {"enum": names, "description": record.summary}
            branches.append({"if": {"properties": {"type": {"enum": names}}, "required": ["type"]},
                             "then": ref})
        summaries = [self.records[c].summary for c, names in self.names.items() for _ in names]
        union.update({
            "type": "object",
            "description": f"A {self.kind}: `type` names the component, the other keys are its"
                           " options.",
            "properties": {"type": {
                "description": f"The {self.kind} type.",
                "enum": [name for names in self.names.values() for name in names],
                "enumDescriptions": summaries, "markdownEnumDescriptions": summaries}},
            "required": ["type"],
            "allOf": branches,
        })
        return generated



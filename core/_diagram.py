"""A model at a glance: the Mermaid flowchart of a spec.

Inputs -> adapters -> backbones (a shared backbone is one node) -> fusion(s) -> heads, with the
signal each connection carries as the edge label. A fusion that conditions a backbone (FiLM)
also has a dotted edge into that backbone naming the stages it modulates. Each node shows its
component's :meth:`~polymodal.plugin.ComponentConfig.describe` and the settings it lists in
:meth:`~polymodal.plugin.ComponentConfig.diagram_settings`. Markdown renderers that know Mermaid
(GitHub, many docs tools) draw it from a fenced ``mermaid`` block.

Node ids are a kind word and the escaped names of what the node stands for, so that no two
parts can share an id whatever the spec's names are (see :func:`node_id`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ._components import ComponentConfig
from ._spec import ModelSpec

if TYPE_CHECKING:
    from ._assembly import Plan

#: Node shapes by kind: Mermaid's opening and closing brackets.
SHAPES = {
    "in": ("[/", "/]"),
    "adapter": ("[", "]"),
    "backbone": ("[[", "]]"),  # a named backbone (from `backbones`), possibly shared
    "backboneof": ("[", "]"),  # an input's own inline backbone
    "fusion": ("{", "}"),
    "head": ("([", "])"),
}


def _escape(name: str) -> str:
    """``name`` with ``_`` as ``_0``, any other character that is not a letter (or a digit after
    the first character) as ``_1`` and six hex digits."""
    out = []
    for i, char in enumerate(name):
        if char.isascii() and (char.isalpha() or (char.isdigit() and i > 0)):
            out.append(char)
        elif char == "_":
            out.append("_0")
        else:
            out.append(f"_1{ord(char):06x}")
    return "".join(out)


def node_id(kind: str, *names: str) -> str:
    """The Mermaid id of a ``kind`` node (a word of letters) standing for ``names``.

    Each name follows a ``_``, escaped by :func:`_escape`. Read from the left, a ``_`` followed
    by ``0`` or ``1`` is an escape and any other ``_`` starts the next name (an escaped name
    never starts with a digit), so the kind and the names can be read back from the id: two
    different parts never share one. ``node_id("fusion", "a_b", "c")`` is ``fusion_a_0b_c``,
    ``node_id("fusion", "a", "b_c")`` is ``fusion_a_b_0c``."""
    if not kind.isascii() or not kind.isalpha():
        raise ValueError(f"a node kind is a word of letters, not {kind!r}")
    return kind + "".join("_" + _escape(name) for name in names)


def _label(text: str) -> str:
    # Mermaid labels are quoted; characters that would end the quote or start HTML inside it
    # are written as Mermaid entities.
    for char, entity in (("#", "#35;"), ('"', "#quot;"), ("<", "#lt;"), (">", "#gt;")):
        text = text.replace(char, entity)
    return '"' + text + '"'


def _lines(*lines: str) -> str:
    """A label of several lines: each escaped, joined by Mermaid's line break."""
    return '"' + "<br>".join(_label(line)[1:-1] for line in lines) + '"'


@dataclass
class _Chart:
    nodes: dict[str, str] = field(default_factory=dict)  # id -> its Mermaid line
    edges: list[str] = field(default_factory=list)

    def node(self, kind: str, names: Sequence[str], title: str,
             config: ComponentConfig | None = None) -> str:
        """The id of the node for ``names``, added on first use."""
        ident = node_id(kind, *names)
        if ident not in self.nodes:
            settings = config.diagram_settings() if config is not None else []
            opening, closing = SHAPES[kind]
            self.nodes[ident] = f"    {ident}{opening}{_lines(title, *settings)}{closing}"
        return ident

    def edge(self, source: str, target: str, *label: str, dotted: bool = False) -> None:
        """An arrow, labelled with ``label``'s lines if any; dotted for conditioning."""
        if not label:
            self.edges.append(f"    {source} --> {target}")
        elif dotted:
            self.edges.append(f"    {source} -. {_lines(*label)} .-> {target}")
        else:
            self.edges.append(f"    {source} -- {_lines(*label)} --> {target}")

    def text(self) -> str:
        return "\n".join(["flowchart LR", *self.nodes.values(), *self.edges]) + "\n"


def mermaid(spec: ModelSpec) -> str:
    """The flowchart of ``spec`` (Mermaid ``flowchart LR`` syntax), connections checked first."""
    from ._assembly import plan

    the_plan = plan(spec)
    chart = _Chart()
    feature_node: dict[str, str] = {}
    for name, inp in spec.inputs.items():
        source = chart.node("in", [name], name)
        adapter = chart.node("adapter", [name], f"adapter: {inp.adapter.describe()}", inp.adapter)
        chart.edge(source, adapter)
        feature_node[name] = adapter
        if isinstance(inp.backbone, str):  # a shared backbone is one module, so one node
            shared = spec.backbones[inp.backbone]
            feature_node[name] = chart.node(
                "backbone", [inp.backbone], f"backbone {inp.backbone}: {shared.describe()}", shared)
        elif inp.backbone is not None:
            feature_node[name] = chart.node(
                "backboneof", [name], f"backbone: {inp.backbone.describe()}", inp.backbone)
        if feature_node[name] != adapter:
            chart.edge(adapter, feature_node[name], the_plan.adapter_gives[name].describe())

    def features(name: str, signal_text: str) -> str:
        # A named backbone's edges say which input's features they carry.
        return f"{name}: {signal_text}" if isinstance(spec.inputs[name].backbone, str) else signal_text

    for inputs, heads in the_plan.heads_by_inputs.items():
        if spec.fusion is not None:
            source = chart.node("fusion", inputs, f"fusion: {spec.fusion.describe()}", spec.fusion)
            for name in inputs:
                chart.edge(feature_node[name], source,
                           features(name, the_plan.features[name].describe()))
            _conditioning(chart, spec, inputs, source, feature_node, the_plan)
            fused = the_plan.fused[inputs].describe()
        else:
            source = feature_node[inputs[0]]
            fused = features(inputs[0], the_plan.fused[inputs].describe())
        for head in heads:
            config = spec.heads[head]
            chart.edge(source, chart.node("head", [head], f"head {head}: {config.describe()}", config),
                       fused)
    return chart.text()


def _conditioning(chart: _Chart, spec: ModelSpec, inputs: tuple[str, ...], fusion: str,
                  feature_node: dict[str, str], the_plan: Plan) -> None:
    """Dotted edges from ``fusion`` into each backbone it conditions, naming the stages (and
    what they give) and the inputs the condition comes from (the other inputs of its set)."""
    assert spec.fusion is not None
    conditioned = spec.fusion.conditions(inputs)
    for target, stages in conditioned.items():
        signals = the_plan.fusion_takes[inputs].stages[target]
        sources = [n for n in inputs if n not in conditioned]
        lines = [f"conditions {target} from {', '.join(sources)}",
                 *(f"stage {s}: {signals[s].describe()}" for s in stages)]
        chart.edge(fusion, feature_node[target], *lines, dotted=True)

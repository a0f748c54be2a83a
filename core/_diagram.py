"""A model at a glance: the Mermaid flowchart of a spec.

Inputs -> adapters -> backbones (a shared backbone is one node) -> fusion(s) -> heads, with the
signal each connection carries as the edge label. Markdown renderers that know Mermaid (GitHub,
many docs tools) draw it from a fenced ``mermaid`` block.
"""

from __future__ import annotations

from ._spec import ModelSpec


def _label(text: str) -> str:
    # Mermaid labels are quoted; a double quote inside one is written as an entity.
    return '"' + text.replace('"', "#quot;") + '"'


def mermaid(spec: ModelSpec) -> str:
    """The flowchart of ``spec`` (Mermaid ``flowchart LR`` syntax), connections checked first."""
    from ._assembly import group_key, plan

    the_plan = plan(spec)
    nodes = ["flowchart LR"]
    edges: list[str] = []
    feature_node: dict[str, str] = {}
    drawn: set[str] = set()
    for name, inp in spec.inputs.items():
        nodes.append(f"    in_{name}[/{_label(name)}/]")
        nodes.append(f"    adapter_{name}[{_label(f'adapter: {inp.adapter.describe()}')}]")
        edges.append(f"    in_{name} --> adapter_{name}")
        given = _label(the_plan.adapter_gives[name].describe())
        if isinstance(inp.backbone, str):
            node = f"backbone_{inp.backbone}"
            if node not in drawn:  # a shared backbone is one module, so one node
                drawn.add(node)
                config = spec.backbones[inp.backbone]
                nodes.append(f"    {node}[[{_label(f'backbone {inp.backbone}: {config.describe()}')}]]")
            edges.append(f"    adapter_{name} -- {given} --> {node}")
        elif inp.backbone is not None:
            node = f"backbone_of_{name}"
            nodes.append(f"    {node}[{_label(f'backbone: {inp.backbone.describe()}')}]")
            edges.append(f"    adapter_{name} -- {given} --> {node}")
        else:
            node = f"adapter_{name}"
        feature_node[name] = node
    for inputs, heads in the_plan.groups.items():
        if spec.fusion is not None:
            fusion = f"fusion_{group_key(inputs).replace('+', '_')}"
            nodes.append(f"    {fusion}{{{_label(f'fusion: {spec.fusion.describe()}')}}}")
            for name in inputs:
                shared = feature_node[name] == f"backbone_{spec.inputs[name].backbone}"
                feature = _label((f"{name}: " if shared else "") + the_plan.features[name].describe())
                edges.append(f"    {feature_node[name]} -- {feature} --> {fusion}")
            source = fusion
            fused = _label(the_plan.fused[inputs].describe())
        else:
            source = feature_node[inputs[0]]
            # A shared backbone's edges must say which input's features they carry.
            shared = source == f"backbone_{spec.inputs[inputs[0]].backbone}"
            prefix = f"{inputs[0]}: " if shared else ""
            fused = _label(prefix + the_plan.fused[inputs].describe())
        for head in heads:
            nodes.append(f"    head_{head}([{_label(f'head {head}: {spec.heads[head].describe()}')}])")
            edges.append(f"    {source} -- {fused} --> head_{head}")
    return "\n".join(nodes + edges) + "\n"

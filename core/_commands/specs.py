"""Commands that take a spec: check it (``validate``) and build its model (``build``)."""

from __future__ import annotations

import click

from .common import load_spec


@click.command()
@click.argument("spec_path", metavar="SPEC", type=click.Path(dir_okay=False))
@click.option("--diagram", is_flag=True, help="Print the model as a Mermaid flowchart instead.")
def validate(spec_path: str, diagram: bool) -> None:
    """Check a spec, connections included; exit 0 or print what is wrong."""
    from .._assembly import plan
    from .._errors import SpecError

    spec = load_spec(spec_path)
    try:
        the_plan = plan(spec)
    except SpecError as exc:
        raise exc.with_source(spec_path) from None
    if diagram:
        from .._diagram import mermaid

        click.echo(mermaid(spec), nl=False)
        return
    from .._assembly import measured

    try:
        footprint = measured(spec)
    except SpecError as exc:
        raise exc.with_source(spec_path) from None
    click.echo(f"{spec_path}: ok ({len(spec.inputs)} input(s), {len(spec.heads)} head(s))")
    click.echo(f"  model: {footprint if isinstance(footprint, str) else footprint.describe()}")
    for name, signal in the_plan.features.items():
        click.echo(f"  input {name}: {signal.describe()}")
    for inputs, heads in the_plan.heads_by_inputs.items():
        click.echo(f"  heads {', '.join(heads)} <- {' + '.join(inputs)}: {the_plan.fused[inputs].describe()}")


@click.command()
@click.argument("spec_path", metavar="SPEC", type=click.Path(dir_okay=False))
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False),
              help="Model file to write (.safetensors).")
@click.option("--no-pretrained", is_flag=True, help="Skip loading pretrained weights.")
def build(spec_path: str, output: str, no_pretrained: bool) -> None:
    """Assemble the model a spec describes and save it as one model file."""
    from .._assembly import build as build_model
    from .._errors import SpecError
    from .._files import refuse_overwriting_inputs
    from .._modelfile import save
    from .._output_lock import output_lock

    refuse_overwriting_inputs(output, {"the spec": spec_path})
    spec = load_spec(spec_path)
    try:
        model = build_model(spec, pretrained=not no_pretrained)
    except SpecError as exc:
        raise exc.with_source(spec_path) from None
    with output_lock(output):  # a running train's model file is not replaced under it
        save(model, output)
    total = sum(p.numel() for p in model.parameters())
    click.echo(f"wrote {output} ({total:,} parameters)")

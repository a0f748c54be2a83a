"""What documents the installed components: the Markdown reference and the spec's JSON Schema."""

from __future__ import annotations

import json
from pathlib import Path

import click


@click.command()
@click.option("-o", "--output", required=True, type=click.Path(file_okay=False),
              help="Directory for the reference (index.md and one page a component).")
@click.option("--package", "packages", multiple=True,
              help="Only components of this package (repeatable); default: every installed one.")
def docs(output: str, packages: tuple[str, ...]) -> None:
    """Write the component reference (Markdown) of every installed component."""
    from .._docs import write_reference

    written = write_reference(Path(output), packages=set(packages) if packages else None)
    click.echo(f"wrote {len(written)} page(s) to {output}")


@click.command()
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="Write to a file.")
def schema(output: str | None) -> None:
    """JSON Schema of the spec, covering every installed component (for editors)."""
    from .._registry import get_registry
    from .._spec import spec_json_schema

    registry = get_registry()
    text = json.dumps(spec_json_schema(registry), indent=2)
    if output:
        from .._files import write_text

        write_text(output, text + "\n")
        click.echo(f"wrote {output}")
    else:
        click.echo(text)
    failures = registry.failures()
    if failures:  # their components are missing from the schema
        click.echo(f"{len(failures)} plugin(s) failed to load and are not in the schema; see"
                   " `polymodal plugins`.", err=True)

"""``polymodal list`` and ``polymodal show``: the components installed, read from the plugins'
manifests, and one component's options."""

from __future__ import annotations

import json

import click

from .._manifest import KINDS
from .common import component_registry, table


@click.command("list")
@click.option("--kind", type=click.Choice(KINDS), help="Only components of this kind.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def list_cmd(kind: str | None, as_json: bool) -> None:
    """Every available component: kind, type, plugin package, summary."""
    registry = component_registry()
    records = registry.components(kind)
    if as_json:
        click.echo(json.dumps([
            {"kind": r.kind, "type": r.type, "id": r.canonical, "package": r.package,
             "version": r.version, "summary": r.summary}
            for r in records
        ], indent=2))
        return
    duplicates = registry.duplicates()
    rows = [[r.kind, r.canonical if (r.kind, r.type) in duplicates else r.type,
             f"{r.package} {r.version}", r.summary] for r in records]
    click.echo(table(rows, ["KIND", "TYPE", "PACKAGE", "SUMMARY"]) if rows else "no components")
    failures = registry.failures()
    if failures:
        names = ", ".join(dict.fromkeys(f"{p.package} {p.version}" for p in failures))
        click.echo(f"\n{len(failures)} plugin(s) failed to load; see `polymodal plugins`"
                   f" ({names}).", err=True)


@click.command()
@click.argument("kind", type=click.Choice(KINDS))
@click.argument("type_name", metavar="TYPE")
@click.option("--json", "as_json", is_flag=True, help="The config's JSON Schema.")
def show(kind: str, type_name: str, as_json: bool) -> None:
    """One component: its options with types, defaults and descriptions."""
    from .._components import SchemaWithDefaults
    from .._docs import option_rows

    registry = component_registry()
    record = registry.resolve(kind, type_name)
    cls = registry.load(record)
    if as_json:
        click.echo(json.dumps(cls.Config.model_json_schema(schema_generator=SchemaWithDefaults),
                              indent=2))
        return
    click.echo(f"{kind} {record.canonical}  ({record.package} {record.version})")
    doc = (cls.__doc__ or "").strip()
    if doc:
        click.echo("")
        click.echo(_dedent(doc))
    rows = option_rows(cls.Config)
    click.echo("\nOptions:")
    if not rows:
        click.echo("  (none)")
    for row in rows:
        click.echo(f"  {row.name}: {row.type} = {row.default}{'  (required)' if row.required else ''}")
        if row.constraints:
            click.echo(f"      constraints: {row.constraints}")
        if row.description:
            click.echo(f"      {row.description}")


def _dedent(doc: str) -> str:
    import inspect

    return inspect.cleandoc(doc)

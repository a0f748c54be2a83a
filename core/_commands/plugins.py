"""The plugin packages: which are installed and how they fared (``polymodal plugins``), installing
and removing them, and the static manifest a distribution ships (``polymodal manifest``)."""

from __future__ import annotations

import json
from pathlib import Path

import click

from .common import component_registry


@click.command()
@click.option("--available", is_flag=True, help="Also list known plugin packages to install.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def plugins(available: bool, as_json: bool) -> None:
    """Installed plugins, their versions and components, and any that failed to load and why.

    Third-party plugins listed by a static manifest are imported here, so that one that fails
    to import or disagrees with its manifest shows as failed."""
    registry = component_registry()
    registry.verify()
    data = [
        {"entry_point": p.name, "package": p.package, "version": p.version, "module": p.value,
         "status": p.status, "error": p.error,
         "components": [f"{c.kind}:{c.type}" for c in p.components]}
        for p in registry.plugins
    ]
    installed = {p.package for p in registry.plugins}
    extras = [
        {"package": e.package, "requirement": e.requirement, "summary": e.summary,
         "components": [f"{k}:{t}" for k, t in e.components], "installed": e.package in installed}
        for e in registry.catalog.extras
    ]
    if as_json:
        click.echo(json.dumps({"plugins": data, **({"available": extras} if available else {})},
                              indent=2))
        return
    for p in data:
        state = "" if p["status"] in ("loaded", "lazy") else f"  [{p['status'].upper()}]"
        click.echo(f"{p['package']} {p['version']}  entry point {p['entry_point']!r} -> {p['module']}{state}")
        if p["components"]:
            click.echo(f"    provides: {', '.join(p['components'])}")
        if p["error"]:
            click.echo(f"    reason: {p['error']}")
    for (kind, type_name), recs in registry.duplicates().items():
        click.echo(f"\nconflict: {kind} {type_name!r} is provided by "
                   + " and ".join(f"{r.package} {r.version} (entry point {r.plugin!r})" for r in recs)
                   + "; the short name is ambiguous, specs must write "
                   + " or ".join(repr(r.canonical) for r in recs))
    if available:
        click.echo("\nAvailable plugin packages:")
        for e in extras:
            mark = " (installed)" if e["installed"] else ""
            click.echo(f"  {e['package']}{mark}: {e['summary']}")
            click.echo(f"      provides {', '.join(e['components'])};"
                       f" install: polymodal install {e['package']}")


@click.command()
@click.argument("distribution")
@click.option("-o", "--output", type=click.Path(dir_okay=False),
              help="Write to this file, keeping its leading comments and [[extra]] tables.")
def manifest(distribution: str, output: str | None) -> None:
    """The static manifest (polymodal.toml) of an installed plugin distribution.

    It imports the distribution's plugins and lists what they provide, so that `polymodal list`
    can read the file instead of importing them. `polymodal manifest polymodal -o registry.toml`
    regenerates the built-in entries of polymodal's catalog."""
    from .._files import write_text
    from .._manifest import merge_plugins, render_plugins
    from .._registry import plugin_entries

    text = render_plugins(*plugin_entries(distribution))
    if not output:
        click.echo(text, nl=False)
        return
    path = Path(output)
    existing = path.read_text(encoding="utf-8") if path.is_file() else ""
    write_text(path, merge_plugins(existing, text))
    click.echo(f"wrote {output}")


@click.command(context_settings={"ignore_unknown_options": True})
@click.argument("name")
@click.argument("pip_args", nargs=-1, type=click.UNPROCESSED)
def install(name: str, pip_args: tuple[str, ...]) -> None:
    """Install a plugin package into polymodal's environment (runs pip).

    NAME is a package from `polymodal plugins --available`, a requirement of one
    (`polymodal-signal>=0.2`), or a local wheel, sdist or project directory. Further arguments go
    to pip (e.g. `--no-index --find-links DIR`)."""
    from .._install import install_plugin

    for line in install_plugin(name, list(pip_args)):
        click.echo(line)


@click.command()
@click.argument("name")
def uninstall(name: str) -> None:
    """Uninstall a plugin package from polymodal's environment (runs pip)."""
    from .._install import uninstall_plugin

    for line in uninstall_plugin(name):
        click.echo(line)

"""Static manifests: the catalog matches the built-ins, and a third-party manifest keeps
listing free of plugin imports until a spec uses the plugin."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from ecosystem_helpers import GOOD_HEAD, REPO, builtin_entry_points, entry_points_in, make_distribution, run_polymodal

from polymodal._errors import ComponentError, SpecError
from polymodal._known_failures import KnownFailures
from polymodal._manifest import CATALOG_PATH, merge_plugins, parse_manifest, render_plugins
from polymodal._registry import Registry, plugin_entries
from polymodal._spec import validate_spec_data


def test_registry_toml_matches_what_the_built_in_plugins_register():
    current = CATALOG_PATH.read_text(encoding="utf-8")
    regenerated = merge_plugins(current, render_plugins(*plugin_entries("polymodal")))
    assert regenerated == current, "registry.toml is stale: run `make registry`"
    listed = parse_manifest(current, "registry.toml").plugins
    assert set(listed) == {ep.name for ep in builtin_entry_points()}


def test_manifest_regeneration_keeps_comments_and_extras():
    text = "# header\n\n[[plugin]]\nentry_point = \"old\"\n\n[[extra]]\npackage = \"x\"\n"
    merged = merge_plugins(text, "[[plugin]]\nentry_point = \"new\"\n")
    assert merged == "# header\n\n[[plugin]]\nentry_point = \"new\"\n\n[[extra]]\npackage = \"x\"\n"
    assert merge_plugins("", "[[plugin]]\n") == "[[plugin]]\n"


MARKED = 'import os, pathlib\npathlib.Path(os.environ["MARKER"]).write_text("imported")\n'
MANIFEST = """
[[plugin]]
entry_point = "twice"
api = 2

[[plugin.component]]
kind = "head"
type = "twice"
target = "lazy_heads.plugin:Twice"
summary = "Predicts one value from twice its input (a test plugin)."
"""


def _lazy_distribution(site):
    make_distribution(site, "lazy-heads", "0.4", {"twice": "lazy_heads.plugin"}, {
        "lazy_heads/__init__.py": MARKED,
        "lazy_heads/plugin.py": GOOD_HEAD.format(type="twice"),
        "lazy_heads/polymodal.toml": MANIFEST,
    })


def test_listing_a_plugin_with_a_manifest_imports_none_of_its_code(site, tmp_path):
    _lazy_distribution(site)
    marker = tmp_path / "marker"
    env = {"MARKER": str(marker), "XDG_CACHE_HOME": str(tmp_path / "cache")}
    listing = run_polymodal("list", "--json", pythonpath=site, env=env)
    assert listing.returncode == 0, listing.stderr
    (twice,) = [c for c in json.loads(listing.stdout) if c["type"] == "twice"]
    assert (twice["package"], twice["version"], twice["kind"]) == ("lazy-heads", "0.4", "head")
    assert twice["summary"] == "Predicts one value from twice its input (a test plugin)."

    unrelated = tmp_path / "unrelated.json"
    unrelated.write_text(json.dumps({"inputs": {"x": {"adapter": {"type": "tabular", "numerical": ["a"]}}},
                                     "heads": {"y": {"type": "regression"}}}))
    assert run_polymodal("validate", str(unrelated), pythonpath=site, env=env).returncode == 0
    assert not marker.exists()

    using = tmp_path / "using.json"
    using.write_text(json.dumps({"inputs": {"x": {"adapter": {"type": "tabular", "numerical": ["a"]}}},
                                 "heads": {"y": {"type": "twice"}}}))
    result = run_polymodal("validate", str(using), pythonpath=site, env=env)
    assert result.returncode == 0, result.stderr
    assert marker.exists()


def test_polymodal_plugins_imports_a_third_party_plugin_to_check_it(site, tmp_path):
    _lazy_distribution(site)
    marker = tmp_path / "marker"
    env = {"MARKER": str(marker), "XDG_CACHE_HOME": str(tmp_path / "cache")}
    result = run_polymodal("plugins", "--json", pythonpath=site, env=env)
    assert result.returncode == 0, result.stderr
    (lazy,) = [p for p in json.loads(result.stdout)["plugins"] if p["package"] == "lazy-heads"]
    assert (lazy["status"], lazy["components"]) == ("loaded", ["head:twice"])
    assert marker.exists()


def _manifest_with(site, *types: str) -> Path:
    """Rewrite lazy-heads' manifest to list head types ``types`` (the plugin provides 'twice')."""
    blocks = [MANIFEST.split("\n\n", 1)[0]] + [
        MANIFEST.split("\n\n", 1)[1].replace('"twice"', f'"{t}"') for t in types]
    manifest = site / "lazy_heads" / "polymodal.toml"
    manifest.write_text("\n".join(blocks))
    return manifest


def test_a_manifest_that_promises_more_than_the_plugin_gives_fails_on_use(site, tmp_path, monkeypatch):
    monkeypatch.setenv("MARKER", str(tmp_path / "marker"))
    _lazy_distribution(site)
    manifest = _manifest_with(site, "twice", "thrice")
    registry = Registry(entry_points=entry_points_in(site))
    assert {c.type for c in registry.components()} == {"twice", "thrice"}
    with pytest.raises(ComponentError) as caught:
        registry.load(registry.resolve("head", "twice"))
    (plugin,) = registry.plugins
    assert plugin.status == "failed" and registry.components() == []
    assert plugin.error == ("its manifest lists head 'thrice' but the plugin does not provide it;"
                            f" regenerate the manifest: polymodal manifest lazy-heads -o {manifest}")
    assert f"head 'lazy-heads:twice' cannot be used: plugin {plugin.label} failed to load:" \
        f" {plugin.error}" == str(caught.value)


def test_a_manifest_that_lists_less_than_the_plugin_gives_fails_on_use(site, tmp_path, monkeypatch):
    monkeypatch.setenv("MARKER", str(tmp_path / "marker"))
    _lazy_distribution(site)
    manifest = _manifest_with(site, "once")
    registry = Registry(entry_points=builtin_entry_points() + entry_points_in(site))
    with pytest.raises(SpecError) as caught:
        validate_spec_data({**SPEC, "heads": {"y": {"type": "once"}}}, registry)
    (plugin,) = [p for p in registry.plugins if p.package == "lazy-heads"]
    assert plugin.status == "failed"
    assert plugin.error == (
        "its manifest lists head 'once' but the plugin does not provide it; the plugin provides"
        " head 'twice' but its manifest does not list it; regenerate the manifest: polymodal"
        f" manifest lazy-heads -o {manifest}")
    message = str(caught.value)
    assert message.startswith("heads.y.type: unknown head type 'once'. Plugin lazy-heads 0.4")
    assert "would provide it but is failed" in message and "regenerate the manifest" in message


def test_a_manifest_listing_no_component_of_a_plugin_that_gives_one_fails(site, tmp_path, monkeypatch):
    monkeypatch.setenv("MARKER", str(tmp_path / "marker"))
    _lazy_distribution(site)
    _manifest_with(site)
    registry = Registry(entry_points=entry_points_in(site))
    registry.load_all()
    (plugin,) = registry.plugins
    assert plugin.status == "failed"
    assert plugin.error.startswith("the plugin provides head 'twice' but its manifest does not list it")


SPEC = {"inputs": {"x": {"adapter": {"type": "tabular", "numerical": ["a"]}}},
        "heads": {"y": {"type": "twice"}}}

THRICE = """

class Thrice(Twice):
    \"\"\"Predicts one value from twice its input (another test head).\"\"\"

    class Config(HeadConfig):
        type: Literal["thrice"] = "thrice"


@polymodal.plugin.hookimpl(specname="polymodal_components")
def more_components():
    return [Thrice]
"""


def test_a_disagreeing_manifest_shows_in_plugins_then_in_list_until_fixed(site, tmp_path):
    _lazy_distribution(site)
    manifest = _manifest_with(site, "twice", "thrice")
    env = {"MARKER": str(tmp_path / "marker"), "XDG_CACHE_HOME": str(tmp_path / "cache")}

    # Nothing is known before the plugin is imported: listing imports no plugin code.
    listing = run_polymodal("list", "--kind", "head", pythonpath=site, env=env)
    assert "thrice" in listing.stdout and "failed" not in listing.stderr

    plugins = run_polymodal("plugins", pythonpath=site, env=env)
    assert plugins.returncode == 0, plugins.stderr
    assert "lazy-heads 0.4  entry point 'twice' -> lazy_heads.plugin  [FAILED]" in plugins.stdout
    assert ("reason: its manifest lists head 'thrice' but the plugin does not provide it;"
            f" regenerate the manifest: polymodal manifest lazy-heads -o {manifest}") in plugins.stdout

    # Known now: listing shows the plugin failed, and a spec using it says why.
    listing = run_polymodal("list", "--kind", "head", pythonpath=site, env=env)
    assert listing.returncode == 0
    assert "twice" not in listing.stdout and "classification" in listing.stdout
    assert ("1 plugin(s) failed to load; see `polymodal plugins` (lazy-heads 0.4)."
            in listing.stderr)
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps(SPEC))
    used = run_polymodal("validate", str(spec), pythonpath=site, env=env)
    assert used.returncode == 1 and "Traceback" not in used.stderr
    assert used.stderr.startswith(f"error: {spec}: heads.y.type: unknown head type 'twice'.")
    assert ("would provide it but is failed: its manifest lists head 'thrice' but the plugin does"
            " not provide it") in used.stderr
    assert "(found when polymodal last imported it)" in used.stderr

    # A fixed manifest is a different plugin: the remembered reason no longer applies.
    _manifest_with(site, "twice")
    listing = run_polymodal("list", "--kind", "head", pythonpath=site, env=env)
    assert "twice" in listing.stdout and "failed" not in listing.stderr
    assert run_polymodal("validate", str(spec), pythonpath=site, env=env).returncode == 0


def test_a_disagreement_found_by_a_spec_shows_in_the_next_listing(site, tmp_path):
    _lazy_distribution(site)
    _manifest_with(site, "twice", "thrice")
    env = {"MARKER": str(tmp_path / "marker"), "XDG_CACHE_HOME": str(tmp_path / "cache")}
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps(SPEC))
    used = run_polymodal("validate", str(spec), pythonpath=site, env=env)
    assert used.returncode == 1
    assert "heads.y.type: unknown head type 'twice'. Plugin lazy-heads 0.4" in used.stderr
    assert "would provide it but is failed" in used.stderr
    assert "its manifest lists head 'thrice' but the plugin does not provide it" in used.stderr
    listing = run_polymodal("list", pythonpath=site, env=env)
    assert "thrice" not in listing.stdout
    assert "see `polymodal plugins` (lazy-heads 0.4)" in listing.stderr


def test_a_remembered_failure_holds_for_the_same_files_only(site, tmp_path, monkeypatch):
    marker = tmp_path / "marker"
    monkeypatch.setenv("MARKER", str(marker))
    _lazy_distribution(site)
    _manifest_with(site, "twice", "thrice")
    known = tmp_path / "known.json"
    first = Registry(entry_points=entry_points_in(site), known_failures=KnownFailures(known))
    first.load_all()
    assert first.plugins[0].status == "failed" and known.exists()
    marker.unlink()

    again = Registry(entry_points=entry_points_in(site), known_failures=KnownFailures(known))
    (plugin,) = again.plugins
    assert plugin.status == "failed" and not marker.exists()
    assert plugin.error.endswith("does not provide it; regenerate the manifest: polymodal manifest"
                                 f" lazy-heads -o {site / 'lazy_heads' / 'polymodal.toml'}"
                                 " (found when polymodal last imported it)")
    with pytest.raises(ComponentError, match="would provide it but is failed"):
        again.resolve("head", "twice")

    # The plugin's code changes (here: it gains the promised head): it is checked afresh.
    (site / "lazy_heads" / "plugin.py").write_text(GOOD_HEAD.format(type="twice") + THRICE)
    for name in [n for n in sys.modules if n.startswith("lazy_heads")]:
        del sys.modules[name]
    fixed = Registry(entry_points=entry_points_in(site), known_failures=KnownFailures(known))
    assert fixed.plugins[0].status == "lazy"
    assert {r.type for r in fixed.load_all()} == {"twice", "thrice"}
    assert json.loads(known.read_text()) == {}  # a plugin that loads is forgotten


def test_verify_checks_a_remembered_failure_again(site, tmp_path, monkeypatch):
    monkeypatch.setenv("MARKER", str(tmp_path / "marker"))
    _lazy_distribution(site)
    known = KnownFailures(tmp_path / "known.json")
    known.record("lazy-heads:twice", "another fingerprint", "an old reason")
    registry = Registry(entry_points=entry_points_in(site), known_failures=known)
    assert registry.plugins[0].status == "lazy"  # recorded for other files: not used
    assert registry.verify() == [] and registry.plugins[0].status == "loaded"
    assert json.loads((tmp_path / "known.json").read_text()) == {}


def test_the_manifest_api_counts_when_the_module_declares_none(site, tmp_path, monkeypatch):
    monkeypatch.setenv("MARKER", str(tmp_path / "marker"))
    _lazy_distribution(site)
    module = site / "lazy_heads" / "plugin.py"
    module.write_text(module.read_text().replace("POLYMODAL_PLUGIN_API = 2", ""))
    registry = Registry(entry_points=entry_points_in(site))
    assert [r.type for r in registry.load_all()] == ["twice"]
    assert registry.plugins[0].api == 2

    (site / "lazy_heads" / "polymodal.toml").write_text(MANIFEST.replace("api = 2\n", ""))
    registry = Registry(entry_points=entry_points_in(site))
    registry.load_all()
    (plugin,) = registry.plugins
    assert plugin.status == "failed"
    assert plugin.error.startswith("declares no plugin API version: a plugin for this polymodal"
                                   " (plugin API 2) declares `POLYMODAL_PLUGIN_API = 2` in its"
                                   " module lazy_heads.plugin (or `api = 2` in its manifest)")


def test_a_module_and_manifest_stating_different_apis_are_refused(site, tmp_path, monkeypatch):
    monkeypatch.setenv("MARKER", str(tmp_path / "marker"))
    _lazy_distribution(site)
    module = site / "lazy_heads" / "plugin.py"
    module.write_text(module.read_text().replace("POLYMODAL_PLUGIN_API = 2", "POLYMODAL_PLUGIN_API = 1"))
    registry = Registry(entry_points=entry_points_in(site))
    registry.load_all()
    (plugin,) = registry.plugins
    assert plugin.status == "failed"
    assert plugin.error.startswith("its module declares POLYMODAL_PLUGIN_API = 1 but its manifest"
                                   " states api = 2; regenerate the manifest: polymodal manifest"
                                   " lazy-heads -o ")


def test_a_manifest_for_another_plugin_api_is_reported_without_importing(site, tmp_path, monkeypatch):
    marker = tmp_path / "marker"
    monkeypatch.setenv("MARKER", str(marker))
    _lazy_distribution(site)
    manifest = site / "lazy_heads" / "polymodal.toml"
    manifest.write_text(MANIFEST.replace("api = 2", "api = 7"))
    registry = Registry(entry_points=entry_points_in(site))
    (plugin,) = registry.plugins
    assert (plugin.status, plugin.api) == ("failed", 7)
    assert plugin.error.startswith("written for plugin API 7, but this polymodal provides plugin"
                                   " API 2. Upgrade polymodal")
    assert not marker.exists()


def test_a_broken_manifest_is_reported_not_raised(site):
    make_distribution(site, "bad-manifest", "1.0", {"main": "bad_manifest"}, {
        "bad_manifest/__init__.py": "",
        "bad_manifest/polymodal.toml": "[[plugin]]\nentry_point = \"main\"\n[[plugin.component]]\nkind = \"widget\"\n"
                                       "type = \"x\"\ntarget = \"a:b\"\n",
    })
    registry = Registry(entry_points=entry_points_in(site))
    (plugin,) = registry.plugins
    assert plugin.status == "failed"
    assert "polymodal.toml: plugin[0].component[0].kind: 'widget' is not one of" in plugin.error


def test_manifest_command_writes_a_third_party_manifest(site, tmp_path):
    _lazy_distribution(site)
    (site / "lazy_heads" / "polymodal.toml").unlink()
    out = tmp_path / "polymodal.toml"
    result = run_polymodal("manifest", "lazy-heads", "-o", str(out), pythonpath=site,
                           env={"MARKER": str(tmp_path / "marker")})
    assert result.returncode == 0, result.stderr
    assert parse_manifest(out.read_text(), "x") == parse_manifest(MANIFEST, "x")
    missing = run_polymodal("manifest", "no-such-dist", pythonpath=site)
    assert missing.returncode == 1
    assert missing.stderr.strip() == "error: distribution 'no-such-dist' is not installed"


def test_repository_catalog_is_the_packaged_one():
    assert CATALOG_PATH.resolve() == (REPO / "registry.toml").resolve()

"""Static manifests: the catalog matches the built-ins, and a third-party manifest keeps
listing free of plugin imports until a spec uses the plugin."""

from __future__ import annotations

import json

from ecosystem_helpers import GOOD_HEAD, REPO, builtin_entry_points, entry_points_in, make_distribution, run_polymodal

from polymodal._manifest import CATALOG_PATH, merge_plugins, parse_manifest, render_plugins
from polymodal._registry import Registry, plugin_entries


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
    env = {"MARKER": str(marker)}
    listing = run_polymodal("list", "--json", pythonpath=site, env=env)
    assert listing.returncode == 0, listing.stderr
    (twice,) = [c for c in json.loads(listing.stdout) if c["type"] == "twice"]
    assert (twice["package"], twice["version"], twice["kind"]) == ("lazy-heads", "0.4", "head")
    assert twice["summary"] == "Predicts one value from twice its input (a test plugin)."
    assert run_polymodal("plugins", pythonpath=site, env=env).returncode == 0
    assert not marker.exists()

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


def test_a_manifest_that_promises_more_than_the_plugin_gives_fails_on_use(site, tmp_path, monkeypatch):
    monkeypatch.setenv("MARKER", str(tmp_path / "marker"))
    _lazy_distribution(site)
    manifest = site / "lazy_heads" / "polymodal.toml"
    manifest.write_text(MANIFEST + MANIFEST.split("\n\n", 1)[1].replace('"twice"', '"thrice"'))
    registry = Registry(entry_points=entry_points_in(site))
    assert {c.type for c in registry.components()} == {"twice", "thrice"}
    registry.load_all()
    (plugin,) = registry.plugins
    assert plugin.status == "failed"
    assert plugin.error == "its manifest lists head 'thrice' but the plugin does not provide it"


def test_a_manifest_for_another_plugin_api_is_reported_without_importing(site, tmp_path, monkeypatch):
    marker = tmp_path / "marker"
    monkeypatch.setenv("MARKER", str(marker))
    _lazy_distribution(site)
    manifest = site / "lazy_heads" / "polymodal.toml"
    manifest.write_text(MANIFEST.replace("api = 2", "api = 7"))
    registry = Registry(entry_points=entry_points_in(site))
    (plugin,) = registry.plugins
    assert (plugin.status, plugin.api) == ("failed", 7)
    assert plugin.error.startswith("built for plugin API 7; this polymodal provides API 2")
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

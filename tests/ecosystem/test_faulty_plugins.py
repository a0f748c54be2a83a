"""Faulty plugins are reported with their package, version, entry point and reason, and never
break specs that do not use them, wherever they sit among the good ones."""

from __future__ import annotations

import json

import pytest
from ecosystem_helpers import GOOD_HEAD, builtin_entry_points, entry_points_in, make_distribution, run_polymodal

import polymodal
import polymodal._install
from polymodal._cli import main
from polymodal._errors import ComponentError, SpecError
from polymodal._registry import Registry, reset_registry
from polymodal._spec import load_spec, validate_spec_data

SPEC = {  # uses built-ins only
    "inputs": {"x": {"adapter": {"type": "tabular", "numerical": ["a", "b"]}}},
    "heads": {"y": {"type": "regression"}},
}

API = "        POLYMODAL_PLUGIN_API = 2\n"  # indented like the modules below

FAULTS = {
    # package: (entry point value, files, words the reason must contain)
    "raises-on-import": ("raises_on_import", {"raises_on_import.py": "raise RuntimeError('no GPU driver found')\n"},
                         ["import failed", "RuntimeError", "no GPU driver found", "raises_on_import.py"]),
    "returns-non-component": ("returns_non_component", {"returns_non_component.py": API + """
        import polymodal

        @polymodal.plugin.hookimpl
        def polymodal_components():
            return [dict]
        """}, ["not a component class", "dict"]),
    "returns-not-a-list": ("returns_not_a_list", {"returns_not_a_list.py": API + """
        import polymodal

        @polymodal.plugin.hookimpl
        def polymodal_components():
            return "head"
        """}, ["returned str, not a list of component classes"]),
    "invalid-config": ("invalid_config", {"invalid_config.py": API + """
        import polymodal
        from polymodal.plugin import Head, HeadConfig

        class Untyped(Head):
            class Config(HeadConfig):
                type: str = "untyped"

        @polymodal.plugin.hookimpl
        def polymodal_components():
            return [Untyped]
        """}, ["Untyped.Config needs `type: Literal"]),
    "invalid-default": ("invalid_default", {"invalid_default.py": API + """
        from typing import Literal

        from pydantic import Field

        from polymodal.plugin import Head, HeadConfig, hookimpl

        class Sized(Head):
            class Config(HeadConfig):
                type: Literal["sized"] = "sized"
                size: int = Field(-3, gt=0, description="Outputs.")
                widths: list[int] = Field(default_factory=lambda: [8, 0])

        @hookimpl
        def polymodal_components():
            return [Sized]
        """}, ["Sized.Config (head 'sized')", "the default of option 'size' (-3) is invalid: Input"
               " should be greater than 0", "change the default or the option's constraints"]),
    "no-hook": ("no_hook", {"no_hook.py": "POLYMODAL_PLUGIN_API = 2\nCOMPONENTS = []\n"},
                ["implements no polymodal_components() hook"]),
    "exits-on-import": ("exits_on_import", {"exits_on_import.py": "import sys\nsys.exit(3)\n"},
                        ["import failed: SystemExit: 3"]),
    "hook-raises": ("hook_raises", {"hook_raises.py": """
        import polymodal

        @polymodal.plugin.hookimpl
        def polymodal_components():
            raise KeyError("weights table")
""" + API}, ["KeyError: 'weights table'", "hook_raises.py:5"]),
    "future-api": ("future_api", {"future_api.py": GOOD_HEAD.format(type="future").replace(
        "POLYMODAL_PLUGIN_API = 2", "POLYMODAL_PLUGIN_API = 99")},
        ["written for plugin API 99, but this polymodal provides plugin API 2.",
         "Upgrade polymodal (pip install -U polymodal), or install a release of future-api made"
         " for plugin API 2."]),
    # Plugins written for plugin API 1, however they show it.
    "declares-api-one": ("declares_api_one", {"declares_api_one.py": GOOD_HEAD.format(type="one").replace(
        "POLYMODAL_PLUGIN_API = 2", "POLYMODAL_PLUGIN_API = 1")},
        ["written for plugin API 1, but this polymodal provides plugin API 2; since plugin API 1,",
         "moved to the one module `polymodal.plugin`",
         "Install a release of declares-api-one made for plugin API 2."]),
    "imports-head-from-polymodal": ("old_imports", {"old_imports.py": """
        from polymodal import Head, HeadConfig
        """}, ["written for plugin API 1, but this polymodal provides plugin API 2; since plugin"
               " API 1,", "It imports Head from `polymodal` instead of `polymodal.plugin`",
               "ImportError: cannot import name 'Head' from 'polymodal'", "old_imports.py:1"]),
    "uses-polymodal-hookimpl": ("old_hookimpl", {"old_hookimpl.py": """
        import polymodal

        @polymodal.hookimpl
        def polymodal_components():
            return []
        """}, ["written for plugin API 1", "It uses polymodal.hookimpl (import failed:"
               " AttributeError", "old_hookimpl.py:3"]),
    "imports-old-module": ("old_module", {"old_module.py": """
        from polymodal.signals import Vector
        """}, ["written for plugin API 1", "It imports the module polymodal.signals, which plugin"
               " API 2 made private", "ModuleNotFoundError"]),
    "declares-no-api": ("declares_no_api", {"declares_no_api.py": GOOD_HEAD.format(type="undeclared").replace(
        "POLYMODAL_PLUGIN_API = 2", "")},
        ["declares no plugin API version: a plugin for this polymodal (plugin API 2) declares"
         " `POLYMODAL_PLUGIN_API = 2` in its module declares_no_api", "If it was written for"
         " plugin API 1"]),
    "api-not-a-number": ("api_text", {"api_text.py": GOOD_HEAD.format(type="text").replace(
        "POLYMODAL_PLUGIN_API = 2", "POLYMODAL_PLUGIN_API = '2'")},
        ["POLYMODAL_PLUGIN_API must be the plugin API version as an integer"
         " (POLYMODAL_PLUGIN_API = 2), not '2'"]),
}


def _write_faults(site):
    for package, (module, files, _) in FAULTS.items():
        make_distribution(site, package, "2.3", {"main": module}, files)


@pytest.mark.parametrize("position", ["before", "after"])
def test_each_fault_is_recorded_and_built_in_specs_still_work(site, position):
    _write_faults(site)
    make_distribution(site, "good-head", "1.0", {"twice": "good_head"},
                      {"good_head.py": GOOD_HEAD.format(type="twice")})
    faulty = [ep for ep in entry_points_in(site) if ep.dist.metadata["Name"] != "good-head"]
    good = [ep for ep in entry_points_in(site) if ep.dist.metadata["Name"] == "good-head"]
    builtins = builtin_entry_points()
    order = faulty + builtins + good if position == "before" else builtins + good + faulty
    registry = Registry(entry_points=order)
    registry.load_all()

    failed = {p.package: p for p in registry.failures()}
    assert set(failed) == set(FAULTS)
    for package, (module, _, words) in FAULTS.items():
        plugin = failed[package]
        assert (plugin.version, plugin.name, plugin.value) == ("2.3", "main", module)
        for word in words:
            assert word in plugin.error, (package, plugin.error)
        assert plugin.components == []

    assert validate_spec_data(SPEC, registry).heads["y"].type == "regression"
    with_good = {**SPEC, "heads": {"y": {"type": "twice"}}}
    assert validate_spec_data(with_good, registry).heads["y"].type == "twice"


def test_a_spec_needing_a_failed_plugin_says_why(site):
    _write_faults(site)
    registry = Registry(entry_points=entry_points_in(site) + builtin_entry_points())
    spec = {**SPEC, "heads": {"y": {"type": "future-api:future"}}}
    with pytest.raises(SpecError) as caught:
        validate_spec_data(spec, registry)
    message = str(caught.value)
    assert "heads.y.type" in message
    assert "future-api 2.3" in message and "written for plugin API 99" in message


def test_polymodal_plugins_reports_every_fault_and_validate_still_works(site, tmp_path):
    _write_faults(site)
    result = run_polymodal("plugins", "--json", pythonpath=site)
    assert result.returncode == 0, result.stderr
    plugins = {p["package"]: p for p in json.loads(result.stdout)["plugins"]}
    for package, (module, _, words) in FAULTS.items():
        entry = plugins[package]
        assert (entry["status"], entry["version"], entry["entry_point"], entry["module"]) == (
            "failed", "2.3", "main", module)
        assert all(word in entry["error"] for word in words)

    text = run_polymodal("plugins", pythonpath=site)
    assert text.returncode == 0
    assert "raises-on-import 2.3  entry point 'main' -> raises_on_import  [FAILED]" in text.stdout
    assert "reason: import failed: RuntimeError: no GPU driver found" in text.stdout

    listing = run_polymodal("list", pythonpath=site)
    assert listing.returncode == 0 and "classification" in listing.stdout
    assert f"{len(FAULTS)} plugin(s) failed to load; see `polymodal plugins`" in listing.stderr

    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps(SPEC))
    validated = run_polymodal("validate", str(spec), pythonpath=site)
    assert validated.returncode == 0, validated.stderr
    assert "ok" in validated.stdout


def _two_packages_with_head_twice(site):
    for package, module in (("alpha-heads", "alpha_heads"), ("beta-heads", "beta_heads")):
        make_distribution(site, package, "1.0", {"twice": module},
                          {f"{module}.py": GOOD_HEAD.format(type="twice")})


def test_a_taken_type_is_ambiguous_until_pinned_never_last_one_wins(site):
    _two_packages_with_head_twice(site)
    for order in (entry_points_in(site), entry_points_in(site)[::-1]):
        registry = Registry(entry_points=builtin_entry_points() + order)
        with pytest.raises(ComponentError) as caught:
            registry.resolve("head", "twice")
        message = str(caught.value)
        assert "alpha-heads 1.0" in message and "beta-heads 1.0" in message
        assert "'alpha-heads:twice' or 'beta-heads:twice'" in message
        assert registry.resolve("head", "beta-heads:twice").package == "beta-heads"
        assert registry.resolve("head", "beta_heads:twice").package == "beta-heads"
        assert registry.resolve("head", "alpha-heads:twice").package == "alpha-heads"

    registry = Registry(entry_points=builtin_entry_points() + entry_points_in(site))
    with pytest.raises(SpecError, match=r"heads\.y\.type: head type 'twice' is provided by more"):
        validate_spec_data({**SPEC, "heads": {"y": {"type": "twice"}}}, registry)
    pinned = validate_spec_data({**SPEC, "heads": {"y": {"type": "beta-heads:twice"}}}, registry)
    assert pinned.to_dict(registry)["heads"]["y"]["type"] == "beta-heads:twice"


def test_polymodal_plugins_and_list_show_the_conflict(site):
    _two_packages_with_head_twice(site)
    result = run_polymodal("plugins", pythonpath=site)
    assert ("conflict: head 'twice' is provided by alpha-heads 1.0 (entry point 'twice') and"
            " beta-heads 1.0 (entry point 'twice')") in result.stdout
    listing = run_polymodal("list", "--kind", "head", pythonpath=site)
    assert "alpha-heads:twice" in listing.stdout and "beta-heads:twice" in listing.stdout


def test_one_package_providing_a_type_twice_is_refused(site):
    make_distribution(site, "twice-twice", "1.0", {"main": "twice_twice"}, {
        "twice_twice.py": GOOD_HEAD.format(type="twice") + "\n"
        "@polymodal.plugin.hookimpl(specname='polymodal_components')\n"
        "def again():\n    return [Twice]\n"})
    registry = Registry(entry_points=entry_points_in(site))
    (plugin,) = registry.plugins
    assert plugin.status == "failed" and "provides head 'twice' twice" in plugin.error


MARKER_MODULE = """
import os, pathlib
pathlib.Path(os.environ["MARKER"]).write_text("imported")
raise RuntimeError("must never be imported")
"""


def test_disabled_and_unlisted_plugins_are_never_imported(site, tmp_path, monkeypatch):
    marker = tmp_path / "marker"
    monkeypatch.setenv("MARKER", str(marker))
    make_distribution(site, "secret-plugin", "1.0", {"secret": "secret_plugin"},
                      {"secret_plugin.py": MARKER_MODULE})
    points = builtin_entry_points() + entry_points_in(site)

    for env, value in (("POLYMODAL_DISABLE_PLUGINS", "secret-plugin"),
                       ("POLYMODAL_DISABLE_PLUGINS", "secret_plugin"),
                       ("POLYMODAL_DISABLE_PLUGINS", "secret"),
                       ("POLYMODAL_PLUGINS", "polymodal")):
        monkeypatch.setenv(env, value)
        registry = Registry(entry_points=points)
        monkeypatch.delenv(env)
        registry.load_all()
        (plugin,) = [p for p in registry.plugins if p.package == "secret-plugin"]
        assert plugin.status == "disabled", (env, value)
        assert env in plugin.error
        assert validate_spec_data(SPEC, registry)
    assert not marker.exists()

    # Disabling wins over the allow-list.
    monkeypatch.setenv("POLYMODAL_PLUGINS", "polymodal,secret-plugin")
    monkeypatch.setenv("POLYMODAL_DISABLE_PLUGINS", "secret-plugin")
    registry = Registry(entry_points=points)
    registry.load_all()
    assert [p.status for p in registry.plugins if p.package == "secret-plugin"] == ["disabled"]
    assert not marker.exists()

    # The allow-list keeps only what it names.
    monkeypatch.setenv("POLYMODAL_PLUGINS", "polymodal:image,classification")
    monkeypatch.delenv("POLYMODAL_DISABLE_PLUGINS")
    registry = Registry(entry_points=points)
    assert {c.type for c in registry.components()} == {"image", "classification"}

    # Without the switches it is imported (and fails): the marker test can fail.
    monkeypatch.delenv("POLYMODAL_PLUGINS")
    registry = Registry(entry_points=points)
    assert marker.exists()
    assert [p.status for p in registry.plugins if p.package == "secret-plugin"] == ["failed"]


def test_disabled_plugin_named_in_a_spec_says_it_is_disabled(site, monkeypatch):
    make_distribution(site, "good-head", "1.0", {"twice": "good_head"},
                      {"good_head.py": GOOD_HEAD.format(type="twice")})
    monkeypatch.setenv("POLYMODAL_DISABLE_PLUGINS", "good-head")
    registry = Registry(entry_points=builtin_entry_points() + entry_points_in(site))
    with pytest.raises(SpecError, match="unknown head type 'twice'") as caught:
        load_spec({**SPEC, "heads": {"y": {"type": "twice"}}}, registry)
    assert "Plugin good-head 1.0, entry point 'twice' (good_head) is disabled: disabled by" \
        " POLYMODAL_DISABLE_PLUGINS" in str(caught.value)


def test_unknown_type_known_to_the_catalog_answers_with_the_install_line():
    registry = Registry(entry_points=builtin_entry_points())
    spec = {"inputs": {"ecg": {"adapter": {"type": "signal", "channels": 12}}},
            "heads": {"y": {"type": "regression"}}}
    with pytest.raises(SpecError) as caught:
        validate_spec_data(spec, registry)
    message = str(caught.value)
    assert message.startswith("inputs.ecg.adapter.type: unknown adapter type 'signal'.")
    assert "pip install 'polymodal-signal'" in message
    assert "polymodal install polymodal-signal" in message


def test_spec_error_takes_a_message_a_pair_or_problems():
    from polymodal.plugin import ConfigError, SpecError

    assert (str(SpecError("plain")), SpecError("plain").problems) == ("plain", [("", "plain")])
    assert SpecError(("heads.y.size", "must be odd")).problems == [("heads.y.size", "must be odd")]
    assert str(SpecError([("a", "x"), ("", "y")], source="s.yaml")) == (
        "s.yaml: 2 problems in the spec:\n  - a: x\n  - y")
    error = ConfigError("must be even", option="size")
    assert (str(error), error.message, error.option) == ("size: must be even", "must be even", "size")
    assert isinstance(error, ValueError)  # pydantic validators may raise it
    assert polymodal.plugin.ConfigError is ConfigError and "ConfigError" in polymodal.plugin.__all__


OLD_HEAD = GOOD_HEAD.format(type="old").replace("POLYMODAL_PLUGIN_API = 2", "POLYMODAL_PLUGIN_API = 1")


@pytest.fixture
def installed_by_pip(site, tmp_path, monkeypatch):
    """``polymodal install WHEEL`` with pip replaced by what it would leave: the distribution
    ``files`` (module name -> source) of the wheel's name, in a folder on the path."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))

    def install(package: str, module: str, source: str) -> int:
        wheel = tmp_path / f"{package.replace('-', '_')}-1.0-py3-none-any.whl"
        wheel.write_bytes(b"")  # only its name is read: pip is replaced
        monkeypatch.setattr(polymodal._install, "_pip", lambda args: make_distribution(
            site, package, "1.0", {"main": module}, {f"{module}.py": source}))
        try:
            code = main(["install", str(wheel)])
        finally:
            reset_registry()  # the next test discovers without this test's folder
        return code

    return install


def test_install_fails_when_polymodal_refuses_the_plugin_it_installed(installed_by_pip, capsys):
    code = installed_by_pip("old-heads", "old_heads", OLD_HEAD)
    out, err = capsys.readouterr()
    assert code == 1, (out, err)
    assert err.startswith("error: pip installed old-heads 1.0 (it stays installed until"
                          " `polymodal uninstall old-heads`), but polymodal cannot use it: its"
                          " entry point 'main' failed: written for plugin API 1, but this"
                          " polymodal provides plugin API 2"), err
    assert err.rstrip().endswith("Install a release of old-heads made for plugin API 2.")
    assert "Traceback" not in err


def test_install_reports_a_plugin_that_loads_beside_a_broken_one(installed_by_pip, site, capsys):
    make_distribution(site, "broken-plugin", "0.9", {"main": "broken_plugin"},
                      {"broken_plugin.py": "raise ImportError('missing native library')\n"})
    code = installed_by_pip("new-heads", "new_heads", GOOD_HEAD.format(type="new"))
    out, err = capsys.readouterr()
    assert code == 0, err
    assert out == "new-heads 1.0: entry point 'main' provides head new\n"


def test_an_import_error_behind_a_plugin_s_own_exception_is_shown(site):
    make_distribution(site, "wraps-import", "1.0", {"main": "wraps_import"}, {"wraps_import.py": """
        try:
            import native_backend_not_installed
        except ImportError as exc:
            raise RuntimeError("the native backend is missing") from exc
        """})
    make_distribution(site, "bad-syntax", "1.0", {"main": "bad_syntax"},
                      {"bad_syntax.py": "def broken(:\n    pass\n"})
    registry = Registry(entry_points=entry_points_in(site))
    failed = {p.package: p.error for p in registry.failures()}
    assert failed["wraps-import"] == (
        f"import failed: RuntimeError: the native backend is missing (at {site}/wraps_import.py:4),"
        " caused by ModuleNotFoundError: No module named 'native_backend_not_installed'"
        f" (at {site}/wraps_import.py:2)")
    assert failed["bad-syntax"].endswith(f"(at {site}/bad_syntax.py:1)")  # not importlib's


def test_an_unknown_type_beside_a_refused_plugin_ends_each_sentence_once(site):
    make_distribution(site, "old-heads", "1.0", {"main": "old_heads"}, {"old_heads.py": OLD_HEAD})
    shown = run_polymodal("show", "fusion", "nothing", pythonpath=site)
    assert shown.returncode == 1
    assert "made for plugin API 2.) Installed fusion types: " in shown.stderr, shown.stderr
    assert ".." not in shown.stderr.replace("...", "")

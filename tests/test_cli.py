"""The ``polymodal`` command as a user runs it: every command of the design's CLI table, and
one clear message (never a traceback) for bad input."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch
from safetensors.torch import save_file

import polymodal
from polymodal._cli import main

SCRIPT = Path(sys.executable).with_name("polymodal")


def run(*args: str) -> subprocess.CompletedProcess:
    """The installed console script, in a subprocess."""
    return subprocess.run([str(SCRIPT), *args], capture_output=True, text=True, timeout=300)


def call(capsys, *args: str) -> tuple[int, str, str]:
    """The CLI in-process: exit code, stdout, stderr."""
    code = main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_one_clear_error(code: int, err: str, *expected: str) -> None:
    assert code == 1
    assert "Traceback" not in err
    assert err.startswith("error: ")
    for text in expected:
        assert text in err, err


# -- through the installed script ------------------------------------------------------------


def test_script_list_and_kind_filter():
    done = run("list")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].split() == ["KIND", "TYPE", "PACKAGE", "SUMMARY"]
    types = {line.split()[1] for line in lines[1:]}
    assert types >= {"image", "tabular", "timm", "torchvision", "mlp", "concat", "attention",
                     "classification", "regression"}
    heads = run("list", "--kind", "head")
    assert heads.returncode == 0
    assert {line.split()[0] for line in heads.stdout.splitlines()[1:]} == {"head"}



def test_script_stops_quietly_when_its_reader_goes_away():
    # As in `polymodal list | head -1`, with the reader gone before the first line.
    process = subprocess.Popen([str(SCRIPT), "list"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    process.stdout.close()
    err = process.stderr.read().decode()
    assert process.wait(timeout=300) == 141
    assert err == ""


TABLE_SPEC = {
    "name": "prices",
    "inputs": {
        "row": {
            "adapter": {"type": "tabular", "categorical": {"city": 7}, "embedding_dims": {"city": 4},
                        "numerical": ["area"]},
            "backbone": {"type": "mlp", "hidden": [8]},
        },
    },
    "heads": {"price": {"type": "regression"}},
}


def test_script_validate_build_inspect(spec_file, tmp_path):
    # A table-only model: the script's whole path without the time of importing timm.
    spec = spec_file(TABLE_SPEC)
    done = run("validate", str(spec))
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        f"{spec}: ok (1 input(s), 1 head(s))",
        "  model: 101 parameters (412 bytes of weights and buffers; training with AdamW holds"
        " about 4 times that)",
        "  input row: a vector of 8",
        "  heads price <- row: a vector of 8",
    ]

    out = tmp_path / "built.safetensors"
    done = run("build", str(spec), "-o", str(out))
    assert done.returncode == 0, done.stderr
    model = polymodal.load(out)
    total = sum(p.numel() for p in model.parameters())
    # city: 7 + 2 reserved rows, embedding width 4; area + its missing flag; 6 -> 8 -> 1
    assert total == 9 * 4 + (6 * 8 + 8) + (8 + 1)
    assert done.stdout.strip() == f"wrote {out} ({total:,} parameters)"

    done = run("inspect", str(out))
    assert done.returncode == 0, done.stderr
    assert "polymodal model file, format 1" in done.stdout
    assert "type: polymodal:tabular" in done.stdout
    rows = {line.split()[0]: line.split()[1:] for line in done.stdout.splitlines()
            if line.startswith(("adapters.", "input_backbones.", "heads.", "total"))}
    assert rows["adapters.row"][0] == "36"
    assert rows["input_backbones.row"][0] == "56"
    assert rows["heads.price"][0] == "9"
    assert rows["total"][0] == f"{total:,}"


def test_script_bad_spec_is_one_message_without_traceback(image_spec, spec_file):
    image_spec["inputs"]["photo"]["adapter"]["channels"] = 5
    done = run("validate", str(spec_file(image_spec)))
    assert_one_clear_error(done.returncode, done.stderr, "inputs.photo.adapter", "set project_to: 3")
    assert done.stderr.count("\n") == 1
    assert done.stdout == ""


def test_script_pickle_model_file_refused(tmp_path):
    path = tmp_path / "model.safetensors"
    path.write_bytes(b"\x80\x04\x95" + b"\0" * 64)
    done = run("inspect", str(path))
    assert_one_clear_error(done.returncode, done.stderr, "not a valid safetensors model file")


# -- in-process ------------------------------------------------------------------------------


def test_show_prints_options_with_types_defaults_and_descriptions(capsys):
    code, out, _ = call(capsys, "show", "adapter", "image")
    assert code == 0
    assert out.startswith("adapter polymodal:image")
    assert "channels: integer = 3" in out
    assert "project_to:" in out and "Learned 1x1 projection" in out


def test_show_json_is_the_config_schema(capsys):
    code, out, _ = call(capsys, "show", "head", "regression", "--json")
    assert code == 0
    schema = json.loads(out)
    assert schema["properties"]["outputs"]["exclusiveMinimum"] == 0
    assert schema["properties"]["loss"]["enum"] == ["mse", "huber", "l1"]


def test_show_unknown_type(capsys):
    code, _, err = call(capsys, "show", "backbone", "timmm")
    assert_one_clear_error(code, err, "unknown backbone type 'timmm'", "'timm'")


def test_plugins_lists_every_builtin(capsys):
    code, out, _ = call(capsys, "plugins", "--json")
    assert code == 0
    plugins = json.loads(out)["plugins"]
    assert {p["entry_point"] for p in plugins} >= {
        "image", "tabular", "timm", "torchvision", "mlp", "concat", "attention",
        "classification", "regression"}
    assert all(p["status"] in ("lazy", "loaded") for p in plugins if p["package"] == "polymodal")
    code, out, _ = call(capsys, "plugins", "--available")
    assert code == 0 and "polymodal-signal" in out


def test_list_json(capsys):
    code, out, _ = call(capsys, "list", "--kind", "fusion", "--json")
    assert code == 0
    assert {c["id"] for c in json.loads(out)} >= {"polymodal:concat", "polymodal:attention"}


def test_validate_shared_backbone_example(capsys):
    example = Path(__file__).parents[1] / "examples" / "shared_backbone.yaml"
    code, out, _ = call(capsys, "validate", str(example))
    assert code == 0
    assert "heads mri_grade <- mri: a vector of 512" in out


def test_inspect_json_counts_parts_and_shares_once(capsys, tmp_path):
    spec = {
        "inputs": {
            "a": {"adapter": {"type": "image", "channels": 1, "project_to": 3}, "backbone": "net"},
            "b": {"adapter": {"type": "image", "channels": 2, "project_to": 3}, "backbone": "net"},
        },
        "backbones": {"net": {"type": "timm", "model": "resnet10t"}},
        "heads": {"ya": {"type": "classification", "classes": 2, "inputs": ["a"]},
                  "yb": {"type": "classification", "classes": 3, "inputs": ["b"]}},
    }
    path = tmp_path / "m.safetensors"
    model = polymodal.build(spec)
    polymodal.save(model, path)
    code, out, _ = call(capsys, "inspect", str(path), "--json")
    assert code == 0
    info = json.loads(out)
    parts = info["parameters"]["parts"]
    assert parts["adapters.a"]["total"] == 1 * 3 + 3
    assert parts["adapters.b"]["total"] == 2 * 3 + 3
    assert parts["heads.yb"]["total"] == 512 * 3 + 3
    assert info["parameters"]["total"] == sum(p["total"] for p in parts.values())
    assert info["parameters"]["total"] == sum(p.numel() for p in model.parameters())
    assert info["spec"]["backbones"]["net"]["type"] == "polymodal:timm"


def test_docs_writes_a_page_per_component_and_an_index(capsys, tmp_path):
    out_dir = tmp_path / "reference"
    code, out, _ = call(capsys, "docs", "-o", str(out_dir))
    assert code == 0
    pages = sorted(p.name for p in out_dir.rglob("*.md"))
    assert "index.md" in pages
    assert len(pages) >= 10  # nine built-in components and the index
    index = (out_dir / "index.md").read_text()
    for type_name in ("image", "tabular", "timm", "concat", "classification"):
        assert type_name in index


def test_schema_is_valid_json_schema(capsys, tmp_path):
    import jsonschema

    code, out, _ = call(capsys, "schema")
    assert code == 0
    schema = json.loads(out)
    jsonschema.Draft202012Validator.check_schema(schema)
    target = tmp_path / "schema.json"
    code, _, _ = call(capsys, "schema", "-o", str(target))
    assert code == 0 and json.loads(target.read_text()) == schema


# -- bad input through each command ----------------------------------------------------------


@pytest.mark.parametrize("command", ["validate", "build"])
@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (lambda s: s["inputs"]["photo"]["adapter"].update(type="imag"),
         ["inputs.photo.adapter.type", "'image'"]),
        (lambda s: s["inputs"]["photo"]["adapter"].update(chanels=3),
         ["inputs.photo.adapter.chanels: unknown key", "'channels'"]),
        (lambda s: s["heads"]["label"].update(classes=0), ["heads.label.classes"]),
        (lambda s: s["heads"]["label"].update(inputs=["foto"]), ["heads.label.inputs[0]", "'photo'"]),
        (lambda s: s["inputs"]["photo"].update(backbone="visoin"), ["inputs.photo.backbone"]),
        (lambda s: s["backbones"]["vision"].update(model="resnet181"), ["'resnet18'"]),
    ],
)
def test_bad_specs_through_the_cli(capsys, tmp_path, image_spec, spec_file, command, change,
                                   expected):
    change(image_spec)
    path = spec_file(image_spec)
    args = [command, str(path)] + (["-o", str(tmp_path / "out.safetensors")]
                                   if command == "build" else [])
    code, out, err = call(capsys, *args)
    assert_one_clear_error(code, err, str(path), *expected)
    assert not (tmp_path / "out.safetensors").exists()


def test_missing_pretrained_file_through_build(capsys, tmp_path, image_spec, spec_file):
    image_spec["backbones"]["vision"]["pretrained"] = "gone.safetensors"
    out = tmp_path / "out.safetensors"
    code, _, err = call(capsys, "build", str(spec_file(image_spec)), "-o", str(out))
    assert_one_clear_error(code, err, "backbones.vision", "not found:",
                           "gone.safetensors (a relative path is read from the spec file's folder)")
    assert not out.exists()


@pytest.mark.parametrize(
    ("name", "text", "expected"),
    [
        ("empty.yaml", "", "the spec is empty"),
        ("dup.yaml", "name: a\nname: b\n", "duplicate key 'name'"),
        ("broken.toml", "name = ", "TOML syntax error"),
        ("broken.json", "{", "JSON syntax error"),
        ("spec.cfg", "x", "unknown spec file type"),
    ],
)
def test_unreadable_specs_through_the_cli(capsys, tmp_path, name, text, expected):
    path = tmp_path / name
    path.write_text(text)
    code, _, err = call(capsys, "validate", str(path))
    assert_one_clear_error(code, err, str(path), expected)


def test_missing_spec_file_through_the_cli(capsys, tmp_path):
    code, _, err = call(capsys, "validate", str(tmp_path / "absent.yaml"))
    assert_one_clear_error(code, err, "absent.yaml", "no such file")


def _rewrite_metadata(path: Path, change) -> None:
    from safetensors import safe_open
    from safetensors.torch import load_file

    with safe_open(str(path), framework="pt") as handle:
        metadata = dict(handle.metadata())
    change(metadata)
    save_file(load_file(str(path)), str(path), metadata=metadata)


def _other_spec(metadata: dict, change) -> None:
    spec = json.loads(metadata["polymodal.spec"])
    change(spec)
    metadata["polymodal.spec"] = json.dumps(spec)


BAD_MODEL_FILES = {
    "truncated": (lambda p: p.write_bytes(p.read_bytes()[:-100]),
                  "not a valid safetensors model file"),
    "random": (lambda p: p.write_bytes(bytes(range(256)) * 16),
               "not a valid safetensors model file"),
    "pickle": (lambda p: torch.save({"w": torch.zeros(2)}, p), "not a valid safetensors model file"),
    "foreign": (lambda p: save_file({"w": torch.zeros(2)}, str(p)), "not a polymodal model"),
    "newer": (lambda p: _rewrite_metadata(p, lambda m: m.update({"polymodal.format": "99"})),
              "pip install -U polymodal"),
    "mismatch": (lambda p: _rewrite_metadata(p, lambda m: _other_spec(
        m, lambda s: s["inputs"]["row"]["backbone"].update(hidden=[12]))),
        "its tensors do not match its spec"),
    "plugin": (lambda p: _rewrite_metadata(p, lambda m: _other_spec(
        m, lambda s: s["heads"]["price"].update(type="polymodal-survival:survival"))),
        "not a package polymodal's catalog knows"),
}


@pytest.mark.parametrize("content", list(BAD_MODEL_FILES))
def test_bad_model_files_through_inspect(capsys, tmp_path, content):
    path = tmp_path / "model.safetensors"
    polymodal.save(polymodal.build(TABLE_SPEC), path)
    spoil, expected = BAD_MODEL_FILES[content]
    spoil(path)
    code, _, err = call(capsys, "inspect", str(path))
    assert_one_clear_error(code, err, str(path), expected)


def test_inspect_shows_what_a_file_says_of_itself_without_its_plugin(capsys, tmp_path):
    path = tmp_path / "model.safetensors"
    polymodal.save(polymodal.build(TABLE_SPEC), path)
    BAD_MODEL_FILES["plugin"][0](path)
    code, out, err = call(capsys, "inspect", str(path))
    assert_one_clear_error(code, err, "polymodal-survival", "not a package polymodal's catalog knows")
    assert "spec (as stored):" in out and "type: polymodal-survival:survival" in out
    assert "stored values (parameters and buffers):" in out and "heads.price" in out
    code, out, _ = call(capsys, "inspect", str(path), "--json")
    shown = json.loads(out)
    assert code == 1 and shown["loadable"] is False
    assert shown["spec"]["heads"]["price"]["type"] == "polymodal-survival:survival"


def test_missing_model_file_through_inspect(capsys, tmp_path):
    code, _, err = call(capsys, "inspect", str(tmp_path / "absent.safetensors"))
    assert_one_clear_error(code, err, "no such model file")


def test_usage_errors_exit_non_zero(capsys):
    code, _, err = call(capsys, "show", "widget", "image")
    assert code == 2 and "Traceback" not in err
    code, _, err = call(capsys, "build", "spec.yaml")  # no -o
    assert code == 2 and "Missing option" in err


def test_debug_shows_the_traceback(tmp_path):
    path = tmp_path / "empty.yaml"
    path.write_text("")
    done = run("--debug", "validate", str(path))
    assert done.returncode != 0
    assert "Traceback" in done.stderr and "the spec is empty" in done.stderr


# -- errors from a plugin's components -------------------------------------------------------

#: A third-party plugin whose head fails as its ``mode`` option says: each way a component can
#: report a user mistake, and plain exceptions from its code.
PICKY_PLUGIN = '''
from typing import Literal

from pydantic import Field, model_validator
from torch import nn

from polymodal.plugin import ConfigError, Head, HeadConfig, SpecError, hookimpl

POLYMODAL_PLUGIN_API = 2


class Picky(Head):
    """A head that refuses what its mode says (a test plugin)."""

    class Config(HeadConfig):
        type: Literal["picky"] = "picky"
        mode: str = "ok"
        size: int = Field(4, gt=0)

        @model_validator(mode="after")
        def _check(self):
            if self.mode == "validator-config":
                raise ConfigError("must not be validator-config", option="mode")
            if self.mode == "validator-spec":
                raise SpecError("the validator says no")
            if self.mode == "validator-type":
                raise TypeError("the validator crashed")
            return self

        def check_takes(self, takes):
            if self.mode == "takes-value":
                raise ValueError("cannot take it")
            if self.mode == "takes-config":
                raise ConfigError("is too small for this input", option="size")
            super().check_takes(takes)

        def describe(self):
            if self.mode == "describe-bug":
                raise KeyError("no description")
            return "picky"

    def __init__(self, config, takes):
        super().__init__(config, takes)
        if config.mode == "init-value":
            raise ValueError(f"size {config.size} is not odd")
        if config.mode == "init-spec":
            raise SpecError("a plain message from the constructor")
        if config.mode == "init-config":
            raise ConfigError("must be odd here", option="size")
        self.linear = nn.Linear(takes.dim, config.size)

    def load_pretrained(self):
        if self.config.mode == "pretrained-value":
            raise ValueError("the weights file has no head")

    def forward(self, x):
        return self.linear(x)


@hookimpl
def polymodal_components():
    return [Picky]
'''


def _plugin_module(folder: Path, name: str, text: str) -> ModuleType:
    """``text`` written to ``folder/name.py`` and run as module ``name``, left out of sys.modules
    so that no other test sees it."""
    path = folder / f"{name}.py"
    path.write_text(text)
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def picky(tmp_path, monkeypatch):
    """``picky(mode)``: a spec file using the head of plugin acme-picky 1.2 (installed in the
    registry the CLI uses) with that mode."""
    from polymodal import _registry

    registry = _registry.Registry()
    registry.add_plugin(_plugin_module(tmp_path, "acme_picky", PICKY_PLUGIN), "acme-picky", "1.2")
    monkeypatch.setattr(_registry, "_REGISTRY", registry)

    def spec(mode: str) -> Path:
        path = tmp_path / f"{mode}.json"
        path.write_text(json.dumps({
            "inputs": {"x": {"adapter": {"type": "tabular", "numerical": ["a"]}}},
            "heads": {"y": {"type": "picky", "mode": mode}}}))
        return path

    return spec


def _raised(kind: str, message: str) -> list[str]:
    """What the error of a plain exception from the picky head says."""
    return [f"heads.y: head 'acme-picky:picky' (acme-picky 1.2) raised {kind}: {message} (at ",
            "acme_picky.py:", "; if the spec is right, this is a bug in acme-picky: please report it"
            " to its authors (--debug shows the traceback)"]


@pytest.mark.parametrize(("mode", "expected"), [
    ("validator-config", ["heads.y.mode: must not be validator-config"]),
    ("validator-spec", ["heads.y: the validator says no"]),
    ("validator-type", _raised("TypeError", "the validator crashed")),
    ("takes-value", _raised("ValueError", "cannot take it")),
    ("takes-config", ["heads.y.size: input 'x' gives a vector of 2: is too small for this input"]),
])
@pytest.mark.parametrize("command", ["validate", "build"])
def test_a_components_error_in_validation_is_reported_at_its_spec_path(
        capsys, tmp_path, picky, command, mode, expected):
    path = picky(mode)
    args = [command, str(path)] + (["-o", str(tmp_path / "out.safetensors")]
                                   if command == "build" else [])
    code, _, err = call(capsys, *args)
    assert_one_clear_error(code, err, f"error: {path}: ", *expected)
    assert "internal error" not in err and err.count("\n") == 1


@pytest.mark.parametrize(("mode", "expected"), [
    ("init-value", _raised("ValueError", "size 4 is not odd")),
    ("init-spec", ["heads.y: a plain message from the constructor"]),
    ("init-config", ["heads.y.size: must be odd here"]),
    ("pretrained-value", _raised("ValueError", "the weights file has no head")),
])
def test_a_components_error_in_build_is_reported_at_its_spec_path(capsys, tmp_path, picky, mode,
                                                                  expected):
    path = picky(mode)
    code, out, err = call(capsys, "validate", str(path))
    assert code == 0 and "ok" in out  # what only the module checks shows when it is built
    output = tmp_path / "out.safetensors"
    code, _, err = call(capsys, "build", str(path), "-o", str(output))
    assert_one_clear_error(code, err, f"error: {path}: ", *expected)
    assert not output.exists()


def test_without_pretrained_weights_load_pretrained_is_not_called(capsys, tmp_path, picky):
    code, _, err = call(capsys, "build", str(picky("pretrained-value")), "-o",
                        str(tmp_path / "out.safetensors"), "--no-pretrained")
    assert code == 0, err


def test_debug_shows_the_traceback_of_a_components_error(capsys, picky):
    with pytest.raises(polymodal.SpecError):
        main(["--debug", "validate", str(picky("takes-value"))])
    err = capsys.readouterr().err
    assert "Traceback" in err and 'raise ValueError("cannot take it")' in err


def test_a_plugins_exception_outside_a_component_call_names_the_plugin(capsys, picky):
    # The diagram describes each component: the picky head's describe() has a bug.
    code, _, err = call(capsys, "validate", "--diagram", str(picky("describe-bug")))
    assert_one_clear_error(code, err, "error: plugin acme-picky 1.2, entry point 'acme_picky'"
                           " (acme_picky) raised KeyError: 'no description' (at ",
                           "acme_picky.py:", "this is a bug in acme-picky or a mistake it does not"
                           " explain (--debug shows the traceback)")
    assert "internal error" not in err


def test_an_exception_of_polymodal_itself_is_an_internal_error(capsys, monkeypatch, picky):
    from polymodal import _diagram

    def broken(spec):
        raise RuntimeError("a bug in the diagram")

    monkeypatch.setattr(_diagram, "mermaid", broken)
    code, _, err = call(capsys, "validate", "--diagram", str(picky("ok")))
    assert code == 3
    assert err == ("internal error: RuntimeError: a bug in the diagram\n"
                   "This is a bug in polymodal; rerun with --debug for the traceback.\n")


BAD_DEFAULT_PLUGIN = PICKY_PLUGIN.replace("size: int = Field(4, gt=0)", "size: int = Field(-3, gt=0)")


def test_a_config_default_that_breaks_its_constraint_fails_the_plugin(capsys, tmp_path, monkeypatch):
    from polymodal import _registry

    registry = _registry.Registry()
    module = _plugin_module(tmp_path, "acme_sloppy", BAD_DEFAULT_PLUGIN)
    plugin = registry.add_plugin(module, "acme-sloppy", "0.1")
    monkeypatch.setattr(_registry, "_REGISTRY", registry)
    reason = ("Picky.Config (head 'picky'): the default of option 'size' (-3) is invalid: Input"
              " should be greater than 0; change the default or the option's constraints")
    assert (plugin.status, plugin.error) == ("failed", reason)

    code, out, _ = call(capsys, "plugins")
    assert code == 0
    assert "acme-sloppy 0.1  entry point 'acme_sloppy' -> acme_sloppy  [FAILED]" in out
    assert f"    reason: {reason}" in out
    code, out, err = call(capsys, "list", "--kind", "head")
    assert code == 0 and "picky" not in out
    assert "1 plugin(s) failed to load; see `polymodal plugins` (acme-sloppy 0.1)." in err

    spec = tmp_path / "uses.json"
    spec.write_text(json.dumps({"inputs": {"x": {"adapter": {"type": "tabular", "numerical": ["a"]}}},
                                "heads": {"y": {"type": "acme-sloppy:picky"}}}))
    code, _, err = call(capsys, "validate", str(spec))
    assert_one_clear_error(code, err, "heads.y.type: unknown head type 'acme-sloppy:picky'",
                           f"acme-sloppy 0.1, entry point 'acme_sloppy' (acme_sloppy) is failed: {reason}")


def test_every_command_and_option_in_the_contracts_exists():
    """docs/contracts.md's CLI table names only commands and options the CLI has."""
    import re as _re
    from pathlib import Path as _Path

    from polymodal._cli import cli

    text = (_Path(__file__).resolve().parents[1] / "docs" / "contracts.md").read_text()
    rows = [line for line in text.splitlines() if line.startswith("| `polymodal ")]
    assert len(rows) >= 10
    for row in rows:
        for usage in _re.findall(r"`polymodal ([^`]+)`|/ `([a-z]+ [^`]+)`", row):
            words = (usage[0] or usage[1]).split()
            command = cli.commands.get(words[0])
            assert command is not None, f"no command {words[0]!r}: {row}"
            known = {o for p in command.params for o in getattr(p, "opts", [])}
            for option in (w.strip("[]") for w in words if w.strip("[]").startswith("-")):
                assert option in known, f"polymodal {words[0]} has no option {option}"

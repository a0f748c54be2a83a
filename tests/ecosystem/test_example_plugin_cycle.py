"""The example third-party plugin, as a user meets it: built into a wheel, installed with
`polymodal install` into a fresh virtual environment, used (trained, evaluated and used to
predict from a table of signal files), and uninstalled again."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from ecosystem_helpers import GOOD_HEAD, REPO, make_distribution

PLUGIN = REPO / "examples" / "plugins" / "polymodal-signal"
SPEC = {
    "name": "heart",
    "inputs": {"ecg": {"adapter": {"type": "signal", "channels": 3}, "backbone": {"type": "tcn", "channels": 8, "levels": 2}},
               "report": {"adapter": {"type": "tabular", "numerical": ["age"]}}},
    "fusion": {"type": "concat"},
    "heads": {"rhythm": {"type": "classification", "classes": 4}},
}

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The example plugin's wheel, built from a copy so the source tree stays clean."""
    work = tmp_path_factory.mktemp("build")
    source = work / "polymodal-signal"
    shutil.copytree(PLUGIN, source, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    subprocess.run([sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir",
                    str(work / "dist"), str(source)], check=True, capture_output=True, timeout=300)
    (built,) = (work / "dist").glob("polymodal_signal-0.1.0-*.whl")
    return built


def _run(env_root: Path, *args: str, extra_path: Path | None = None, cwd: Path | None = None):
    environment = {k: v for k, v in os.environ.items()
                   if k not in ("PYTHONPATH", "POLYMODAL_PLUGINS", "POLYMODAL_DISABLE_PLUGINS")}
    environment.update(PIP_NO_INDEX="1", PIP_DISABLE_PIP_VERSION_CHECK="1")
    if extra_path is not None:
        environment["PYTHONPATH"] = str(extra_path)
    return subprocess.run([str(env_root / "bin" / "python"), *args], capture_output=True, text=True,
                          env=environment, cwd=cwd, timeout=300)


def test_install_use_uninstall_cycle_from_the_wheel(wheel, fresh_env, tmp_path):
    # A broken plugin is installed too: installing and using others must not mind it.
    broken = tmp_path / "broken"
    make_distribution(broken, "broken-plugin", "0.9", {"main": "broken_plugin"},
                      {"broken_plugin.py": "raise ImportError('missing native library')\n"})
    make_distribution(broken, "other-heads", "1.0", {"twice": "other_heads"},
                      {"other_heads.py": GOOD_HEAD.format(type="twice")})

    def polymodal(*args: str):
        return _run(fresh_env, "-m", "polymodal", *args, extra_path=broken, cwd=tmp_path)

    before = polymodal("list", "--json")
    assert before.returncode == 0, before.stderr
    assert "signal" not in {c["type"] for c in json.loads(before.stdout)}

    installed = polymodal("install", str(wheel))
    assert installed.returncode == 0, installed.stderr
    assert "polymodal-signal 0.1.0: entry point 'signal' provides adapter signal, backbone tcn" in installed.stdout
    site_packages = next((fresh_env / "lib").glob("python*/site-packages"))
    assert list(site_packages.glob("polymodal_signal-0.1.0.dist-info"))

    listing = polymodal("list", "--json")
    found = {(c["kind"], c["type"]): c for c in json.loads(listing.stdout)}
    assert found[("adapter", "signal")]["package"] == "polymodal-signal"
    assert found[("backbone", "tcn")]["version"] == "0.1.0"
    plugins = {p["package"]: p for p in json.loads(polymodal("plugins", "--json").stdout)["plugins"]}
    # Listed from its manifest, imported by `plugins` to check it against the manifest.
    assert plugins["polymodal-signal"]["status"] == "loaded"
    assert plugins["polymodal-signal"]["components"] == ["adapter:signal", "backbone:tcn"]
    assert plugins["broken-plugin"]["status"] == "failed"

    spec = tmp_path / "heart.json"
    spec.write_text(json.dumps(SPEC))
    assert polymodal("validate", str(spec)).returncode == 0
    model = tmp_path / "heart.safetensors"
    built = polymodal("build", str(spec), "-o", str(model))
    assert built.returncode == 0, built.stderr
    check = _run(fresh_env, "-c", (
        "import json, torch, polymodal\n"
        "from polymodal._modelfile import read_metadata\n"
        f"m = polymodal.load({str(model)!r})\n"
        "out = m({'ecg': torch.randn(2, 3, 50), 'report': {'age': torch.rand(2)}})\n"
        "print(tuple(out['rhythm'].shape), json.loads(read_metadata("
        f"{str(model)!r})['polymodal.versions'])['polymodal-signal'])\n"
    ), extra_path=broken)
    assert check.returncode == 0, check.stderr
    assert check.stdout.strip() == "(2, 4) 0.1.0"

    removed = polymodal("uninstall", "polymodal-signal")
    assert removed.returncode == 0, removed.stderr
    assert "uninstalled polymodal-signal 0.1.0" in removed.stdout
    assert not list(site_packages.glob("polymodal_signal*"))

    after = polymodal("inspect", str(model))
    assert after.returncode == 1
    assert "Traceback" not in after.stderr
    assert "needs the plugin package(s) polymodal-signal 0.1.0: pip install polymodal-signal" in after.stderr
    again = polymodal("uninstall", "polymodal-signal")
    assert again.returncode == 1 and "'polymodal-signal' is not installed" in again.stderr


def _signal_tables(folder: Path) -> tuple[Path, Path, np.ndarray]:
    """train.csv and test.csv: a 3-lead signal file, age and sex a row, and the rhythm (regular
    or irregular, from the beat's spacing); with the training signals stacked ``[rows, 3, T]``."""
    rng = np.random.default_rng(0)
    (folder / "signals").mkdir(parents=True)
    steps = np.arange(96)
    tables, training = {}, []
    for split, rows in (("train", 40), ("test", 12)):
        records = []
        for i in range(rows):
            irregular = i % 2 == 1
            beats = np.cumsum(rng.integers(6, 20, 16) if irregular else np.full(16, 12))
            lead = np.isin(steps, beats).astype(np.float64) * 3 + rng.normal(0, 0.2, 96)
            signal = np.stack([lead, 0.5 * lead + 1.0, rng.normal(-2, 1, 96)]).astype(np.float32)
            path = f"signals/{split}_{i}.npy"
            np.save(folder / path, signal)
            if split == "train":
                training.append(signal)
            records.append([path, int(rng.integers(30, 80)), "fm"[i % 2 == 0],
                            "irregular" if irregular else "regular"])
        tables[split] = folder / f"{split}.csv"
        with tables[split].open("w", newline="") as handle:
            csv.writer(handle).writerows([["ecg_file", "age", "sex", "rhythm"], *records])
    return tables["train"], tables["test"], np.stack(training)


TABLE_SPEC = {
    "name": "heart",
    "inputs": {
        "ecg": {"adapter": {"type": "signal", "channels": 3, "column": "ecg_file", "noise_std": 0.05},
                "backbone": {"type": "tcn", "channels": 8, "levels": 2}},
        "record": {"adapter": {"type": "tabular", "categorical": ["sex"], "numerical": ["age"]}},
    },
    "fusion": {"type": "concat", "hidden": [16]},
    "heads": {"rhythm": {"type": "classification"}},
    "training": {"epochs": 3, "batch_size": 8, "lr": 0.01,
                 "early_stopping": {"metric": "rhythm.balanced_accuracy"}},
}


def test_the_plugin_trains_evaluates_and_predicts_from_a_table_of_signal_files(wheel, fresh_env,
                                                                                 tmp_path):
    def polymodal(*args: str):
        return _run(fresh_env, "-m", "polymodal", *args, cwd=tmp_path)

    installed = polymodal("install", str(wheel))
    assert installed.returncode == 0, installed.stderr
    train_table, test_table, training = _signal_tables(tmp_path / "data")
    spec = tmp_path / "heart.json"
    spec.write_text(json.dumps(TABLE_SPEC))
    model = tmp_path / "heart.safetensors"

    trained = polymodal("train", str(spec), "--data", str(train_table), "--val", str(test_table),
                        "-o", str(model), "--json")
    assert trained.returncode == 0, trained.stderr
    summary = json.loads(trained.stdout)
    assert summary["epochs_run"] == 3 and summary["metric"] == "rhythm.balanced_accuracy"
    assert set(summary["best"]["val"]["rhythm"]) == {"loss", "accuracy", "balanced_accuracy",
                                                     "macro_f1", "auroc"}

    # What the codec learned on the training signals travels in the model file.
    inspected = polymodal("inspect", str(model), "--json")
    assert inspected.returncode == 0, inspected.stderr
    fitted = json.loads(inspected.stdout)["fitted"]["inputs"]["ecg"]
    assert fitted["length"] == 96
    assert fitted["mean"] == pytest.approx(training.mean(axis=(0, 2)).tolist(), abs=1e-5)
    assert fitted["std"] == pytest.approx(training.std(axis=(0, 2)).tolist(), abs=1e-5)

    evaluated = polymodal("evaluate", str(model), "--data", str(test_table), "--json")
    assert evaluated.returncode == 0, evaluated.stderr
    result = json.loads(evaluated.stdout)
    assert result["rows"] == 12 and result["heads"]["rhythm"]["confusion_matrix"]
    assert result["heads"]["rhythm"]["metrics"]["balanced_accuracy"] == pytest.approx(
        summary["best_value"])

    predictions = tmp_path / "predictions.csv"
    predicted = polymodal("predict", str(model), "--data", str(test_table), "-o", str(predictions))
    assert predicted.returncode == 0, predicted.stderr
    with predictions.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 12
    assert {r["rhythm"] for r in rows} <= {"regular", "irregular"}
    assert list(rows[0]) == ["row", "rhythm", "rhythm_prob_irregular", "rhythm_prob_regular",
                             "inputs_used"]

    # A third-party codec reports absence (plugin API 2.1: SignalCodec.absent): rows with an
    # empty signal cell are predicted from the record alone, and evaluated apart.
    lines = test_table.read_text().splitlines()
    for i in (1, 4, 7):
        lines[i] = lines[i].replace(lines[i].split(",")[0], "", 1)
    partial = tmp_path / "data" / "partial.csv"
    partial.write_text("\n".join(lines) + "\n")
    evaluated = polymodal("evaluate", str(model), "--data", str(partial), "--json")
    assert evaluated.returncode == 0, evaluated.stderr
    by_presence = json.loads(evaluated.stdout)["by_presence"]["rhythm"]
    assert {k: v["rows"] for k, v in by_presence.items()} == {"ecg + record": 9, "record only": 3}
    predicted = polymodal("predict", str(model), "--data", str(partial), "-o", str(predictions))
    assert predicted.returncode == 0, predicted.stderr
    with predictions.open(newline="") as handle:
        used = [r["inputs_used"] for r in csv.DictReader(handle)]
    assert [i for i, u in enumerate(used, start=1) if u == "record only"] == [1, 4, 7]

    # explain: the third-party input names no parts, so it is explained as a whole.
    explained = polymodal("explain", str(model), "--data", str(partial), "--repeats", "2",
                          "-o", str(tmp_path / "explained"), "--json")
    assert explained.returncode == 0, explained.stderr
    contributions = json.loads(explained.stdout)["heads"]["rhythm"]["contributions"]
    assert set(contributions) == {"ecg absent", "ecg permuted", "record absent",
                                  "record permuted", "record.sex permuted", "record.age permuted"}

    # A row whose signal file is gone: one message naming the table, row, column and file.
    lines = test_table.read_text().splitlines()
    lines[3] = lines[3].replace("signals/test_2.npy", "signals/lost.npy")
    broken = tmp_path / "data" / "broken.csv"
    broken.write_text("\n".join(lines) + "\n")
    failed = polymodal("predict", str(model), "--data", str(broken), "-o", str(tmp_path / "no.csv"))
    assert failed.returncode == 1 and "Traceback" not in failed.stderr
    assert (f"{broken} row 3, column 'ecg_file': signal file 'signals/lost.npy' not found in"
            f" {broken.parent}") in failed.stderr
    assert not (tmp_path / "no.csv").exists()


def test_install_refuses_unknown_names_and_missing_paths(fresh_env, tmp_path):
    unknown = _run(fresh_env, "-m", "polymodal", "install", "polymodal-signals", cwd=tmp_path)
    assert unknown.returncode == 1
    assert "Did you mean 'polymodal-signal'" in unknown.stderr  # or another catalog name
    missing = _run(fresh_env, "-m", "polymodal", "install", "./nowhere.whl", cwd=tmp_path)
    assert missing.returncode == 1
    assert missing.stderr.strip() == "error: ./nowhere.whl: no such file or directory"
    core = _run(fresh_env, "-m", "polymodal", "uninstall", "polymodal", cwd=tmp_path)
    assert "refusing to uninstall polymodal itself" in core.stderr


def test_catalog_names_resolve_to_their_requirement():
    from polymodal._install import resolve_requirement

    assert resolve_requirement("polymodal-signal") == ("polymodal-signal", "polymodal-signal")
    assert resolve_requirement("polymodal_signal>=0.1") == ("polymodal-signal>=0.1", "polymodal-signal")


def test_a_failing_pip_is_one_clear_error(fresh_env, tmp_path):
    # No index and no such file in the catalog requirement's place: pip itself fails.
    result = _run(fresh_env, "-m", "polymodal", "install", "polymodal-signal", cwd=tmp_path)
    assert result.returncode == 1
    assert "error: pip failed (exit 1): pip install polymodal-signal" in result.stderr


def test_the_example_plugins_own_tests_pass():
    environment = {**os.environ, "PYTHONPATH": str(PLUGIN)}
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                             str(PLUGIN / "tests")], capture_output=True, text=True,
                            env=environment, cwd=PLUGIN, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert " passed" in result.stdout

"""Hyperparameter search: the spec's search section, Optuna studies that resume and that
several processes share."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jsonschema
import pytest
import yaml

import polymodal
from polymodal._cli import main
from polymodal._spec import spec_json_schema

from training_data import read_csv, table_spec, write_grouped_table

optuna = pytest.importorskip("optuna")

LR = {"type": "float", "low": 0.01, "high": 0.1, "log": True}


def searched(epochs: int = 2, search: dict | None = None, **paths) -> dict:
    spec = table_spec(epochs=epochs)
    spec["search"] = search if search is not None else paths or {"training.lr": LR,
                                "inputs.record.backbone.hidden": {"type": "categorical",
                                                                  "choices": [[8], [16, 8]]}}
    return spec


@pytest.mark.parametrize("search, where, message", [
    ({"training.lrr": LR}, "search.training.lrr", "training has no option 'lrr'. Did you mean 'lr'?"),
    ({"heads.labels.dropout": LR}, "search.heads.labels.dropout", "heads has no entry 'labels'"),
    ({"training.lr": {"type": "float", "low": 0.1, "high": 0.01}}, "search.training.lr",
     "low (0.1) must be below high (0.01)"),
    ({"training.lr": {"type": "float", "low": 0, "high": 0.1, "log": True}}, "search.training.lr",
     "log needs low > 0"),
    ({"training.lr": {"type": "normal", "low": 0, "high": 1}}, "search.training.lr",
     'unknown distribution type "normal". Distributions: float, int, categorical'),
    ({"training.lr": {"type": "flaot", "low": 0, "high": 1}}, "search.training.lr",
     "Did you mean 'float'?"),
    ({"training.lr": 0.01}, "search.training.lr", "a distribution is a mapping with a `type`"),
    ({"training.lr": {"type": "float", "low": 0.001, "hihg": 0.1}}, "search.training.lr.hihg",
     "unknown key. Did you mean 'high'?"),
    ({"training.lr": {"type": "float", "low": 0.001, "high": 20}}, "search.training.lr.high",
     "20.0 does not make a valid spec: training.lr: Input should be less than or equal to 10"),
    ({"training.batch_size": {"type": "int", "low": 8, "high": 30, "step": 8}},
     "search.training.batch_size", "high - low (22) is not a multiple of step (8)"),
    ({"training.optimizer": {"type": "categorical", "choices": ["adamw", "lbfgs"]}},
     "search.training.optimizer.choices[1]", '"lbfgs" does not make a valid spec'),
    ({"training.optimizer": {"type": "categorical", "choices": ["sgd"]}},
     "search.training.optimizer.choices", "at least 2 items"),
    ({"training.early_stopping.metric": {"type": "categorical", "choices": ["loss", "label.accuracy"]}},
     "search.training.early_stopping.metric", "it is the metric trials are compared by"),
    ({"inputs.record.adapter.numerical.x": LR}, "search.inputs.record.adapter.numerical.x",
     "is a value"),
    ({"fusion.hidden": {"type": "categorical", "choices": [[8], [16]]}}, "search.fusion.hidden",
     "fusion is not set in the spec"),
    ({"inputs.record.backbone.type": {"type": "categorical", "choices": ["mlp", "timm"]}},
     "search.inputs.record.backbone.type.choices[1]", "search over whole components"),
    ({"inputs.record.backbone.hidden": {"type": "categorical", "choices": [[8], [4]]},
      "inputs.record.backbone": {"type": "categorical", "choices": [{"type": "mlp", "hidden": [4]}, None]}},
     "search.inputs.record.backbone.hidden", "lies inside search.inputs.record.backbone"),
    ({}, "search", "empty: name at least one spec path"),
    ({"training.lr": {"type": "categorical", "choices": [i / 1e4 for i in range(1, 1002)]}},
     "search.training.lr", "1,001 choices; at most 1,000"),
])
def test_a_bad_search_entry_is_a_located_spec_error(search, where, message):
    with pytest.raises(polymodal.SpecError) as caught:
        polymodal.load_spec(searched(search=search))
    problems = dict(caught.value.problems)
    assert where in problems, caught.value.problems
    assert message in problems[where]


def test_search_over_a_shared_backbone_names_its_place(tmp_path):
    spec = searched(**{"inputs.record.backbone.hidden": {"type": "categorical", "choices": [[8], [4]]}})
    spec["backbones"] = {"shared": spec["inputs"]["record"]["backbone"]}
    spec["inputs"]["record"]["backbone"] = "shared"
    with pytest.raises(polymodal.SpecError, match="names the shared backbone 'shared': search"
                       " backbones.shared.hidden instead"):
        polymodal.load_spec(spec)


def test_a_choice_that_does_not_connect_is_found_before_any_trial(tmp_path):
    spec = searched(search={"inputs.record.backbone": {"type": "categorical", "choices": [
        {"type": "mlp", "hidden": [8]}, {"type": "timm", "model": "resnet18", "pretrained": False}]}})
    with pytest.raises(polymodal.SpecError) as caught:
        polymodal.tune(spec, write_grouped_table(tmp_path), trials=1, output=tmp_path / "run")
    (where, message), = caught.value.problems
    assert where == "search.inputs.record.backbone.choices[1]"
    assert message.startswith('{"model": "resnet18", "pretrained": false, "type": "timm"} does not'
                              " connect: inputs.record")
    assert not (tmp_path / "run" / "trials").exists()


def test_the_search_section_is_in_the_schema_and_validates():
    spec = searched(**{"training.lr": LR,
                       "training.batch_size": {"type": "int", "low": 8, "high": 32, "step": 8},
                       "inputs.record.backbone": {"type": "categorical", "choices": [
                           {"type": "mlp", "hidden": [8]}, {"type": "mlp", "hidden": [16, 8]}]}})
    assert set(polymodal.load_spec(spec).search) == {"training.lr", "training.batch_size",
                                                      "inputs.record.backbone"}
    schema = spec_json_schema()
    assert schema["properties"]["search"]["description"]
    spec["inputs"]["record"]["adapter"]["categorical"] = {"kind": "auto"}  # the schema's form
    jsonschema.Draft202012Validator(schema).validate(spec)
    spec["search"]["training.lr"] = {"type": "float", "low": "small"}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft202012Validator(schema).validate(spec)


def test_tune_writes_the_best_spec_model_trials_and_plots_and_continues(tmp_path):
    table = write_grouped_table(tmp_path)
    out = tmp_path / "run"
    result = polymodal.tune(searched(), table, trials=3, output=out, sampler_seed=0)
    assert result.trials == {"COMPLETE": 3} and result.ran == 3
    trials = read_csv(out / "trials.csv")
    assert [t["number"] for t in trials] == ["0", "1", "2"]
    assert trials[0]["baseline"] == "True"  # the spec as written comes first
    assert float(trials[0]["training.lr"]) == 0.05 and trials[0]["inputs.record.backbone.hidden"] == "[8]"
    assert result.baseline_value == pytest.approx(float(trials[0]["value"]))
    values = [float(t["value"]) for t in trials]
    assert result.best_value == min(values) and result.metric == "loss"
    best = yaml.safe_load((out / "best.yaml").read_text())
    assert "search" not in best
    assert best["training"]["lr"] == pytest.approx(float(trials[result.best_trial]["training.lr"]))
    polymodal.load_spec(best)
    model = polymodal.load(out / "best.safetensors")
    assert model.spec.training.lr == pytest.approx(best["training"]["lr"])
    for name in ("optimization_history.png", "param_importances.png"):
        assert (out / name).read_bytes()[:4] == b"\x89PNG"
        assert (out / name).stat().st_mode & 0o777 == 0o666 & ~_umask()
    # the best model is the best trial's file itself, not a second copy
    trial_model = out / "trials" / f"trial_{result.best_trial}" / "model.safetensors"
    assert (out / "best.safetensors").stat().st_ino == trial_model.stat().st_ino
    # one model kept (the best trial's), no checkpoint
    assert [p.parent.name for p in (out / "trials").rglob("model.safetensors")] == [f"trial_{result.best_trial}"]
    assert not list((out / "trials").rglob("checkpoint.pt"))
    # rerunning continues the study up to the new number of trials
    again = polymodal.tune(searched(), table, trials=5, output=out)
    assert again.ran == 2 and again.trials == {"COMPLETE": 5}
    resumed = read_csv(out / "trials.csv")
    assert [t["value"] for t in resumed][:3] == [t["value"] for t in trials]
    # ... with the sampler seeded past the trials it has, not drawing trial 1's values again
    again = polymodal.tune(searched(), table, trials=6, output=out, sampler_seed=0)
    lrs = [t["training.lr"] for t in read_csv(out / "trials.csv")]
    assert len(set(lrs)) == 6, lrs
    assert polymodal.tune(searched(), table, trials=5, output=out).ran == 0


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_bad_trials_are_pruned_from_their_epochs(tmp_path, monkeypatch):
    class PruneAfterTheFirstEpoch(optuna.pruners.BasePruner):
        def __init__(self, **_):
            pass

        def prune(self, study, trial):
            return trial.number > 0 and max(trial.intermediate_values) >= 1

    monkeypatch.setattr(optuna.pruners, "MedianPruner", PruneAfterTheFirstEpoch)
    table = write_grouped_table(tmp_path)
    result = polymodal.tune(searched(epochs=3), table, trials=3, output=tmp_path / "run")
    assert result.trials == {"COMPLETE": 1, "PRUNED": 2}
    trials = read_csv(tmp_path / "run" / "trials.csv")
    assert [t["last_step"] for t in trials] == ["3", "1", "1"]
    for number in (1, 2):  # a pruned trial trained one epoch and left no model or checkpoint
        folder = tmp_path / "run" / "trials" / f"trial_{number}"
        assert len(read_csv(folder / "metrics.csv")) == 1
        assert not (folder / "model.safetensors").exists() and not (folder / "checkpoint.pt").exists()
    # the last epoch is a trial's result: never pruned
    one_epoch = polymodal.tune(searched(epochs=1), table, trials=3, output=tmp_path / "one")
    assert one_epoch.trials == {"COMPLETE": 3}


def test_tune_by_cross_validation_scores_the_mean_of_the_folds(tmp_path):
    table = write_grouped_table(tmp_path)
    spec = searched(epochs=1, **{"training.lr": LR})
    result = polymodal.tune(spec, table, trials=1, folds=3, group_by="site",
                            output=tmp_path / "run", pruning=False)
    cv = polymodal.cv(table_spec(epochs=1), table, folds=3, group_by="site", output=tmp_path / "cv")
    losses = [f["label"]["loss"] for f in cv.scores[0].folds]
    assert result.best_value == pytest.approx(sum(losses) / 3, rel=1e-6)  # trial 0: the spec as written
    assert polymodal.load(tmp_path / "run" / "best.safetensors")  # retrained on every row
    assert not list((tmp_path / "run" / "trials").rglob("*.safetensors"))


def test_tune_mistakes_are_clear(tmp_path, capsys):
    table = write_grouped_table(tmp_path)
    plain = tmp_path / "plain.yaml"
    plain.write_text(yaml.safe_dump(table_spec()))
    assert main(["tune", str(plain), "--data", str(table), "--trials", "2", "-o", str(tmp_path / "r")]) == 1
    assert "plain.yaml: search: missing: name the spec paths to search over" in capsys.readouterr().err
    spec = tmp_path / "tab.yaml"
    spec.write_text(yaml.safe_dump(searched()))
    assert main(["tune", str(spec), "--data", str(table), "--trials", "2", "--storage", "study.db"]) == 1
    assert "--storage 'study.db': give an Optuna RDB URL" in capsys.readouterr().err
    no_validation = searched()
    no_validation["training"]["val_fraction"] = 0
    spec.write_text(yaml.safe_dump(no_validation))
    assert main(["tune", str(spec), "--data", str(table), "--trials", "2"]) == 1
    assert "training.val_fraction: 0 leaves no validation rows" in capsys.readouterr().err
    # a study that compares trials by another metric is not mixed up with this one
    storage = f"sqlite:///{tmp_path / 'shared.db'}"
    polymodal.tune(searched(epochs=1), table, trials=1, storage=storage, study="s", output=tmp_path / "a")
    other = searched(epochs=1)
    other["training"]["early_stopping"] = {"metric": "label.accuracy"}
    spec.write_text(yaml.safe_dump(other))
    assert main(["tune", str(spec), "--data", str(table), "--trials", "2", "--storage", storage,
                 "--study", "s", "-o", str(tmp_path / "b")]) == 1
    assert "compares trials by loss (minimize); this spec by label.accuracy (maximize)" in capsys.readouterr().err
    # found before a study is made or a trial runs
    spec.write_text(yaml.safe_dump(searched(**{"training.epochs": {"type": "int", "low": 1, "high": 2}})))
    assert main(["tune", str(spec), "--data", str(table), "--trials", "2", "--epochs", "1",
                 "-o", str(tmp_path / "c")]) == 1
    assert ("--epochs sets training.epochs, which the spec's search varies: leave --epochs out,"
            " or take training.epochs out of the search") in capsys.readouterr().err
    spec.write_text(yaml.safe_dump(searched()))
    assert main(["tune", str(spec), "--data", str(table), "--trials", "2", "--group-by", "sitte",
                 "-o", str(tmp_path / "d")]) == 1
    assert "no column 'sitte' to group the validation split by. Did you mean 'site'?" \
        in capsys.readouterr().err
    assert not (tmp_path / "c").exists() and not (tmp_path / "d").exists()


def _tune_process(spec: Path, table: Path, out: Path, storage: str, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "polymodal", "tune", str(spec), "--data", str(table), "--storage",
         storage, "--study", "shared", "-o", str(out), "--json", *extra],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"})


def _study(storage: str):
    return optuna.load_study(study_name="shared", storage=storage)


def test_two_processes_share_one_sqlite_study_without_losing_trials(tmp_path):
    table = write_grouped_table(tmp_path)
    spec = tmp_path / "tab.yaml"
    spec.write_text(yaml.safe_dump(searched(epochs=1)))
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    runs = [_tune_process(spec, table, tmp_path / name, storage, "--trials", "6", "--no-pruning")
            for name in ("one", "two")]
    outputs = [run.communicate(timeout=300) for run in runs]
    for run, (out, err) in zip(runs, outputs):
        assert run.returncode == 0, err[-3000:]
    ran = [json.loads(out)["ran"] for out, _ in outputs]
    trials = _study(storage).trials
    assert all(r >= 1 for r in ran), ran  # both worked on the study ...
    assert sum(ran) == len(trials) >= 6  # ... and every trial either ran is in it, once
    assert sorted(t.number for t in trials) == list(range(len(trials)))
    assert {t.state.name for t in trials} == {"COMPLETE"}
    assert len({t.user_attrs["worker"] for t in trials}) == 2


def test_a_killed_tune_resumes(tmp_path):
    table = write_grouped_table(tmp_path)
    spec = tmp_path / "tab.yaml"
    spec.write_text(yaml.safe_dump(searched(epochs=2)))
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    run = _tune_process(spec, table, tmp_path / "run", storage, "--trials", "3", "--heartbeat", "1",
                        "--no-pruning")
    second = tmp_path / "run" / "trials" / "trial_1"
    deadline = time.monotonic() + 240
    while not second.exists() and time.monotonic() < deadline and run.poll() is None:
        time.sleep(0.1)
    run.send_signal(signal.SIGKILL)  # in the middle of its second trial
    run.communicate()
    before = {t.number: t.value for t in _study(storage).trials if t.state.name == "COMPLETE"}
    killed = [t.number for t in _study(storage).trials if t.state.name == "RUNNING"]
    assert before and killed
    time.sleep(2.5)  # the killed trial's heartbeat goes stale
    result = polymodal.tune(polymodal.load_spec(spec), table, trials=3, storage=storage,
                            study="shared", output=tmp_path / "run", heartbeat=1)
    trials = _study(storage).trials
    assert [t.state.name for t in trials if t.number in killed] == ["FAIL"]
    assert sum(t.state.name == "COMPLETE" for t in trials) == 3
    assert {t.number: t.value for t in trials if t.number in before} == before
    retried = [t for t in trials if t.system_attrs.get("failed_trial") in killed]
    assert retried and retried[0].state.name == "COMPLETE"  # the killed trial, run again
    assert result.best_model is not None and result.best_model.is_file()


def test_under_torchrun_every_process_trains_each_trial(tmp_path):
    table = write_grouped_table(tmp_path)
    spec = tmp_path / "tab.yaml"
    spec.write_text(yaml.safe_dump(searched(epochs=2)))
    done = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--standalone",
         "-m", "polymodal", "tune", str(spec), "--data", str(table), "--trials", "2",
         "--device", "cpu", "-o", str(tmp_path / "run")],
        capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("best: trial") == 1  # one report, from the first process
    assert "training on 38 rows, validating on 10 (2 process(es), cpu)" in done.stderr
    assert [t["state"] for t in read_csv(tmp_path / "run" / "trials.csv")] == ["COMPLETE"] * 2
    assert polymodal.load(tmp_path / "run" / "best.safetensors")


def test_an_interrupted_trial_is_recorded_as_interrupted(tmp_path, monkeypatch):
    from polymodal._training import engine

    def interrupt(*_: object) -> str:  # Ctrl-C at the end of the trial's training
        raise KeyboardInterrupt

    table = write_grouped_table(tmp_path)
    monkeypatch.setattr(engine, "plot_curves", interrupt)
    with pytest.raises(KeyboardInterrupt):
        polymodal.tune(searched(epochs=1), table, trials=2, output=tmp_path / "t", pruning=False)
    rows = read_csv(tmp_path / "t" / "trials.csv")
    assert [(r["state"], r["error"]) for r in rows] == [
        ("FAIL", "interrupted (Ctrl-C); a rerun of the command goes on with new trials")]


def test_an_interrupted_tune_says_the_same_command_goes_on(tmp_path, monkeypatch, capsys):
    from polymodal._training import engine

    def interrupt(*_: object) -> str:
        raise KeyboardInterrupt

    table = write_grouped_table(tmp_path)
    monkeypatch.setattr(engine, "plot_curves", interrupt)
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump(searched(epochs=1)))
    assert main(["tune", str(spec), "--data", str(table), "--trials", "2", "-o",
                 str(tmp_path / "t"), "--quiet"]) == 130
    err = capsys.readouterr().err
    assert ("the study keeps the trials that finished (trials.csv has them): the same command"
            " goes on to --trials") in err and err.rstrip().endswith("interrupted")


def test_a_search_stopped_by_failures_says_where_its_best_trial_is(tmp_path, monkeypatch):
    from polymodal._training import tune

    monkeypatch.setattr(tune, "MAX_FAILURES_IN_A_ROW", 1)  # the first failure stops it
    decays = [0.0001, *(float(f"{k}e6") for k in range(1, 10))]  # all but the first diverge
    spec = searched(epochs=2, search={"training.weight_decay": {"type": "categorical",
                                                               "choices": decays}})
    spec["training"]["weight_decay"] = 0.0001  # the spec as written: the first trial
    table = write_grouped_table(tmp_path)
    with pytest.raises(polymodal.PolymodalError, match=r"1 trials in a row failed; the last one:"
                       r" .*diverged.*\. The best trial so far is trial \d+ \(loss \d\.\d{4}\):"
                       r" its spec is in best\.yaml, its model .*model\.safetensors"):
        polymodal.tune(spec, table, trials=8, output=tmp_path / "t", pruning=False,
                       sampler_seed=0)
    assert (tmp_path / "t" / "best.yaml").is_file()

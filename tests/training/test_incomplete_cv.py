"""Cross-validation and search on incomplete data: a class confined to one fold, a run stopped
halfway, rows without an input, a trial that diverges."""

from __future__ import annotations

import json

import pytest
import yaml

import polymodal
from polymodal._cli import main
from polymodal._training import fold_run
from training_data import read_csv, spec_data, table_spec, write_csv, write_dataset, write_grouped_table


def _confined(tmp_path, name: str = "grouped.csv"):
    """The grouped table with a third class, 'scrub', found only in sites of fold 3."""
    table = write_grouped_table(tmp_path, name=name)
    rows = read_csv(table)
    for row in rows:
        if row["site"] in ("s02", "s05"):  # both in fold 3 (site number % 3 == 2)
            row["label"] = "scrub"
    return write_csv(table, rows)


@pytest.mark.parametrize("policy", ["fail", "skip"])
def test_a_class_confined_to_one_fold_is_scored_as_it_is(tmp_path, capsys, policy):
    table = _confined(tmp_path)
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump(table_spec()))
    out = tmp_path / "cv"
    assert main(["cv", str(spec), "--data", str(table), "--fold-column", "fold",
                 "--group-by", "site", "-o", str(out), "--on-bad-row", policy]) == 0
    captured = capsys.readouterr()
    note = ("the training rows of some folds hold no row of a class of column 'label' (fold 3:"
            " 'scrub')")
    assert note in captured.err and note in (out / "report.txt").read_text()
    report = json.loads((out / "report.json").read_text())
    assert "fold 3: 'scrub'" in report["untrained_classes"]
    # every fold's model has an output for every class of the table, in one order
    predictions = read_csv(out / "oof_predictions.csv")
    assert len(predictions) == 48
    assert {"label_prob_no", "label_prob_scrub", "label_prob_yes"} <= set(predictions[0])
    scrub = [r for r in predictions if r["label_true"] == "scrub"]
    assert len(scrub) == 8 and {r["fold"] for r in scrub} == {"3"}
    assert all(r["label"] != "scrub" for r in scrub)  # never learned there: recall 0


def test_explicit_class_names_fix_the_order_and_refuse_other_classes(tmp_path):
    table = write_grouped_table(tmp_path)
    spec = table_spec()
    spec["heads"]["label"]["classes"] = ["yes", "no", "maybe"]
    result = polymodal.train(spec, table, tmp_path / "m.safetensors", progress=False)
    assert result.model.fitted_state["heads"]["label"]["classes"] == ["yes", "no", "maybe"]
    predicted = polymodal.predict(tmp_path / "m.safetensors", table)["columns"]
    assert list(predicted)[1:5] == ["label", "label_prob_yes", "label_prob_no", "label_prob_maybe"]
    rows = read_csv(table)
    rows[5]["label"] = "perhaps"
    with pytest.raises(polymodal.DataError, match="row 6, column 'label': class 'perhaps' is not one"
                       r" heads.label.classes names \(yes, no, maybe\)"):
        polymodal.train(spec, write_csv(tmp_path / "other.csv", rows), tmp_path / "n.safetensors",
                        progress=False)
    spec["heads"]["label"]["classes"] = ["yes", "yes"]
    with pytest.raises(polymodal.SpecError, match="heads.label.classes: .*class 'yes' is named twice"):
        polymodal.load_spec(spec)


def test_a_stopped_cross_validation_keeps_its_finished_folds(tmp_path, capsys, monkeypatch):
    table = write_grouped_table(tmp_path)
    out = tmp_path / "cv"
    real = fold_run.run_fold
    calls = []
    stop = [True]

    def failing_on_fold_3(spec, table, plan, fold, *args, **kwargs):
        calls.append(fold)
        if fold == 2 and stop.pop() if stop else False:
            raise polymodal.DataError("stopped")  # failed mid-run (or killed, interrupted)
        return real(spec, table, plan, fold, *args, **kwargs)

    monkeypatch.setattr("polymodal._training.cv.run_fold", failing_on_fold_3)
    with pytest.raises(polymodal.DataError, match="stopped"):
        polymodal.cv(table_spec(), table, folds=4, group_by="site", output=out)
    assert (out / "tab" / "fold_2" / "fold.json").is_file()
    assert not (out / "tab" / "fold_3" / "fold.json").exists()

    lines: list[str] = []
    result = polymodal.cv(table_spec(), table, folds=4, group_by="site", output=out, log=lines.append)
    assert calls == [0, 1, 2, 2, 3]  # folds 1 and 2 reused, 3 and 4 trained
    assert sum("(finished in an earlier run: reused)" in line for line in lines) == 2
    fresh = polymodal.cv(table_spec(), table, folds=4, group_by="site", output=tmp_path / "cv2")
    assert result.scores[0].folds == fresh.scores[0].folds  # the same scores as one run
    assert (out / "oof_predictions.csv").read_text() == (tmp_path / "cv2" / "oof_predictions.csv").read_text()

    # A changed spec (or table, folds, options) runs its folds afresh, with a note.
    lines.clear()
    calls.clear()
    polymodal.cv(table_spec(epochs=2), table, folds=4, group_by="site", output=out, log=lines.append)
    assert any("holds folds of a cross-validation with another spec" in line for line in lines)
    assert not any("reused" in line for line in lines) and calls == [0, 1, 2, 3]


def test_cv_reports_metrics_by_the_inputs_each_row_holds(tmp_path):
    table = write_dataset(tmp_path, rows=48)
    rows = read_csv(table)
    for row in rows[::4]:
        row["photo"] = ""
    write_csv(table, rows)
    out = tmp_path / "cv"
    result = polymodal.cv(spec_data(epochs=1), table, folds=3, output=out)
    summary = json.loads((out / "report.json").read_text())["specs"]["toy"]["by_presence"]["label"]
    assert summary["photo + report"]["rows"] == 36 and summary["report only"]["rows"] == 12
    assert set(summary["report only"]["mean"]) == {"accuracy", "balanced_accuracy", "macro_f1", "auroc"}
    assert "by the inputs each row holds (mean ± sd over folds)" in result.table()
    lines = read_csv(out / "scores_by_inputs.csv")
    assert {r["inputs"] for r in lines} == {"photo + report", "report only"}
    assert sum(int(r["rows"]) for r in lines if r["metric"] == "accuracy") == 48
    assert {r["inputs_used"] for r in read_csv(out / "oof_predictions.csv")} == {
        "photo + report", "report only"}


def test_a_diverging_trial_fails_alone_and_the_study_goes_on(tmp_path):
    pytest.importorskip("optuna")
    table = write_grouped_table(tmp_path)
    spec = table_spec(epochs=2, val_fraction=0.25)
    spec["training"]["optimizer"] = "sgd"
    spec["search"] = {"training.weight_decay": {"type": "categorical", "choices": [0.0, 1e300]}}
    out = tmp_path / "tune"
    result = polymodal.tune(spec, table, trials=3, output=out, sampler_seed=0, pruning=False)
    trials = read_csv(out / "trials.csv")
    failed = [t for t in trials if t["state"] == "FAIL"]
    assert failed and all("training diverged" in t["error"] for t in failed)
    assert result.best_trial is not None and (out / "best.yaml").is_file()


def test_a_resumed_study_removes_what_killed_trials_left(tmp_path):
    optuna = pytest.importorskip("optuna")
    table = write_grouped_table(tmp_path)
    spec = table_spec(epochs=1, val_fraction=0.25)
    spec["search"] = {"training.lr": {"type": "float", "low": 0.01, "high": 0.1}}
    out = tmp_path / "tune"
    polymodal.tune(spec, table, trials=1, output=out)
    # A killed trial: failed in the study, its checkpoint and a lock file of a run that ended.
    study = optuna.load_study(study_name="tab", storage=f"sqlite:///{out / 'study.db'}")
    killed = study.ask()
    study.tell(killed, state=optuna.trial.TrialState.FAIL)
    folder = out / "trials" / f"trial_{killed.number}"
    folder.mkdir(parents=True)
    (folder / "checkpoint.pt").write_bytes(b"partial")
    (folder / ".model.safetensors.polymodal-lock").write_text('{"pid": 999999}\n')
    lines: list[str] = []
    polymodal.tune(spec, table, trials=2, output=out, log=lines.append)
    assert not (folder / "checkpoint.pt").exists()
    assert not (folder / ".model.safetensors.polymodal-lock").exists()
    assert any("removed 1 lock file(s)" in line for line in lines)


def test_train_and_cv_read_group_keys_by_one_rule(tmp_path):
    """A group value is its text, stripped ('s01 ' is 's01'); an empty one names its row."""
    from polymodal._data.table import read_table
    from polymodal._training.rows import split_rows

    table = write_grouped_table(tmp_path)
    rows = read_csv(table)
    rows[1]["site"] = "s00 "
    split = read_table(write_csv(tmp_path / "spaced.csv", rows))
    train, val = split_rows(split, 0.25, "site", seed=0)
    assert not {split.columns["site"][i].strip() for i in train} & {
        split.columns["site"][i].strip() for i in val}
    rows[2]["site"] = ""
    empty = write_csv(tmp_path / "empty.csv", rows)
    for run in (lambda: polymodal.train(table_spec(), empty, tmp_path / "m.safetensors",
                                        group_by="site", progress=False),
                lambda: polymodal.cv(table_spec(), empty, folds=3, group_by="site",
                                     output=tmp_path / "cv")):
        with pytest.raises(polymodal.DataError, match="row 3, column 'site': empty; every row needs"
                           " a value to group"):
            run()


def test_compared_specs_are_checked_before_any_fold_and_scored_on_the_same_rows(tmp_path, capsys):
    """A compared spec that reads the photo alone cannot read the rows without one: the run
    stops before any fold trains (naming that spec), or with --on-bad-row skip leaves those
    rows out of every spec, so the paired differences compare the same rows."""
    table = write_dataset(tmp_path, rows=48)
    rows = read_csv(table)
    for row in rows[::4]:
        row["photo"] = ""
    write_csv(table, rows)
    fused, photo_only = tmp_path / "fused.yaml", tmp_path / "photo_only.yaml"
    fused.write_text(yaml.safe_dump(spec_data(epochs=1)))
    alone = spec_data(epochs=1)
    alone["name"] = "photo_only"
    del alone["inputs"]["report"], alone["fusion"]
    photo_only.write_text(yaml.safe_dump(alone))
    out = tmp_path / "cv"
    command = ["cv", str(fused), "--data", str(table), "--folds", "2", "--compare",
               str(photo_only), "-o", str(out)]
    assert main(command) == 1  # its photo, a feature map, cannot feed the head alone
    assert "takes a vector, not a feature map" in capsys.readouterr().err
    assert not (out / "toy").exists()
    alone["inputs"]["photo"]["backbone"] = {"type": "timm", "model": "resnet10t"}
    photo_only.write_text(yaml.safe_dump(alone))
    assert main(command) == 1
    err = capsys.readouterr().err
    assert f"spec {photo_only}: " in err and "column 'photo'" in err and "(12 bad rows in the table)" in err
    assert not (out / "toy").exists()  # stopped before the first spec's first fold
    assert main([*command, "--on-bad-row", "skip"]) == 0
    captured = capsys.readouterr()
    note = "12 of 48 rows are left out (--on-bad-row skip): rows some spec cannot read (photo_only 12;"
    assert note in captured.err and "so the comparison is paired" in captured.err
    report = json.loads((out / "report.json").read_text())
    assert report["rows"] == 36 and note in report["rows_left_out"]
    assert note in (out / "report.txt").read_text()
    for name in ("toy", "photo_only"):
        assert len(read_csv(out / f"{name}_oof_predictions.csv")) == 36


def test_a_spec_that_fails_leaves_the_report_of_those_that_finished(tmp_path, monkeypatch):
    table = write_dataset(tmp_path, rows=32)
    out = tmp_path / "cv"
    second = spec_data(epochs=1)
    second["name"] = "second"
    real = fold_run.train_part

    def train(spec, *args, **kwargs):
        if spec.name == "second":
            raise KeyboardInterrupt
        return real(spec, *args, **kwargs)

    monkeypatch.setattr(fold_run, "train_part", train)
    with pytest.raises(KeyboardInterrupt):
        polymodal.cv(spec_data(epochs=1), table, folds=2, compare=[second], output=out)
    report = json.loads((out / "report.json").read_text())
    assert list(report["specs"]) == ["toy"] and len(report["specs"]["toy"]["folds"]) == 2


def test_a_class_with_few_training_rows_in_a_fold_is_noted(tmp_path):
    from polymodal._data.table import read_table
    from polymodal._spec import load_spec
    from polymodal._training.fold_classes import untrained_classes
    from polymodal._training.settings import FoldSettings

    table = write_grouped_table(tmp_path)
    rows = read_csv(table)
    rows[0]["label"] = rows[1]["label"] = "rare"  # site s00: fold 1
    rows[4]["label"] = "rare"  # site s01: fold 2
    read = read_table(write_csv(table, rows))
    spec = load_spec(table_spec())
    plan = FoldSettings(group_by="site", fold_column="fold").plan(read, spec, seed=0)
    note = untrained_classes(read, spec, plan)
    assert note is not None and "no row of a class" not in note
    assert ("fewer than 5 rows of a class of column 'label' (fold 1: 'rare' (1); fold 2: 'rare'"
            " (2); fold 3: 'rare' (3))") in note
    assert note.endswith("can hardly learn the class")  # the user's own folds: nothing to add
    for settings, advice in [
            (FoldSettings(folds=2, group_by="site"), "; --stratify, or groups that spread the"
             " class, give every fold more of it"),
            (FoldSettings(folds=2, group_by="site", stratify=True), "; the folds are already"
             " stratified: groups of 'site' that spread the class would give every fold more"),
            (FoldSettings(folds=2, stratify=True), "; the folds are already stratified: only more"
             " rows of the class would help")]:
        said = untrained_classes(read, spec, settings.plan(read, spec, seed=0)) or ""
        assert advice in said, (settings, said)


def test_tune_reports_the_best_trial_by_the_inputs_each_row_holds(tmp_path):
    pytest.importorskip("optuna")
    table = write_dataset(tmp_path, rows=48)
    rows = read_csv(table)
    for row in rows[::3]:
        row["photo"] = ""
    write_csv(table, rows)
    spec = spec_data(epochs=1)
    spec["search"] = {"training.lr": {"type": "float", "low": 0.001, "high": 0.01, "log": True}}
    by_folds = polymodal.tune(spec, table, trials=1, folds=2, output=tmp_path / "folds",
                              pruning=False)
    text = by_folds.text()
    assert "best trial, head label, by the inputs each row holds (held-out folds, mean over 2):" in text
    assert "photo + report" in text and "report only" in text
    kept = json.loads((tmp_path / "folds" / "trials" / "trial_0" / "by_inputs.json").read_text())
    assert sum(v["rows"] for v in kept["heads"]["label"].values()) == 48
    by_split = polymodal.tune(spec, table, trials=1, output=tmp_path / "split", pruning=False)
    assert "by the inputs each row holds (validation rows):" in by_split.text()


def test_a_grouped_validation_split_far_larger_than_asked_is_noted(tmp_path, capsys):
    table = write_grouped_table(tmp_path, groups=3, per_group=16)
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump(table_spec(val_fraction=0.1)))
    assert main(["train", str(spec), "--data", str(table), "-o", str(tmp_path / "m.safetensors"),
                 "--group-by", "site"]) == 0
    assert ("note: the validation split holds 16 of 48 rows (33%) for a val_fraction of 0.1: the"
            " groups of column 'site' are large") in capsys.readouterr().err


def test_a_class_whose_every_row_falls_in_the_validation_split_is_noted(tmp_path):
    from polymodal._data.table import read_table
    from polymodal._training.rows import split_rows

    table = write_grouped_table(tmp_path)
    rows = read_csv(table)
    for row in rows[:4]:  # every row of site s00
        row["label"] = "rare"
    write_csv(table, rows)
    read = read_table(table)
    seed = next(s for s in range(100)  # a split that puts site s00 in the validation rows
                if "s00" in set(read.take(split_rows(read, 0.25, "site", s)[1]).columns["site"]))
    said: list[str] = []
    polymodal.train(table_spec(), table, tmp_path / "m.safetensors", group_by="site",
                    val_fraction=0.25, options={"seed": seed}, progress=False, log=said.append)
    assert any("every row of class(es) 'rare' of column 'label' fell in the validation split:"
               " the model never learns them" in line for line in said), said
    trained = next(s for s in range(100)
                   if "s00" in set(read.take(split_rows(read, 0.25, "site", s)[0]).columns["site"]))
    said.clear()
    polymodal.train(table_spec(), table, tmp_path / "n.safetensors", group_by="site",
                    val_fraction=0.25, options={"seed": trained}, progress=False, log=said.append)
    assert not any("fell in the validation split" in line for line in said), said


def test_an_image_unreadable_past_its_header_is_found_before_any_fold_trains(tmp_path, capsys):
    """A truncated PNG passes the header check: cv reads every row once before the folds, so
    it stops the run there (fail) or is left out of every fold and spec alike (skip)."""
    table = write_dataset(tmp_path, rows=24)
    photo = tmp_path / read_csv(table)[6]["photo"]
    photo.write_bytes(photo.read_bytes()[:60])  # the header whole, the pixels cut
    spec = tmp_path / "fused.yaml"
    spec.write_text(yaml.safe_dump(spec_data(epochs=1)))
    alone = {**spec_data(epochs=1), "name": "report_only"}
    alone["inputs"] = {"report": alone["inputs"]["report"]}
    alone.pop("fusion")
    other = tmp_path / "report_only.yaml"
    other.write_text(yaml.safe_dump(alone))
    out = tmp_path / "cv"
    args = ["cv", str(spec), "--data", str(table), "--folds", "2", "--compare", str(other),
            "-o", str(out), "--quiet"]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert "row 7, column 'photo'" in err and "truncated" in err, err
    assert not list(out.glob("**/*.safetensors")), "no fold trained"
    assert main([*args, "--on-bad-row", "skip"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert "1 of 24 rows are left out (--on-bad-row skip)" in json.dumps(report)
    counts = {len(read_csv(p)) for p in out.glob("*_oof_predictions.csv")}
    assert counts == {23}, counts  # both specs scored on the same 23 rows: paired


def test_tune_finds_bad_rows_before_any_trial_and_says_what_it_left_out(tmp_path):
    pytest.importorskip("optuna")
    table = write_dataset(tmp_path, rows=24)
    photo = tmp_path / read_csv(table)[2]["photo"]
    photo.write_bytes(photo.read_bytes()[:60])  # found only when decoded
    spec = spec_data(epochs=1)
    spec["search"] = {"training.lr": {"type": "float", "low": 0.001, "high": 0.01, "log": True}}
    with pytest.raises(polymodal.DataError, match="row 3, column 'photo'.*truncated"):
        polymodal.tune(spec, table, trials=1, output=tmp_path / "failed", pruning=False)
    assert not (tmp_path / "failed" / "trials").exists()  # no trial ran
    said: list[str] = []
    found = polymodal.tune(spec, table, trials=1, folds=2, output=tmp_path / "skipped",
                           pruning=False, on_bad_row="skip", log=said.append)
    note = "1 of 24 rows are left out (--on-bad-row skip): rows the spec cannot read (e.g. "
    assert any(note in line for line in said), said
    assert any(note in line for line in found.summary()["notes"]), found.summary()

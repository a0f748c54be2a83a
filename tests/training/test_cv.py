"""Cross-validation: folds that keep groups together, reproducible scores, specs compared on
the same folds."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

import polymodal
from polymodal._cli import main
from polymodal._data.table import read_table
from polymodal._training.folds import assign_folds, folds_from_column

from training_data import read_csv, table_spec, write_grouped_table


def test_folds_are_disjoint_cover_every_row_and_keep_groups_together():
    rng = np.random.default_rng(1)
    groups = np.array([f"g{i}" for i in rng.integers(0, 40, 300)], dtype=object)
    fold_of_row = assign_folds(300, 5, groups=groups, seed=3)
    assert fold_of_row.shape == (300,) and set(fold_of_row) == {0, 1, 2, 3, 4}
    for g in set(groups):  # one fold a group
        assert len(set(fold_of_row[groups == g])) == 1
    sizes = np.bincount(fold_of_row)
    assert sizes.max() - sizes.min() <= max(np.unique(groups, return_counts=True)[1])
    assert np.array_equal(fold_of_row, assign_folds(300, 5, groups=groups, seed=3))
    assert not np.array_equal(fold_of_row, assign_folds(300, 5, groups=groups, seed=4))


def test_stratified_folds_give_each_fold_the_share_of_every_class():
    rng = np.random.default_rng(0)
    strata = np.array(["rare"] * 20 + ["common"] * 180, dtype=object)[rng.permutation(200)]
    fold_of_row = assign_folds(200, 4, strata=strata, seed=0)
    for fold in range(4):
        assert (strata[fold_of_row == fold] == "rare").sum() == 5
        assert (fold_of_row == fold).sum() == 50


def test_stratified_grouped_folds_stay_group_pure():
    rng = np.random.default_rng(2)
    groups = np.array([f"p{i}" for i in rng.integers(0, 30, 240)], dtype=object)
    strata = np.array(["a", "b", "c"], dtype=object)[rng.integers(0, 3, 240)]
    fold_of_row = assign_folds(240, 3, groups=groups, strata=strata, seed=0)
    for g in set(groups):
        assert len(set(fold_of_row[groups == g])) == 1


def test_too_few_groups_and_bad_fold_columns_are_clear_errors(tmp_path):
    with pytest.raises(polymodal.DataError, match="3 groups cannot fill 5 folds; use at most --folds 3"):
        assign_folds(9, 5, groups=np.array(list("aaabbbccc"), dtype=object))
    table = read_table(write_grouped_table(tmp_path))
    assert sorted(set(folds_from_column(table, "fold", None))) == [0, 1, 2]
    with pytest.raises(polymodal.DataError, match="names 3 folds .* but --folds is 5"):
        folds_from_column(table, "fold", 5)
    with pytest.raises(polymodal.DataError, match="no column 'folds' to take the fold from. Did you mean 'fold'"):
        folds_from_column(table, "folds", None)


def test_a_row_without_a_group_is_named(tmp_path):
    rows = read_csv(write_grouped_table(tmp_path))
    rows[6]["site"] = ""
    path = tmp_path / "holes.csv"
    with path.open("w", newline="") as handle:
        import csv

        writer = csv.DictWriter(handle, list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    with pytest.raises(polymodal.DataError, match=r"holes.csv row 7, column 'site': empty"):
        polymodal.cv(table_spec(), path, folds=3, group_by="site", output=tmp_path / "cv")


def test_a_relative_output_folder_holds_every_file_the_report_names(tmp_path, monkeypatch):
    table = write_grouped_table(tmp_path)
    monkeypatch.chdir(tmp_path)
    result = polymodal.cv(table_spec(), table, folds=3, group_by="site", output=Path("rel.cv"))
    predictions = result.scores[0].predictions
    assert predictions is not None and predictions.is_file()
    assert predictions.resolve() == (tmp_path / "rel.cv" / "oof_predictions.csv")
    assert not (tmp_path / "rel.cv" / "rel.cv").exists()
    report = json.loads((tmp_path / "rel.cv" / "report.json").read_text())
    assert Path(report["specs"]["tab"]["predictions"]).resolve() == predictions.resolve()


def test_same_seed_same_scores_and_what_a_run_leaves(tmp_path):
    table = write_grouped_table(tmp_path)
    first = polymodal.cv(table_spec(), table, folds=3, group_by="site", output=tmp_path / "a")
    for fold in range(3):  # each fold's training and held-out rows: disjoint, every row
        held_out, trained_on = first.plan.test_positions(fold), first.plan.train_positions(fold)
        assert not set(held_out) & set(trained_on) and len(held_out) + len(trained_on) == 48
    again = polymodal.cv(table_spec(), table, folds=3, group_by="site", output=tmp_path / "b")
    assert first.scores[0].folds == again.scores[0].folds
    assert np.array_equal(first.plan.fold_of_row, again.plan.fold_of_row)
    out = tmp_path / "a"
    folds = read_csv(out / "folds.csv")
    by_site: dict[str, set[str]] = {}
    for row in folds:
        by_site.setdefault(row["site"], set()).add(row["fold"])
    assert all(len(f) == 1 for f in by_site.values())  # group-pure
    predictions = read_csv(out / "oof_predictions.csv")  # every row once, in its own fold
    assert [p["row"] for p in predictions] == [f["row"] for f in folds]
    assert [p["fold"] for p in predictions] == [f["fold"] for f in folds]
    assert {"label_true", "label", "label_prob_no", "label_prob_yes", "site"} <= set(predictions[0])
    report = json.loads((out / "report.json").read_text())
    scores = report["specs"]["tab"]
    assert len(scores["folds"]) == 3 and report["grouped_by"] == "site"
    accuracies = [f["label"]["accuracy"] for f in scores["folds"]]
    assert scores["mean"]["label"]["accuracy"] == pytest.approx(np.mean(accuracies))
    assert scores["sd"]["label"]["accuracy"] == pytest.approx(np.std(accuracies, ddof=1))
    for fold in (1, 2, 3):  # checkpoints gone, models and logs kept
        assert not (out / "tab" / f"fold_{fold}" / "checkpoint.pt").exists()
        assert (out / "tab" / f"fold_{fold}" / "model.safetensors").is_file()
    assert len(read_csv(out / "scores.csv")) == 3 * 5  # folds x (loss + 4 metrics)


def test_checkpoints_are_kept_when_asked(tmp_path):
    table = write_grouped_table(tmp_path)
    polymodal.cv(table_spec(), table, folds=2, group_by="site", output=tmp_path / "cv",
                 keep_checkpoints=True)
    assert (tmp_path / "cv" / "tab" / "fold_1" / "checkpoint.pt").is_file()


def test_cli_compares_specs_fold_by_fold(tmp_path, capsys):
    table = write_grouped_table(tmp_path)
    fused = tmp_path / "both.yaml"
    fused.write_text(yaml.safe_dump(table_spec(name="both")))
    only_x = table_spec(name="x_only")
    only_x["inputs"]["record"]["adapter"] = {"type": "tabular", "numerical": ["x"]}
    other = tmp_path / "x_only.yaml"
    other.write_text(yaml.safe_dump(only_x))
    code = main(["cv", str(fused), "--data", str(table), "--fold-column", "fold", "--compare",
                 str(other), "-o", str(tmp_path / "cv"), "--quiet"])
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert "3 folds of 16, 16, 16 rows (taken from column 'fold')" in printed
    header = next(line for line in printed.splitlines() if line.startswith("head label"))
    assert header.split() == ["head", "label", "both", "x_only", "both", "-", "x_only"]
    accuracy = next(line for line in printed.splitlines() if line.startswith("accuracy"))
    assert accuracy.count("±") == 3 and "/3 better)" in accuracy
    assert "  label.auroc: Area under the ROC curve. With more than two classes: each class" \
        " against the rest, averaged over the classes that have rows" in " ".join(printed.split("\n"))
    report = json.loads((tmp_path / "cv" / "report.json").read_text())
    both, x = (np.array([f["label"]["accuracy"] for f in report["specs"][n]["folds"]])
               for n in ("both", "x_only"))
    paired = report["differences"]["both - x_only"]["label"]["accuracy"]
    assert paired["mean"] == pytest.approx((both - x).mean())
    assert paired["first_better"] == int((both > x).sum())
    assert (tmp_path / "cv" / "both_oof_predictions.csv").is_file()
    assert (tmp_path / "cv" / "x_only_oof_predictions.csv").is_file()


def test_a_column_that_looks_like_groups_is_hinted_at(tmp_path):
    table = write_grouped_table(tmp_path)
    lines: list[str] = []
    result = polymodal.cv(table_spec(), table, folds=3, output=tmp_path / "cv", log=lines.append)
    hint = "column 'site' (12 values on 48 rows, 4.0 a value) looks like groups"
    assert sum("looks like groups" in line for line in lines) == 1, lines  # not once a fold
    assert any(line.startswith("note: the folds are drawn row by row") and hint in line
               and "--group-by site" in line for line in lines)
    assert hint in result.table()
    # training alone says it where the validation split is drawn row by row ...
    said: list[str] = []
    polymodal.train(table_spec(), table, tmp_path / "m.safetensors", log=said.append, progress=False)
    assert any(line.startswith("note: the validation rows were drawn row by row") and hint in line
               for line in said)
    # ... and not where the groups are named
    said.clear()
    polymodal.train(table_spec(group_by="site"), table, tmp_path / "m.safetensors",
                    log=said.append, progress=False)
    assert not any("looks like groups" in line for line in said)


def test_stratify_needs_a_categorical_target(tmp_path):
    table = write_grouped_table(tmp_path)
    spec = table_spec()
    spec["heads"] = {"value": {"type": "regression"}}
    # the head says whether its target holds classes (TargetCodec.holds_classes), not a guess
    with pytest.raises(polymodal.DataError, match="--stratify balances the classes of the first"
                       " head's target, and head 'value' .* predicts no classes"):
        polymodal.cv(spec, table, folds=3, stratify=True, output=tmp_path / "cv")


@pytest.mark.parametrize("arguments, message", [
    (["--fold-column", "fold", "--group-by", "kind"],
     "group 'a' of column 'kind' has rows in 3 folds of column 'fold' (2 such group(s))"),
    (["--fold-column", "fold", "--stratify"], "--stratify needs folds to draw"),
    (["--folds", "1"], "--folds 1: cross-validation needs at least 2 folds"),
    (["--group-by", "sight"], "no column 'sight' to group the folds by. Did you mean 'site'?"),
    (["--compare", "missing.yaml"], "missing.yaml: no such file"),
])
def test_cli_mistakes_are_one_clear_message(tmp_path, capsys, arguments, message):
    table = write_grouped_table(tmp_path)
    spec = tmp_path / "tab.yaml"
    spec.write_text(yaml.safe_dump(table_spec()))
    assert main(["cv", str(spec), "--data", str(table), "-o", str(tmp_path / "cv"), *arguments]) == 1
    error = capsys.readouterr().err
    assert message in error and "Traceback" not in error


def test_named_folds_split_their_validation_rows_by_the_groups_given(tmp_path):
    table = write_grouped_table(tmp_path)
    sites = {r["site"]: r["fold"] for r in read_csv(table)}
    result = polymodal.cv(table_spec(), table, fold_column="fold", group_by="site",
                          output=tmp_path / "cv", progress=False)
    assert result.plan.describe() == ("3 folds of 16, 16, 16 rows (taken from column 'fold';"
                                      " validation split by 'site')")
    for fold in (1, 2, 3):
        held = read_csv(tmp_path / "cv" / "tab" / f"fold_{fold}" / "validation_rows.csv")
        held_sites = {r["site"] for r in held}
        # Whole sites of the training folds, not a whole fold (which would halve the training).
        assert held_sites and all(sites[s] != str(fold) for s in held_sites)
        assert len({sites[s] for s in held_sites}) <= 2 and len(held) < 16
    written = read_csv(tmp_path / "cv" / "folds.csv")  # which fold is which, and the groups
    assert list(written[0]) == ["row", "fold", "fold_value", "site"]
    assert all(r["fold"] == r["fold_value"] and sites[r["site"]] == r["fold"] for r in written)
    # without groups, the note says each fold's validation rows ignore the group-like column
    lines: list[str] = []
    polymodal.cv(table_spec(), table, fold_column="fold", output=tmp_path / "cv2", log=lines.append)
    assert any(line.startswith("note: each fold's validation rows are drawn row by row, but"
                               " column 'site'") and "pass --group-by site (each group must"
                               in line for line in lines), lines


def test_folds_written_out_and_named_again_give_the_same_scores(tmp_path):
    from training_data import write_csv

    table = write_grouped_table(tmp_path)
    drawn = polymodal.cv(table_spec(), table, folds=3, group_by="site", output=tmp_path / "a")
    fold_of = {r["row"]: r["fold"] for r in read_csv(tmp_path / "a" / "folds.csv")}
    rows = read_csv(table)
    for number, row in enumerate(rows, start=1):
        row["fold"] = fold_of[str(number)]
    named_table = write_csv(tmp_path / "named.csv", rows)
    named = polymodal.cv(table_spec(), named_table, fold_column="fold", group_by="site",
                         output=tmp_path / "b")
    assert named.scores[0].folds == drawn.scores[0].folds


def test_the_likely_group_column_is_the_one_that_fixes_other_columns():
    from polymodal._training.folds import group_like_columns

    rng = np.random.default_rng(0)
    rows = [(f"P{p:02d}", visit, 40 + p % 7, "MF"[p % 2], round(float(rng.normal()), 3))
            for p in range(12) for visit in range(6)]
    columns = dict(zip(["patient_id", "visit", "age", "sex", "marker"], map(list, zip(*rows))))
    found = group_like_columns(read_table(columns), used=["marker"])
    # A visit number repeats more, but only a patient fixes the patient's age and sex.
    assert [g.column for g in found][:2] == ["patient_id", "age"]
    assert "visit" in [g.column for g in found] and "marker" not in [g.column for g in found]


def test_a_missing_group_column_in_train_names_the_tables_columns(tmp_path):
    table = write_grouped_table(tmp_path)
    with pytest.raises(polymodal.DataError, match="no column 'sitte' to group the validation split"
                       " by. Did you mean 'site'. The table's columns are: site, fold, x, kind"):
        polymodal.train(table_spec(), table, tmp_path / "m.safetensors", group_by="sitte",
                        progress=False)



@pytest.mark.parametrize("command", ["train", "cv", "tune"])
@pytest.mark.parametrize("blank", ["", "  "])
def test_a_blank_group_column_is_refused_alike_by_train_cv_and_tune(tmp_path, capsys, command,
                                                                      blank):
    """One rule for --group-by: a blank name is a mistake, never taken to mean no grouping."""
    table = write_grouped_table(tmp_path)
    spec_data = table_spec()
    spec_data["search"] = {"training.lr": {"type": "float", "low": 0.001, "high": 0.01}}
    spec = tmp_path / "tab.yaml"
    spec.write_text(yaml.safe_dump(spec_data))
    out = {"train": ["-o", str(tmp_path / "m.safetensors")], "cv": ["-o", str(tmp_path / "cv")],
           "tune": ["-o", str(tmp_path / "tune"), "--trials", "1"]}[command]
    assert main([command, str(spec), "--data", str(table), "--group-by", blank, *out]) == 1
    error = capsys.readouterr().err
    assert f"{blank!r}: name the column whose groups stay together" in error
    assert "Traceback" not in error and not (tmp_path / "m.safetensors").exists()


def test_group_values_are_compared_without_surrounding_spaces(tmp_path):
    from polymodal._training.folds import group_keys
    from training_data import write_csv

    rows = read_csv(write_grouped_table(tmp_path))
    rows[1]["site"] = f" {rows[0]['site']} "
    table = read_table(write_csv(tmp_path / "spaced.csv", rows))
    keys = group_keys(table, "site", "group")
    assert keys[0] == keys[1]


def test_a_class_missing_from_a_fold_is_noted(tmp_path):
    from training_data import write_csv

    rows = read_csv(write_grouped_table(tmp_path))
    rows[0]["label"] = rows[4]["label"] = "rare"  # sites s00 and s01: folds 1 and 2, not 3
    table = write_csv(tmp_path / "rare.csv", rows)
    lines: list[str] = []
    result = polymodal.cv(table_spec(), table, fold_column="fold", output=tmp_path / "cv",
                          log=lines.append)
    note = next(line for line in lines if "has no row of class" in line)
    assert note == ("note: column 'label' has no row of class 'rare' in fold(s) 3 of 3: metrics"
                    " there leave the class out (recall, one-vs-rest AUROC)")
    assert result.summary()["absent_classes"] == note.removeprefix("note: ")
    assert note in result.table()

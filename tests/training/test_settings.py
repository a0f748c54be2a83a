"""The settings objects cv, tune and train share, and the run folder of cv and tune."""

from __future__ import annotations

import pytest

import polymodal
from polymodal._spec import load_spec
from polymodal._training.engine import CHECKPOINT
from polymodal._training.run_folder import RunFolder
from polymodal._training.settings import FoldSettings, RunSettings
from training_data import spec_data


def test_an_override_wins_over_the_spec_and_none_is_no_override():
    spec = load_spec(spec_data(epochs=2))
    settings = RunSettings({"epochs": 5, "seed": None})
    assert settings.overrides == {"epochs": 5}
    assert settings.option(spec, "epochs") == 5
    assert settings.option(spec, "seed") == spec.training.seed
    assert settings.resolved(spec).training.epochs == 5
    assert settings.folder(spec, "cv").name == f"{spec.name}.cv"


def test_an_override_is_checked_as_the_specs_own_value():
    with pytest.raises(polymodal.SpecError, match="training.epochs"):
        RunSettings({"epochs": 0}).resolved(load_spec(spec_data()))


def test_folds_are_asked_for_by_a_number_or_a_column():
    assert not FoldSettings().asked and not FoldSettings(stratify=True).asked
    assert FoldSettings(folds=3).asked and FoldSettings(fold_column="fold").asked


def test_a_run_folder_drops_checkpoints_unless_they_are_kept(tmp_path):
    for keep in (False, True):
        run = tmp_path / f"keep_{keep}"
        run.mkdir()
        (run / CHECKPOINT).write_text("x")
        RunFolder(tmp_path, "cv", keep_checkpoints=keep).drop_checkpoints([run])
        assert (run / CHECKPOINT).exists() == keep


def test_a_cv_folder_refuses_a_search_and_a_search_folder_a_cv(tmp_path):
    (tmp_path / "study.db").write_text("")
    RunFolder(tmp_path, "tune").refuse_other_kind()
    with pytest.raises(polymodal.PolymodalError, match="holds a hyperparameter search"
                       r" \(study.db, trials/\); give the cross-validation another -o"):
        RunFolder(tmp_path, "cv").refuse_other_kind()
    (tmp_path / "study.db").unlink()
    (tmp_path / "folds.csv").write_text("")
    RunFolder(tmp_path, "cv").refuse_other_kind()
    with pytest.raises(polymodal.PolymodalError, match=r"holds a cross-validation \(folds.csv\);"
                       " give the search another -o"):
        RunFolder(tmp_path, "tune").refuse_other_kind()

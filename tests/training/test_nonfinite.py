"""A model whose outputs are not numbers (NaN or infinite), as a diverged run leaves: no such
epoch is the best one or saved, and predict, evaluate and cv refuse such a model with one
message instead of a class picked from NaN scores (each library picks another)."""

from __future__ import annotations

import pytest
import torch
from training_data import table_spec, write_grouped_table

import polymodal
from polymodal._cli import main
from polymodal._errors import DivergedError
from polymodal._options import TrainingOptions
from polymodal._training.engine import _check_outputs, exploding_note
from polymodal._training.history import EpochRecord, Progress, Validation


@pytest.fixture(scope="module")
def broken(tmp_path_factory):
    """A trained table model whose head's weights are finite but so large that its outputs
    overflow (a model file holding NaN weights is refused when loaded), and its table."""
    folder = tmp_path_factory.mktemp("nonfinite")
    table = write_grouped_table(folder)
    model = polymodal.train(table_spec(), table, folder / "good.safetensors", progress=False).model
    with torch.no_grad():
        next(model.heads["label"].parameters()).fill_(3e38)
    return polymodal.save(model, folder / "nan.safetensors"), table


def test_predict_and_evaluate_refuse_outputs_that_are_not_numbers(broken, tmp_path, capsys):
    model, table = broken
    for args in (["predict", str(model), "--data", str(table), "-o", str(tmp_path / "p.csv")],
                 ["evaluate", str(model), "--data", str(table)]):
        assert main(args) == 1, args
        err = capsys.readouterr().err
        assert f"error: {model}: the model's head 'label' gives values that are not numbers (NaN" \
            " or infinite) for " in err and "it cannot predict. Was it saved from a run whose" \
            " training diverged?" in err, err
        assert "Traceback" not in err and "internal error" not in err
    assert not (tmp_path / "p.csv").exists()
    with pytest.raises(polymodal.PolymodalError, match=r"for \d+ row\(s\), row \d+ first: it"
                       " cannot predict"):
        polymodal.predict(model, table)


def test_an_epoch_whose_validation_outputs_are_not_numbers_stops_the_run_unsaved():
    record = EpochRecord(2, 0.7, 0.01, 1.0, 100.0, Validation(0.5, {}, nonfinite_rows=3))
    run = Progress([EpochRecord(1, 0.9, 0.01, 1.0, 100.0)], best_epoch=1, best_value=0.6)
    with pytest.raises(DivergedError, match="epoch 2: the model's outputs on 3 validation row"
                       r"\(s\) are not numbers \(NaN or infinite\): training diverged and stopped."
                       " The model file holds epoch 1, the best before it. Try a lower lr"):
        _check_outputs(record, TrainingOptions(), run)
    _check_outputs(EpochRecord(2, 0.7, 0.01, 1.0, 100.0, Validation(0.5, {})), TrainingOptions(),
                   run)  # finite outputs: nothing to say


def test_a_huge_weight_decay_is_named_in_the_divergence_advice(tmp_path):
    table = write_grouped_table(tmp_path)
    spec = table_spec(epochs=3, weight_decay=1e6)
    with pytest.raises(DivergedError, match=r"or a lower weight_decay \(now 1e\+06\)"):
        polymodal.train(spec, table, tmp_path / "m.safetensors", progress=False)


def test_a_training_loss_that_explodes_but_stays_a_number_is_noted():
    """A run whose loss grows a hundredfold past its lowest epoch's is diverging though no value
    overflows (the last stop's trial saw a train loss of 1.6e6 pass without a word)."""
    run = Progress([EpochRecord(1, 0.7, 0.01, 1.0, 100.0), EpochRecord(2, 0.5, 0.01, 1.0, 100.0)])
    note = exploding_note(EpochRecord(3, 60.0, 0.01, 1.0, 100.0), run, TrainingOptions(lr=3.0))
    assert note == ("note: epoch 3: the mean training loss (60) is 120x epoch 2's (0.5): training"
                    " is diverging. Try a lower lr (now 3); the model file keeps the best epoch by"
                    " the validation metric")
    assert exploding_note(EpochRecord(3, 40.0, 0.01, 1.0, 100.0), run, TrainingOptions()) is None
    assert exploding_note(EpochRecord(1, 1e9, 0.01, 1.0, 100.0), Progress(), TrainingOptions()) \
        is None  # nothing earlier to compare with

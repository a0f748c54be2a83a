"""Training on a table, from Python and from the command line."""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import polymodal
from polymodal._cli import main
from polymodal._data.table import read_table
from polymodal._modelfile import read_metadata
from polymodal._training.rows import split_rows

from training_data import read_csv, spec_data, write_csv, write_dataset


def test_train_saves_model_with_fitted_state_and_completed_spec(dataset, tmp_path):
    result = polymodal.train(spec_data(epochs=2), dataset, tmp_path / "m.safetensors", progress=False)
    metadata = read_metadata(tmp_path / "m.safetensors")
    state = json.loads(metadata["polymodal.state"])
    assert state["heads"]["label"]["classes"] == ["no", "yes"]
    assert state["inputs"]["report"]["vocabularies"]["color"] == ["blue", "green", "red"]
    spec = json.loads(metadata["polymodal.spec"])
    # learned from the data: cardinality, class count, image statistics
    assert spec["inputs"]["report"]["adapter"]["categorical"] == {"color": 3}
    assert spec["heads"]["label"]["classes"] == 2
    assert len(spec["inputs"]["photo"]["adapter"]["mean"]) == 3
    assert [r["epoch"] for r in result.history] == [1, 2]
    # the learning rate each epoch starts with: the configured one, then down the cosine
    assert result.history[0]["lr"] == pytest.approx(0.01) and 0 < result.history[1]["lr"] < 0.01
    run = tmp_path / "m.run"
    assert (run / "metrics.csv").read_text().startswith("epoch,train_loss")
    logged = json.loads((run / "metrics.json").read_text())
    assert set(logged[0]["val"]["label"]) == {"loss", "accuracy", "balanced_accuracy", "macro_f1", "auroc"}
    assert (run / "curves.png").read_bytes()[:4] == b"\x89PNG"


def test_the_saved_model_is_the_best_epoch(dataset, tmp_path):
    spec = spec_data(epochs=4, early_stopping={"metric": "label.accuracy"}, lr=0.05)
    result = polymodal.train(spec, dataset, tmp_path / "m.safetensors", progress=False)
    best = result.best["val"]["label"]
    table = read_table(dataset)
    _, val_positions = split_rows(table, 0.2, None, seed=0)
    again = polymodal.evaluate(tmp_path / "m.safetensors", table.take(val_positions))
    assert again["heads"]["label"]["metrics"]["accuracy"] == pytest.approx(best["accuracy"])
    assert again["heads"]["label"]["metrics"]["loss"] == pytest.approx(best["loss"], rel=1e-5)
    assert result.best_value == max(r["val"]["label"]["accuracy"] for r in result.history)


def test_training_learns_and_predict_returns_class_names(tmp_path):
    table = write_dataset(tmp_path, rows=64)
    result = polymodal.train(spec_data(epochs=8, val_fraction=0.0, schedule="none"), table,
                             tmp_path / "m.safetensors", progress=False)
    losses = [r["train_loss"] for r in result.history]
    assert losses[-1] < 0.5 * losses[0]
    predicted = polymodal.predict(tmp_path / "m.safetensors", table)
    truth = [r for r in read_table(table).columns["label"]]
    assert set(predicted["columns"]["label"]) <= {"no", "yes"}
    hits = sum(p == t for p, t in zip(predicted["columns"]["label"], truth))
    assert hits / len(truth) > 0.9
    probabilities = np.array([predicted["columns"]["label_prob_no"], predicted["columns"]["label_prob_yes"]])
    assert np.allclose(probabilities.sum(axis=0), 1.0, atol=1e-4)


def test_regression_head_predicts_in_the_targets_units(dataset, tmp_path):
    spec = spec_data(epochs=1)
    spec["heads"] = {"score": {"type": "regression"}}
    polymodal.train(spec, dataset, tmp_path / "m.safetensors", progress=False)
    state = json.loads(read_metadata(tmp_path / "m.safetensors")["polymodal.state"])
    assert state["heads"]["score"]["mean"] == pytest.approx(
        np.mean([float(v) for v in read_table(dataset).take(
            split_rows(read_table(dataset), 0.2, None, 0)[0]).columns["score"]]))
    values = polymodal.predict(tmp_path / "m.safetensors", dataset)["columns"]["score"]
    assert 2.0 < float(np.mean(values)) < 7.0  # targets are about age/10 + {0, 1}
    # the digits float32 holds (14.150549, not 14.150548934936523)
    assert all(v == float(str(np.float32(v))) for v in values)



def test_evaluate_scores_the_heads_whose_target_column_the_table_has(dataset, tmp_path):
    spec = spec_data(epochs=1)
    spec["heads"]["score"] = {"type": "regression"}
    polymodal.train(spec, dataset, tmp_path / "m.safetensors", progress=False)
    rows = read_csv(dataset)
    without_score = write_csv(tmp_path / "no_score.csv",
                              [{k: v for k, v in r.items() if k != "score"} for r in rows])
    result = polymodal.evaluate(tmp_path / "m.safetensors", without_score)
    assert list(result["heads"]) == ["label"] and result["heads"]["label"]["rows"] == 48
    assert result["not_evaluated"] == {"score": "no column 'score'"}
    neither = write_csv(tmp_path / "neither.csv",
                        [{k: v for k, v in r.items() if k not in ("score", "label")} for r in rows])
    with pytest.raises(polymodal.DataError, match="no column 'label' \\(read by heads.label\\),"
                       " 'score' \\(read by heads.score\\)"):
        polymodal.evaluate(tmp_path / "m.safetensors", neither)


def test_multilabel_head_learns_label_names_from_a_separated_column(tmp_path):
    rows = read_csv(write_dataset(tmp_path, rows=64))
    for row in rows:  # "flag" needs both inputs, "warm" the record only; empty: no labels
        row["tags"] = ";".join(t for t, on in (("flag", row["label"] == "yes"),
                                                ("warm", row["color"] == "red")) if on)
    table = write_csv(tmp_path / "tags.csv", rows)
    spec = spec_data(epochs=8, val_fraction=0.0, schedule="none")
    spec["heads"] = {"tags": {"type": "multilabel"}}
    polymodal.train(spec, table, tmp_path / "m.safetensors", progress=False)
    assert json.loads(read_metadata(tmp_path / "m.safetensors")["polymodal.spec"])[
        "heads"]["tags"]["labels"] == 2

    columns = polymodal.predict(tmp_path / "m.safetensors", table)["columns"]
    assert set(columns) >= {"tags", "tags_prob_flag", "tags_prob_warm"}
    hits = sum(p == r["tags"] for p, r in zip(columns["tags"], rows))
    assert hits / len(rows) > 0.9
    evaluation = polymodal.evaluate(tmp_path / "m.safetensors", table)["heads"]["tags"]
    assert evaluation["metrics"]["subset_accuracy"] > 0.9
    assert evaluation["labels"]["warm"]["support"] == sum(r["color"] == "red" for r in rows)

    rows[3]["tags"] = "warm;dented"
    with pytest.raises(polymodal.DataError, match="row 4, column 'tags': label 'dented' is not one"
                       " the model was trained on \\(flag, warm\\)"):
        polymodal.evaluate(tmp_path / "m.safetensors", write_csv(tmp_path / "bad.csv", rows))


def test_multilabel_empty_cells_can_mean_no_target_for_that_head(dataset, tmp_path):
    rows = read_csv(dataset)
    for i, row in enumerate(rows):
        row["tags"] = "" if i % 2 else "a|b"
    table = write_csv(tmp_path / "tags.csv", rows)
    spec = spec_data(epochs=1)
    spec["heads"]["tags"] = {"type": "multilabel", "separator": "|", "empty": "no_target"}
    result = polymodal.train(spec, table, tmp_path / "m.safetensors", progress=False)
    masked = "row(s) without a target in column 'tags': left out of head 'tags' only"
    assert f"{len(rows) // 2} {masked}" in result.report.lines()
    evaluation = polymodal.evaluate(tmp_path / "m.safetensors", table)
    assert (evaluation["heads"]["label"]["rows"], evaluation["heads"]["tags"]["rows"]) == \
        (len(rows), len(rows) // 2)
    assert evaluation["notes"] == {masked: len(rows) // 2}

def test_group_by_keeps_groups_on_one_side(dataset):
    table = read_table(dataset)
    train, val = split_rows(table, 0.3, "color", seed=1)
    colors = table.columns["color"]
    assert not set(colors[train]) & set(colors[val])
    assert len(train) + len(val) == len(table)


def test_the_run_folder_says_which_rows_validated(dataset, tmp_path):
    spec = spec_data(epochs=1, group_by="color", val_fraction=0.3)
    polymodal.train(spec, dataset, tmp_path / "m.safetensors", progress=False)
    held_out = read_csv(tmp_path / "m.run" / "validation_rows.csv")
    _, val = split_rows(read_table(dataset), 0.3, "color", seed=0)
    assert [int(r["row"]) for r in held_out] == [int(p) + 1 for p in val]  # 1-based, as in messages
    table = read_csv(dataset)
    assert all(table[int(r["row"]) - 1]["color"] == r["color"] for r in held_out)


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path))


class Killed(Exception):
    pass


def test_resume_after_a_crash_mid_epoch_gives_the_same_weights(dataset, tmp_path):
    spec = spec_data(epochs=3, augment={"hflip": True, "noise_std": 0.05})
    spec["fusion"]["dropout"] = 0.2
    whole = polymodal.train(spec, dataset, tmp_path / "a.safetensors", progress=False)

    def crash(epoch: int, step: int) -> None:
        if epoch == 2 and step == 1:
            raise Killed

    with pytest.raises(Killed):
        polymodal.train(spec, dataset, tmp_path / "b.safetensors", progress=False, on_step=crash)
    resumed = polymodal.train(spec, dataset, tmp_path / "b.safetensors", progress=False, resume=True)
    assert [r["epoch"] for r in resumed.history] == [1, 2, 3]
    a, b = _weights(tmp_path / "a.safetensors"), _weights(tmp_path / "b.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    last_a = torch.load(tmp_path / "a.run" / "checkpoint.pt", weights_only=True)["model"]
    last_b = torch.load(tmp_path / "b.run" / "checkpoint.pt", weights_only=True)["model"]
    assert all(torch.equal(last_a[k], last_b[k]) for k in last_a)
    assert [r["train_loss"] for r in whole.history] == [r["train_loss"] for r in resumed.history]


def test_worker_processes_train_exactly_like_the_main_process(dataset, tmp_path):
    """Each batch is encoded and augmented from its own seed, whichever process makes it; the
    workers are started once and kept for every epoch."""
    spec = spec_data(epochs=3, augment={"hflip": True, "noise_std": 0.05})
    spec["fusion"]["dropout"] = 0.3  # randomness in the main process too
    alone = polymodal.train(spec, dataset, tmp_path / "alone.safetensors", progress=False)
    spec["training"]["workers"] = 2
    workers_by_epoch: dict[int, set[int]] = {}

    def look(epoch: int, step: int) -> None:
        workers_by_epoch.setdefault(epoch, set()).update(p.pid for p in multiprocessing.active_children())

    helped = polymodal.train(spec, dataset, tmp_path / "helped.safetensors", progress=False,
                             on_step=look)
    # two for training from the first epoch on, two more for validation from its end on
    assert len(workers_by_epoch[1]) == 2 and len(workers_by_epoch[2]) == 4
    assert workers_by_epoch[1] < workers_by_epoch[2] == workers_by_epoch[3]
    a, b = _weights(tmp_path / "alone.safetensors"), _weights(tmp_path / "helped.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [r["train_loss"] for r in alone.history] == [r["train_loss"] for r in helped.history]


def test_resume_after_sigkill_of_the_command(dataset, tmp_path):
    import yaml

    spec_path = tmp_path / "spec.yaml"
    spec_path.write_text(yaml.safe_dump(spec_data(epochs=4)))
    command = [sys.executable, "-m", "polymodal", "train", str(spec_path), "--data", str(dataset),
               "-o", str(tmp_path / "k.safetensors"), "--quiet"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    checkpoint = tmp_path / "k.run" / "checkpoint.pt"
    deadline = time.monotonic() + 120
    while not checkpoint.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    done = subprocess.run(command + ["--resume"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    polymodal.train(spec_data(epochs=4), dataset, tmp_path / "u.safetensors", progress=False)
    a, b = _weights(tmp_path / "u.safetensors"), _weights(tmp_path / "k.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_resume_refuses_a_checkpoint_of_another_spec(dataset, tmp_path):
    polymodal.train(spec_data(epochs=1), dataset, tmp_path / "m.safetensors", progress=False)
    with pytest.raises(polymodal.SpecError, match=r"belongs to a run of another spec"
                       r" \(training.lr 0.01 -> 0.5\)"):
        polymodal.train(spec_data(epochs=1, lr=0.5), dataset, tmp_path / "m.safetensors",
                        progress=False, resume=True)


def test_early_stopping_stops_after_patience(dataset, tmp_path):
    spec = spec_data(epochs=30, lr=1e-9, schedule="none", early_stopping={"patience": 2})
    result = polymodal.train(spec, dataset, tmp_path / "m.safetensors", progress=False)
    assert result.stopped_early and len(result.history) < 30
    said: list[str] = []
    again = polymodal.train(spec, dataset, tmp_path / "m.safetensors", progress=False, resume=True,
                            log=said.append)
    assert again.stopped_early and again.history == result.history
    assert f"the run had stopped early after epoch {len(result.history)}: nothing left to train" in said


def test_frozen_backbones_keep_their_weights_until_unfrozen(dataset, tmp_path):
    said: list[str] = []

    def backbone_changed(spec) -> bool:
        result = polymodal.train(spec, dataset, tmp_path / "f.safetensors", progress=False,
                                 log=said.append)
        torch.manual_seed(0)  # the engine initialises with the seed before building
        fresh = polymodal.build(result.model.spec, pretrained=False)
        pairs = zip(fresh.input_backbones.parameters(), result.model.input_backbones.parameters())
        return not all(torch.equal(a, b) for a, b in pairs)

    assert not backbone_changed(spec_data(epochs=1, freeze_backbones=True))
    assert backbone_changed(spec_data(epochs=2, freeze_backbones=True, unfreeze_at=2))
    assert [line for line in said if ": backbones" in line] == [
        "epoch 1: backbones frozen", "epoch 1: backbones frozen", "epoch 2: backbones train from now on"]



def test_a_backbones_own_freeze_option_holds_through_training(dataset, tmp_path):
    spec = spec_data(epochs=2, lr=0.05)
    spec["inputs"]["photo"]["backbone"] = {"type": "timm", "model": "resnet10t",
                                           "freeze": {"train_last": 1}}
    result = polymodal.train(spec, dataset, tmp_path / "m.safetensors", progress=False)
    torch.manual_seed(0)  # the engine initialises with the seed before building
    fresh = polymodal.build(result.model.spec, pretrained=False).input_backbones["photo"].model
    trained = polymodal.load(tmp_path / "m.safetensors").input_backbones["photo"].model
    for stage in ("conv1", "layer1", "layer2", "layer3"):  # frozen: weights and statistics
        before, after = fresh.get_submodule(stage).state_dict(), trained.get_submodule(stage).state_dict()
        assert all(torch.equal(before[k], after[k]) for k in before), stage
    before, after = fresh.layer4.state_dict(), trained.layer4.state_dict()
    assert not all(torch.equal(before[k], after[k]) for k in before)

def test_cli_train_json_evaluate_and_predict(dataset, tmp_path, capsys):
    import yaml

    spec_path = tmp_path / "spec.yaml"
    spec_path.write_text(yaml.safe_dump(spec_data(epochs=1)))
    model = tmp_path / "m.safetensors"
    assert main(["train", str(spec_path), "--data", str(dataset), "-o", str(model), "--json"]) == 0
    out, err = capsys.readouterr()
    summary = json.loads(out)
    assert summary["best_epoch"] == 1 and summary["output"] == str(model)
    assert "epoch" not in err  # --json: no progress lines
    assert main(["evaluate", str(model), "--data", str(dataset)]) == 0
    out, _ = capsys.readouterr()
    assert "head label (48 rows)" in out and "true \\ predicted" in out
    predictions = tmp_path / "p.csv"
    assert main(["predict", str(model), "--data", str(dataset), "-o", str(predictions),
                 "--keep", "id", "--keep", "label"]) == 0
    rows = read_csv(predictions)
    # the true label, kept beside the prediction of the head named after it; a fused model
    # (which takes an input as absent) says which inputs each prediction used
    assert list(rows[0]) == ["row", "id", "label_kept", "label", "label_prob_no", "label_prob_yes",
                             "inputs_used"]
    assert {r["inputs_used"] for r in rows} == {"photo + report"}
    assert rows[0]["row"] == "1" and rows[0]["id"] == "r0"
    assert [r["label_kept"] for r in rows] == [r["label"] for r in read_csv(dataset)]
    assert len(rows) == 48
    clashing = write_csv(tmp_path / "clash.csv", [{**r, "label_kept": "x"} for r in read_csv(dataset)])
    assert main(["predict", str(model), "--data", str(clashing), "-o", str(predictions),
                 "--keep", "label", "--keep", "label_kept"]) == 0
    first = read_csv(predictions)[0]
    assert list(first)[:4] == ["row", "label_kept", "label_kept_kept", "label"]
    assert first["label_kept_kept"] == "x" and first["label_kept"] == read_csv(dataset)[0]["label"]
    assert main(["predict", str(model), "--data", str(dataset), "-o", str(predictions),
                 "--keep", "ID"]) == 1
    assert "no column 'ID' to keep. Did you mean 'id'?" in capsys.readouterr().err


def test_training_options_are_validated_with_their_spec_path(dataset, tmp_path):
    spec = spec_data(epochs=1, optimizer="adam")
    with pytest.raises(polymodal.SpecError, match="training.optimizer"):
        polymodal.train(spec, dataset, tmp_path / "m.safetensors", progress=False)
    spec = spec_data(epochs=1, early_stopping={"metric": "fraud.accuracy"})
    with pytest.raises(polymodal.SpecError, match="training.early_stopping.metric: unknown head 'fraud'"):
        polymodal.train(spec, dataset, tmp_path / "m.safetensors", progress=False)
    # a misspelt metric is known before any data, so reading the spec finds it
    misspelt = spec_data(epochs=1, early_stopping={"metric": "label.balanced_acc"})
    with pytest.raises(polymodal.SpecError, match="head 'label' has no metric 'balanced_acc'."
                       " Did you mean 'balanced_accuracy'?"):
        polymodal.load_spec(misspelt)
    with pytest.raises(polymodal.SpecError, match="has no metric 'r2'"):
        polymodal.train(spec_data(epochs=1), dataset, tmp_path / "m.safetensors", progress=False,
                        options={"early_stopping": {"metric": "label.r2"}})
    polymodal.load_spec(spec_data(early_stopping={"metric": "label.loss"}))  # each head's own loss
    spec = spec_data(epochs=1, precision="fp16", device="cpu")
    with pytest.raises(polymodal.SpecError, match="fp16 needs a CUDA GPU"):
        polymodal.train(spec, dataset, tmp_path / "m.safetensors", progress=False)
    with pytest.raises(polymodal.SpecError, match="training.surprise: unknown key"):
        polymodal.load_spec(spec_data(surprise=1))


def test_backbones_get_their_own_learning_rate_and_sgd_its_momentum():
    from polymodal._training.engine import _optimizer, _scheduler
    from polymodal._options import TrainingOptions

    spec = spec_data()
    spec["inputs"]["report"]["adapter"]["categorical"] = {"color": 3}
    spec["heads"]["label"]["classes"] = 2
    model = polymodal.build(spec)
    options = TrainingOptions(optimizer="sgd", lr=0.1, backbone_lr=0.01, schedule="onecycle")
    optimizer = _optimizer(model, options)
    rest, backbones = optimizer.param_groups
    assert {id(p) for p in backbones["params"]} == {id(p) for p in model.input_backbones.parameters()}
    assert (rest["lr"], backbones["lr"], rest["momentum"]) == (0.1, 0.01, 0.9)
    assert optimizer.defaults["fused"]  # one kernel for all parameters where torch has one
    scheduler = _scheduler(optimizer, options, total_steps=10)
    peaks = []
    for _ in range(10):
        optimizer.step()
        scheduler.step()
        peaks.append(optimizer.param_groups[1]["lr"])
    assert max(peaks) == pytest.approx(0.01, rel=0.05)  # one-cycle peaks at each group's own lr


def test_inspect_shows_what_was_fitted_on_the_training_table(trained, capsys):
    model, _ = trained
    assert main(["inspect", str(model)]) == 0
    out = capsys.readouterr().out
    assert "heads.label.classes: (2) no, yes" in out
    assert "inputs.report.vocabularies: color (3) blue, green, red" in out
    assert main(["inspect", str(model), "--json"]) == 0
    fitted = json.loads(capsys.readouterr().out)["fitted"]
    assert fitted["heads"]["label"]["classes"] == ["no", "yes"]


def test_the_fused_adamw_step_is_the_plain_one():
    from polymodal._training.engine import _optimizer
    from polymodal._options import TrainingOptions

    torch.manual_seed(0)
    spec = spec_data()
    spec["inputs"]["report"]["adapter"]["categorical"] = {"color": 3}
    spec["heads"]["label"]["classes"] = 2
    model = polymodal.build(spec)
    twin = polymodal.build(spec)
    twin.load_state_dict(model.state_dict())
    fused = _optimizer(model, TrainingOptions(lr=0.01, weight_decay=0.1))
    plain = torch.optim.AdamW(twin.parameters(), lr=0.01, weight_decay=0.1)
    for _ in range(3):
        for net in (model, twin):
            for i, p in enumerate(net.parameters()):
                p.grad = torch.full_like(p, 0.01 * (i % 5 - 2))
        fused.step()
        plain.step()
    for a, b in zip(model.parameters(), twin.parameters()):
        assert torch.allclose(a, b, atol=1e-6)


def test_a_training_step_never_reads_a_value_back_from_the_device():
    """The step runs on the meta device, where tensors have shapes but no values: anything that
    reads one back (``.item()``, ``bool(mask.any())``, boolean indexing) fails there. On a GPU
    such a read makes the host wait for the device every step."""
    from polymodal._training.inference import device_targets, head_losses

    spec = spec_data()
    spec["inputs"]["photo"]["backbone"] = {"type": "timm", "model": "resnet10t"}
    spec["inputs"]["report"]["adapter"]["categorical"] = {"color": 3}
    spec["heads"] = {"label": {"type": "classification", "classes": 2, "target": "label"},
                     "score": {"type": "regression", "target": "score"}}
    model = polymodal.build(spec).to("meta").train()
    meta = torch.device("meta")
    inputs = {name: adapter.example_input(4) for name, adapter in model.adapters.items()}
    inputs = {"photo": inputs["photo"].to(meta),
              "report": {c: v.to(meta) for c, v in inputs["report"].items()}}
    targets = {"label": (torch.tensor([0, 1, 1, 0]), torch.tensor([True, True, True, True])),
               "score": (torch.tensor([0.5, 1.5, 2.5, 3.5]), torch.tensor([True, False, True, False]))}
    on_device = device_targets(targets, meta)
    assert on_device["label"][1] is None and on_device["score"][1].shape == (2,)

    losses = head_losses(model, model(inputs), on_device)
    sum(loss for loss, _, _ in losses.values()).backward()

    assert losses["score"][1].shape == (2, 1) and losses["label"][1].shape == (4, 2)
    assert all(p.grad is not None for p in model.heads.parameters())


def test_rows_without_a_target_are_left_out_of_that_heads_loss():
    from polymodal._training.inference import device_targets, head_losses

    class Head(torch.nn.Module):
        def loss(self, output, target):
            return (output - target).abs().mean()

    model = torch.nn.Module()
    model.heads = torch.nn.ModuleDict({"a": Head(), "b": Head(), "c": Head()})
    outputs = {h: torch.tensor([1.0, 2.0, 3.0]) for h in "abc"}
    targets = {"a": (torch.zeros(3), torch.tensor([True, False, True])),
               "b": (torch.zeros(3), torch.tensor([True, True, True])),
               "c": (torch.zeros(3), torch.tensor([False, False, False]))}
    losses = head_losses(model, outputs, device_targets(targets, torch.device("cpu")))
    assert set(losses) == {"a", "b"}
    assert losses["a"][0].item() == 2.0 and losses["b"][0].item() == 2.0


def test_the_progress_bar_shows_on_a_terminal_only(monkeypatch):
    import io

    from polymodal._training.epochs import _progress

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.setattr(sys, "stderr", io.StringIO())
    assert _progress(True, 3, "epoch 1/1") is None
    monkeypatch.setattr(sys, "stderr", Terminal())
    bar = _progress(True, 3, "epoch 1/1")
    bar.update(1)
    bar.close()
    assert "epoch 1/1" in sys.stderr.getvalue()
    assert _progress(False, 3, "epoch 1/1") is None


def test_decode_turns_raw_outputs_into_what_predict_writes(dataset, tmp_path):
    spec = spec_data(epochs=1)
    spec["heads"]["score"] = {"type": "regression"}
    polymodal.train(spec, dataset, tmp_path / "m.safetensors", progress=False)
    model = polymodal.load(tmp_path / "m.safetensors").eval()
    batch = polymodal.encode(model, dataset)  # as docs/training.md calls the model itself
    assert batch.positions.tolist() == list(range(len(read_table(dataset))))
    with torch.no_grad():
        outputs = model(batch.inputs, batch.present)
    decoded = polymodal.decode(model, outputs)
    predicted = polymodal.predict(tmp_path / "m.safetensors", dataset)["columns"]
    assert decoded["label"] == predicted["label"]
    # predict runs convolutions with their weights laid out once: the same to float rounding
    np.testing.assert_allclose(decoded["score"], predicted["score"], rtol=1e-5)
    assert 2.0 < float(np.mean(decoded["score"])) < 7.0  # the target's units, not standardised
    assert abs(float(outputs["score"].mean())) < 2.0


def _table_only(metric: str, epochs: int = 4) -> dict:
    """A small table-only model with a regression head, monitored by ``metric``."""
    return {"name": "scores",
            "inputs": {"report": {"adapter": {"type": "tabular", "categorical": ["color"],
                                              "numerical": ["age"]}}},
            "heads": {"score": {"type": "regression"}},
            "training": {"epochs": epochs, "batch_size": 8, "lr": 0.01,
                         "early_stopping": {"metric": metric}}}


@pytest.mark.parametrize("metric, best", [("score.rmse", min), ("score.r2", max),
                                          ("score.loss", min)])
def test_the_best_epoch_follows_the_direction_the_head_declares(dataset, tmp_path, metric, best):
    result = polymodal.train(_table_only(metric), dataset, tmp_path / "m.safetensors",
                             progress=False)
    name = metric.split(".")[1]
    values = [r["val"]["score"][name] for r in result.history]
    assert len(set(values)) > 1  # the epochs differ, so the direction decides
    assert result.best_value == best(values)
    assert result.best_epoch == values.index(best(values)) + 1


def test_early_stopping_asks_the_heads_declaration_not_the_metrics_name(dataset, tmp_path,
                                                                        monkeypatch):
    from polymodal_plugins._metrics import REGRESSION_METRICS
    from polymodal_plugins.regression import RegressionCodec

    from polymodal.plugin import Metric

    # A head that declared rmse better when higher (wrongly, but it is the head's to say).
    upside_down = (Metric("rmse", higher_is_better=True), *REGRESSION_METRICS[1:])
    monkeypatch.setattr(RegressionCodec, "declared_metrics", upside_down)
    result = polymodal.train(_table_only("score.rmse"), dataset, tmp_path / "m.safetensors",
                             progress=False)
    values = [r["val"]["score"]["rmse"] for r in result.history]
    assert len(set(values)) > 1 and result.best_value == max(values)


def test_a_metric_a_head_computes_without_declaring_it_is_refused(dataset, tmp_path, monkeypatch):
    from polymodal_plugins._metrics import REGRESSION_METRICS
    from polymodal_plugins.regression import RegressionCodec

    monkeypatch.setattr(RegressionCodec, "declared_metrics", REGRESSION_METRICS[:1])
    with pytest.raises(polymodal.ComponentError) as info:
        polymodal.train(_table_only("loss", epochs=1), dataset, tmp_path / "m.safetensors",
                        progress=False)
    assert str(info.value) == ("heads.score: RegressionCodec.metrics() computed mae, r2, which"
                               " its declared_metrics do not list (each needs a Metric with its"
                               " direction)")


MOVED = ("training: `augment` is no longer a training option: augmentation belongs to the"
         " adapter that understands it. Move it into each image input's adapter, e.g."
         " inputs.photo.adapter: {type: image, augment: {hflip: true}}")


def test_augment_in_the_training_section_says_where_it_moved(dataset, tmp_path, capsys):
    import yaml

    old = spec_data(epochs=1)
    old["training"]["augment"] = {"hflip": True}
    with pytest.raises(polymodal.SpecError) as info:
        polymodal.load_spec(old)
    assert str(info.value) == MOVED
    with pytest.raises(polymodal.SpecError) as info:
        polymodal.train(spec_data(epochs=1), dataset, tmp_path / "m.safetensors", progress=False,
                        options={"augment": {"hflip": True}})
    assert str(info.value) == MOVED
    spec_path = tmp_path / "old.yaml"
    spec_path.write_text(yaml.safe_dump(old))
    assert main(["train", str(spec_path), "--data", str(dataset), "-o",
                 str(tmp_path / "m.safetensors")]) == 1
    err = capsys.readouterr().err
    assert MOVED in err and "Traceback" not in err


def test_a_model_file_written_when_augment_was_a_training_option_loads(trained, tmp_path):
    from safetensors.torch import save_file

    from polymodal._modelfile import KEY_SPEC

    model_path, table = trained
    metadata = read_metadata(model_path)
    spec = json.loads(metadata[KEY_SPEC])
    spec["training"]["augment"] = {"hflip": True, "vflip": False, "rot90": False,
                                   "crop_padding": 0, "noise_std": 0.0}
    old = tmp_path / "old.safetensors"
    save_file(load_file(str(model_path)), str(old), metadata={**metadata, KEY_SPEC: json.dumps(spec)})
    assert polymodal.predict(old, table)["columns"] == polymodal.predict(model_path, table)["columns"]


def test_image_augmentation_is_the_image_inputs_own_and_for_training_batches_only(dataset):
    from polymodal._data.binding import Binding
    from polymodal._data.loader import BatchDataset

    spec = polymodal.load_spec(spec_data(augment={"hflip": True, "noise_std": 0.1}))
    binding = Binding(spec)
    table = read_table(dataset)
    state = binding.fit(table)
    item = (1, 0, np.arange(8))
    plain = BatchDataset(table, binding, state, targets=True)[item].inputs
    augmented = BatchDataset(table, binding, state, targets=True, augment=True, seed=3)[item].inputs
    again = BatchDataset(table, binding, state, targets=True, augment=True, seed=3)[item].inputs
    assert torch.equal(augmented["photo"], again["photo"])  # from the batch's seed
    assert not torch.equal(augmented["photo"], plain["photo"].float() / 255)
    assert all(torch.equal(augmented["report"][c], plain["report"][c]) for c in plain["report"])
    unaugmented = Binding(polymodal.load_spec(spec_data()))
    untouched = BatchDataset(table, unaugmented, state, targets=True, augment=True)[item].inputs
    assert torch.equal(untouched["photo"], plain["photo"])


def test_encode_names_a_row_it_cannot_read(dataset, tmp_path):
    polymodal.train(spec_data(epochs=1), dataset, tmp_path / "m.safetensors", progress=False)
    table = read_table(dataset)
    columns = {name: list(values) for name, values in table.columns.items()}
    columns["photo"] = [str(Path(table.base_dir) / p) for p in columns["photo"]]
    assert len(polymodal.encode(tmp_path / "m.safetensors", columns).positions) == len(table)
    columns["age"][2] = "abc"
    with pytest.raises(polymodal.DataError, match=r"row 3, column 'age': 'abc' is not a number"):
        polymodal.encode(tmp_path / "m.safetensors", columns)

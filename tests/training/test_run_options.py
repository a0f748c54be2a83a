"""What the hardware decides in a run (precision auto, bf16 where it is emulated, torch's
thread count) and the per-epoch hook of train()."""

from __future__ import annotations

import pytest
import torch

import polymodal
from polymodal._training import hardware

from training_data import table_spec, write_grouped_table


@pytest.mark.parametrize("found, why", [
    ("AMX-BF16", "on a CPU; precision: bf16 uses its AMX-BF16 instructions, faster but not"
                 " exactly repeatable"),
    (None, "on a CPU without native bf16 instructions")])
def test_precision_auto_trains_a_cpu_in_fp32_and_says_why(monkeypatch, found, why):
    monkeypatch.setattr(hardware, "cpu_bf16_instructions", lambda: found)
    said: list[str] = []
    assert hardware.choose_precision("auto", torch.device("cpu"), said.append) == "fp32"
    assert said == [f"precision auto: fp32 ({why})"]


class _NonFiniteGradient(torch.autograd.Function):
    """The identity, whose gradient is NaN: what a faulty kernel leaves behind."""

    @staticmethod
    def forward(ctx, value):
        return value.clone()

    @staticmethod
    def backward(ctx, grad):
        return torch.full_like(grad, float("nan"))


def test_bf16_on_a_cpu_skips_a_step_whose_gradients_are_not_finite(tmp_path, monkeypatch):
    from polymodal._training import epochs as epoch_loop

    calls = []

    def losses_faulty_once(*args):
        losses = head_losses(*args)
        calls.append(1)
        if len(calls) == 2:  # the second step's backward pass gives NaN gradients
            losses = {h: (_NonFiniteGradient.apply(l), o, t) for h, (l, o, t) in losses.items()}
        return losses

    head_losses = epoch_loop.head_losses
    monkeypatch.setattr(epoch_loop, "head_losses", losses_faulty_once)
    said: list[str] = []
    result = polymodal.train(table_spec(epochs=2, precision="bf16"), write_grouped_table(tmp_path),
                             tmp_path / "m.safetensors", progress=False, log=said.append)
    assert [line for line in said if line.startswith("note: epoch")] == [
        "note: epoch 1: 1 of 5 step(s) skipped, their gradients were not finite in bf16 (a fault"
        " of some CPU bf16 kernels; precision: fp32 avoids it)"]
    weights = [p for p in result.model.parameters()]
    assert all(torch.isfinite(p).all() for p in weights)


def test_precision_auto_on_a_gpu_prefers_bf16_then_fp16(monkeypatch):
    cuda = torch.device("cuda", 0)
    monkeypatch.setattr(hardware, "cuda_native_bf16", lambda device: True)
    assert hardware.choose_precision("auto", cuda, lambda _: None) == "bf16"
    monkeypatch.setattr(hardware, "cuda_native_bf16", lambda device: False)
    assert hardware.choose_precision("auto", cuda, lambda _: None) == "fp16"


def test_the_default_precision_is_auto_and_the_saved_spec_keeps_it(tmp_path, monkeypatch):
    monkeypatch.setattr(hardware, "cpu_bf16_instructions", lambda: None)
    spec = table_spec()
    del spec["training"]["precision"]
    said: list[str] = []
    result = polymodal.train(spec, write_grouped_table(tmp_path), tmp_path / "m.safetensors",
                             log=said.append, progress=False)
    assert "precision auto: fp32 (on a CPU without native bf16 instructions)" in said
    assert result.model.spec.training.precision == "auto"


def test_bf16_on_a_cpu_without_it_warns_before_the_first_epoch(tmp_path, monkeypatch):
    monkeypatch.setattr(hardware, "cpu_bf16_instructions", lambda: None)
    said: list[str] = []
    polymodal.train(table_spec(precision="bf16"), write_grouped_table(tmp_path),
                    tmp_path / "m.safetensors", log=said.append, progress=False)
    warning = next(i for i, line in enumerate(said) if line.startswith("warning: precision bf16"))
    first_epoch = next(i for i, line in enumerate(said) if line.startswith("epoch 1:"))
    assert warning < first_epoch
    assert "on a CPU without native bf16 instructions (torch's CPU capability:" in said[warning]
    assert "a 256x256 matrix product took" in said[warning] and "x as long as in fp32" in said[warning]
    # where the CPU has bf16 instructions there is nothing to warn about
    monkeypatch.setattr(hardware, "cpu_bf16_instructions", lambda: "AVX512-BF16")
    assert hardware.choose_precision("bf16", torch.device("cpu"), said.append) == "bf16"
    assert sum(line.startswith("warning:") for line in said) == 1


def test_fp16_on_a_cpu_is_a_spec_error():
    with pytest.raises(polymodal.SpecError, match="training.precision: fp16 needs a CUDA GPU"):
        hardware.choose_precision("fp16", torch.device("cpu"), lambda _: None)


def test_training_threads_sets_torchs_thread_count_for_the_run_only(tmp_path):
    before = torch.get_num_threads()
    seen: set[int] = set()
    polymodal.train(table_spec(threads=1 if before > 1 else 2), write_grouped_table(tmp_path),
                    tmp_path / "m.safetensors", progress=False,
                    on_step=lambda epoch, step: seen.add(torch.get_num_threads()))
    assert seen == {1 if before > 1 else 2}
    assert torch.get_num_threads() == before
    with pytest.raises(polymodal.SpecError, match="training.threads"):
        polymodal.load_spec(table_spec(threads=0))


def test_on_epoch_sees_each_epochs_record_and_can_stop_the_run(tmp_path):
    seen: list[tuple[int, float]] = []

    def on_epoch(record, value):
        seen.append((record["epoch"], value))
        return record["epoch"] == 2

    said: list[str] = []
    result = polymodal.train(table_spec(epochs=5), write_grouped_table(tmp_path),
                             tmp_path / "m.safetensors", progress=False, on_epoch=on_epoch,
                             log=said.append)
    assert [epoch for epoch, _ in seen] == [1, 2] and len(result.history) == 2
    assert [value for _, value in seen] == [r["val"]["loss"] for r in result.history]
    assert result.stopped_early and "stopped after epoch 2: the caller asked" in said
    # a text says why
    said.clear()
    polymodal.train(table_spec(epochs=5), write_grouped_table(tmp_path), tmp_path / "n.safetensors",
                    progress=False, on_epoch=lambda record, value: "enough" * (record["epoch"] == 1),
                    log=said.append)
    assert "stopped after epoch 1: enough" in said


def test_a_loss_that_is_no_longer_a_number_stops_the_run_with_what_to_do(tmp_path):
    table = write_grouped_table(tmp_path)
    spec = table_spec(epochs=4, lr=10, optimizer="sgd", momentum=0.99, weight_decay=0,
                      schedule="none")
    spec["heads"] = {"value": {"type": "regression", "standardize": False}}
    out = tmp_path / "m.safetensors"
    with pytest.raises(polymodal.PolymodalError, match=r"epoch 1: the mean training loss is nan:"
                       r" training diverged and stopped\. No epoch was saved\. Try a lower lr"
                       r" \(now 10\); a column with extreme values"):
        polymodal.train(spec, table, out, progress=False)
    assert not out.exists()


def test_an_epoch_whose_every_step_is_skipped_stops_the_run(tmp_path, monkeypatch):
    from polymodal._training import epochs as epoch_loop

    monkeypatch.setattr(hardware, "cpu_bf16_instructions", lambda: "AMX-BF16")
    monkeypatch.setattr(epoch_loop, "_finite_gradients", lambda model: False)
    with pytest.raises(polymodal.PolymodalError, match="epoch 1: the gradients of every step were"
                       " not finite in bf16, so no step was taken"):
        polymodal.train(table_spec(epochs=2, precision="bf16"), write_grouped_table(tmp_path),
                        tmp_path / "m.safetensors", progress=False)


def test_channels_last_auto_is_on_for_a_cpu_and_for_mixed_precision_on_a_gpu():
    cpu, cuda = torch.device("cpu"), torch.device("cuda", 0)
    assert hardware.choose_channels_last("auto", cpu, "fp32") is True
    assert hardware.choose_channels_last("auto", cpu, "bf16") is True
    assert hardware.choose_channels_last("auto", cuda, "fp32") is False
    assert hardware.choose_channels_last("auto", cuda, "bf16") is True
    assert hardware.choose_channels_last("auto", cuda, "fp16") is True
    assert hardware.choose_channels_last(False, cpu, "fp32") is False
    assert hardware.choose_channels_last(True, cuda, "fp32") is True


def test_the_default_memory_format_is_auto_and_the_saved_spec_keeps_it(tmp_path):
    spec = table_spec()
    spec["training"].pop("channels_last", None)
    result = polymodal.train(spec, write_grouped_table(tmp_path), tmp_path / "m.safetensors",
                             progress=False)
    assert result.model.spec.training.channels_last == "auto"
    assert polymodal.load(tmp_path / "m.safetensors").spec.training.channels_last == "auto"

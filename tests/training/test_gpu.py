"""Training and prediction on a GPU: run where one is present (skipped elsewhere)."""

from __future__ import annotations

import pytest
import torch

import polymodal

from training_data import read_csv, spec_data, write_csv

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
def test_training_on_the_gpu_with_workers_and_pinned_batches(dataset, tmp_path, precision):
    spec = spec_data(epochs=2, device="cuda", workers=2, precision=precision, channels_last=True)
    # a head some rows have no target for: its rows are picked by an index copied to the GPU
    spec["heads"]["score"] = {"type": "regression"}
    rows = read_csv(dataset)
    for row in rows[::3]:
        row["score"] = ""
    write_csv(dataset, rows)
    torch.backends.cudnn.benchmark = False
    result = polymodal.train(spec, dataset, tmp_path / "m.safetensors", progress=False)
    assert torch.backends.cudnn.benchmark is False  # tuned during training only
    assert all(torch.isfinite(torch.tensor(r["train_loss"])) for r in result.history)
    on_cpu = polymodal.predict(tmp_path / "m.safetensors", dataset, device="cpu")
    on_gpu = polymodal.predict(tmp_path / "m.safetensors", dataset, device="cuda")
    # cuDNN may use TF32 convolutions: close, not identical
    assert torch.allclose(torch.tensor(on_cpu["columns"]["label_prob_yes"]),
                          torch.tensor(on_gpu["columns"]["label_prob_yes"]), atol=1e-2)

"""Decoded rows kept in memory across epochs (training.cache_mib): read once, the same results
as without them, augmentation still drawn per epoch, bad and absent rows reported as before,
the budget respected and the choice said."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from PIL import Image
from training_data import read_csv, spec_data, write_csv, write_dataset

import polymodal
from polymodal._data.binding import Binding
from polymodal._data.cache import RowCache
from polymodal._data.loader import BatchDataset
from polymodal._data.table import read_table
from polymodal._training.loading import plan
from polymodal._options import TrainingOptions

AUGMENT = {"hflip": True, "crop_padding": 2, "noise_std": 0.05}


def _train(table, folder, name, log=None, on_bad_row="fail", **training):
    return polymodal.train(spec_data(epochs=3, augment=AUGMENT, **training), table,
                           folder / f"{name}.safetensors", progress=False, log=log,
                           on_bad_row=on_bad_row)


def test_results_are_the_same_with_and_without_kept_rows(dataset, tmp_path):
    said: list[str] = []
    kept = _train(dataset, tmp_path, "kept", log=said.append)
    decoded = _train(dataset, tmp_path, "decoded", cache_mib=0)
    assert any(line.startswith("data: ") and "kept in memory (cache_mib: auto, half of the"
               in line for line in said), said
    assert [r["train_loss"] for r in kept.history] == [r["train_loss"] for r in decoded.history]
    for (name, a), b in zip(kept.model.state_dict().items(), decoded.model.state_dict().values()):
        assert torch.equal(a, b), name


def test_epoch_two_reads_no_file(dataset, tmp_path):
    """With the rows kept, the image files can go after the first epoch; without, the second
    epoch needs them."""
    images = sorted((dataset.parent / "img").iterdir())

    def remove_images(record, value):
        for path in images:
            path.unlink(missing_ok=True)

    spec = spec_data(epochs=2, val_fraction=0.0)
    result = polymodal.train(spec, dataset, tmp_path / "m.safetensors", progress=False,
                             on_epoch=remove_images)
    assert len(result.history) == 2 and not result.report.skipped
    again = write_dataset(dataset.parent / "again")
    images = sorted((dataset.parent / "again" / "img").iterdir())
    spec["training"]["cache_mib"] = 0
    with pytest.raises(polymodal.DataError, match="not found"):
        polymodal.train(spec, again, tmp_path / "n.safetensors", progress=False,
                        on_epoch=remove_images)


def _datasets(table_path, augment=True):
    spec = polymodal.load_spec(spec_data(augment=AUGMENT))
    table = read_table(table_path)
    binding = Binding(spec)
    state = binding.fit(table)
    binding = Binding(binding.complete(state))
    cache = RowCache(table.rows, [b.name for b in binding.inputs])
    kept = BatchDataset(table, binding, state, targets=True, augment=augment, seed=3, cache=cache)
    plain = BatchDataset(table, binding, state, targets=True, augment=augment, seed=3)
    return table, kept, plain, cache


def test_the_second_epoch_is_read_from_memory_and_augmented_anew(dataset):
    table, kept, plain, cache = _datasets(dataset)
    order = np.random.default_rng(0).permutation(len(table))
    batches = [order[i:i + 8] for i in range(0, len(table), 8)]
    by_epoch = {}
    for epoch in (1, 2):
        before = cache.encoded
        by_epoch[epoch] = [kept[(epoch, step, rows)] for step, rows in enumerate(batches)]
        for step, rows in enumerate(batches):  # the same batch as decoded from the files
            assert torch.equal(by_epoch[epoch][step].inputs["photo"],
                               plain[(epoch, step, rows)].inputs["photo"])
        decoded = cache.encoded - before
        assert decoded == (2 * len(table) if epoch == 1 else 0), decoded  # photo and report
    assert cache.hits == 2 * len(table)
    changed = [not torch.equal(a.inputs["photo"], b.inputs["photo"])
               for a, b in zip(by_epoch[1], by_epoch[2])]
    assert all(changed)  # each epoch draws its own flips, crops and noise


def test_bad_and_absent_rows_are_reported_as_without_kept_rows(dataset, tmp_path):
    rows = read_csv(dataset)
    rows[3]["photo"] = "img/nowhere.png"  # given but unreadable: a bad row (found by check)
    rows[6]["photo"] = ""  # absent: the fusion takes it so
    nan = np.zeros((3, 16, 16), np.float32)
    nan[0, 1, 1] = np.nan
    np.save(dataset.parent / "img" / "nan.npy", nan)
    rows[9]["photo"] = "img/nan.npy"  # found bad only when decoded, in every epoch
    write_csv(dataset, rows)
    runs = {}
    for name, cache in (("kept", "auto"), ("decoded", 0)):
        runs[name] = _train(dataset, tmp_path, name, on_bad_row="skip", cache_mib=cache,
                            val_fraction=0.0)
    kept, decoded = runs["kept"], runs["decoded"]
    assert kept.report.skipped == decoded.report.skipped
    assert sum("nan.npy" in line for line in kept.report.skipped) == 1  # found each epoch, said once
    assert any("nowhere.png" in line for line in kept.report.skipped)
    assert [r["train_loss"] for r in kept.history] == [r["train_loss"] for r in decoded.history]

    table, kept_set, plain_set, cache = _datasets(dataset, augment=False)
    positions = np.arange(len(table))
    for epoch in (1, 2):
        a, b = kept_set[(epoch, 0, positions)], plain_set[(epoch, 0, positions)]
        assert a.bad == b.bad and list(a.positions) == list(b.positions)
        assert {k: torch.equal(v, b.present[k]) for k, v in a.present.items()} == {"photo": True}
        assert torch.equal(a.inputs["photo"], b.inputs["photo"])


def _plan(dataset, said, adapter=None, **training):
    spec = spec_data(**training)
    spec["inputs"]["photo"]["adapter"].update(adapter or {})
    model_spec = polymodal.load_spec(spec)
    table = read_table(dataset)
    binding = Binding(model_spec)
    state = binding.fit(table)
    binding = Binding(binding.complete(state))
    opts = TrainingOptions.model_validate(spec["training"])
    return plan(binding, state, table, table.take([]), opts, torch.device("cpu"), 1, said.append)


def test_rows_over_the_budget_are_not_kept_and_that_is_said(dataset):
    said: list[str] = []
    # 256 px resized images: 768 KiB of float32 each, 36 MiB for the 48 rows
    loading = _plan(dataset, said, adapter={"size": 256}, cache_mib=1)
    assert loading.train_cache is None
    assert said == ["data: 36.0 MiB decoded (48 rows of 768.0 KiB), more than the 1.0 MiB of"
                    " cache_mib: 1: read and decoded batch by batch; "
                    + ("no worker processes (the training process loads) (workers: auto, the"
                       " run's threads take every core)" if loading.workers == 0 else
                       f"{loading.workers} data-loading worker process(es) (workers: auto)")]
    said.clear()
    loading = _plan(dataset, said, cache_mib=1)
    assert loading.train_cache is not None and loading.workers == 0
    assert said[0].startswith("data: 36.6 KiB decoded (48 rows of 780 bytes), kept in memory"
                              " (cache_mib: 1)")
    said.clear()
    loading = _plan(dataset, said, workers=2)
    assert loading.train_cache is None and loading.workers == 2
    assert "not kept in memory: workers: 2 each decode their own batches" in said[0]


def test_a_codec_whose_values_change_form_is_no_longer_kept():
    table = polymodal.plugin.Table.from_columns({"x": [1, 2, 3, 4]})
    cache = RowCache(table.rows, ["x"])
    issues = polymodal.plugin.RowIssues(table)

    def uint8(t, found):
        return torch.zeros(len(t), 2, dtype=torch.uint8)

    def floats(t, found):
        return torch.ones(len(t), 2)

    assert cache.read("x", table.take([]), issues, uint8).shape == (0, 2)  # no row: not kept
    assert not cache.stores["x"].known.any()
    assert cache.read("x", table.take([0, 1]), issues, uint8).dtype == torch.uint8
    assert cache.stores["x"].known.sum() == 2
    assert cache.read("x", table.take([2, 3]), issues, floats).dtype == torch.float32
    assert cache.stores["x"].off and cache.kept_bytes() == 0
    assert torch.equal(cache.read("x", table.take([0]), issues, floats), torch.ones(1, 2))


def test_the_statistics_pass_and_the_first_epoch_share_their_reads(dataset):
    """The images the statistics pass read are taken by the first batches that need them, each
    once: with the files' bytes spoilt after fitting (their size and time kept, so that they
    look unchanged), the first encoding still gives the images, a second does not."""
    spec = polymodal.load_spec(spec_data())
    table = read_table(dataset)
    binding = Binding(spec)
    state = binding.fit(table)  # 48 rows: the pass reads every image
    float_reads = np.stack([np.asarray(Image.open(dataset.parent / p).convert("RGB"), np.float32)
                            / np.float32(255.0) for p in table.columns["photo"]]).astype(np.float64)
    assert np.allclose(state["inputs"]["photo"]["mean"], float_reads.mean(axis=(0, 1, 2)),
                       rtol=1e-12, atol=0)
    for path in (dataset.parent / "img").iterdir():
        found = path.stat()
        path.write_bytes(b"\0" * found.st_size)
        os.utime(path, ns=(found.st_atime_ns, found.st_mtime_ns))
    binding = Binding(binding.complete(state))
    first = binding.encode(table, state, targets=True)
    assert not first.bad and len(first.positions) == len(table)
    assert np.array_equal(first.inputs["photo"].permute(0, 2, 3, 1).numpy(),
                          np.round(float_reads * 255).astype(np.uint8))
    again = binding.encode(table, state, targets=True)
    assert len(again.bad) == len(table)
    assert all("is not an image Pillow can read" in m for m in again.bad.values()), again.bad


def test_the_size_of_a_kept_row_is_taken_from_a_row_that_holds_every_input(dataset, tmp_path):
    """An absent photo encodes as a float placeholder: a first row without its photo must not
    make 8-bit images look four times their size."""
    rows = read_csv(dataset)
    for row in rows[:3]:
        row["photo"] = ""
    write_csv(dataset, rows)
    said: list[str] = []
    polymodal.train(spec_data(epochs=1), dataset, tmp_path / "m.safetensors", progress=False,
                    log=said.append)
    line = next(s for s in said if s.startswith("data: "))
    per_row = int(line.split(" rows of ")[1].split(" bytes")[0].replace(",", ""))
    assert per_row < 3 * 16 * 16 * 2, line  # uint8 pixels (768 bytes) and the record's few

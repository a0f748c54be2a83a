"""Tests of polymodal-signal, as its author runs them: `pytest tests` in this directory."""

import numpy as np
import pytest
import torch

import polymodal
from polymodal.plugin import RowIssues, Table, check_component, check_export
from polymodal_signal.adapter import SignalAdapter
from polymodal_signal.tcn import TCNBackbone


def test_signal_adapter_conforms():
    report = check_component(
        SignalAdapter, {"channels": 3, "mean": [0, 1, 2], "std": [1, 2, 3]},
        bad_options=[{"channels": 0}, {"std": [1, 0, 1]}, {"mean": [0.0]},
                     {"instance_norm": True}],
    )
    assert report.gives == polymodal.plugin.Sequence(3)


def test_tcn_conforms(polymodal_check):
    report = polymodal_check(
        TCNBackbone, {"channels": 16, "levels": 2}, takes=polymodal.plugin.Sequence(3),
        bad_options=[{"levels": 0}, {"pooling": "last"}, {"kernel_size": 1}],
    )
    assert report.output_shape == (2, 16)


def test_both_components_export():
    # torch.export always; ONNX too where onnx, onnxscript and onnxruntime are installed.
    check_export(SignalAdapter, {"channels": 3, "instance_norm": True})
    check_export(TCNBackbone, {"channels": 16, "levels": 2}, takes=polymodal.plugin.Sequence(3))


def test_per_channel_statistics_normalise_each_lead():
    config = SignalAdapter.Config(channels=2, mean=[1.0, -2.0], std=[2.0, 4.0])
    adapter = SignalAdapter(config)
    out = adapter(torch.tensor([[[1.0, 3.0], [-2.0, 2.0]]]))
    assert torch.equal(out, torch.tensor([[[0.0, 1.0], [0.0, 1.0]]]))


def test_instance_norm_removes_offset_and_gain_and_zeroes_dropouts():
    adapter = SignalAdapter(SignalAdapter.Config(channels=1, instance_norm=True))
    series = torch.tensor([[[10.0, 12.0, float("nan"), 14.0]]])
    out = adapter(series)
    assert out[0, 0, 2] == 0
    assert torch.allclose(out, adapter(series * 5 + 3), atol=1e-5)


def test_wrong_shape_is_a_data_error():
    adapter = SignalAdapter(SignalAdapter.Config(channels=12, length=500))
    with pytest.raises(polymodal.DataError, match=r"\[batch, 12, 500\].*\[4, 12, 400\]"):
        adapter(torch.zeros(4, 12, 400))


def test_causal_tcn_does_not_see_the_future():
    tcn = TCNBackbone(TCNBackbone.Config(channels=8, levels=2, causal=True, pooling="last"),
                      polymodal.plugin.Sequence(1)).eval()
    x = torch.randn(1, 1, 40)
    changed = x.clone()
    changed[:, :, 30:] += 1.0
    inner = tcn.blocks
    assert torch.equal(inner(x)[:, :, :30], inner(changed)[:, :, :30])


def test_tcn_takes_only_sequences():
    with pytest.raises(polymodal.ConnectionMismatch, match="takes a sequence"):
        TCNBackbone.Config().gives(polymodal.plugin.Vector(12))


# -- the codec: reading signals from a table ---------------------------------------------------


def _table(folder, cells: list[str]) -> Table:
    return Table.from_columns({"ecg": cells}, source="heart.csv", base_dir=folder)


def _codec(**options):
    return SignalAdapter.Config(**{"channels": 2, **options}).codec("ecg", "inputs.ecg.adapter")


def test_the_codec_fits_channel_statistics_that_prepare_puts_into_the_adapter(tmp_path):
    rng = np.random.default_rng(0)
    signals = [np.stack([rng.normal(5, 2, 50), rng.normal(-1, 0.5, 50)]) for _ in range(4)]
    signals[1][0, 3] = np.nan  # a dropped-out sample is left out of the statistics
    for i, signal in enumerate(signals):
        np.save(tmp_path / f"{i}.npy", signal)
    table = _table(tmp_path, [f"{i}.npy" for i in range(4)])
    codec = _codec()
    issues = RowIssues(table)
    codec.check(table, issues, None)
    assert not issues.bad
    state = codec.fit(table)
    stacked = np.concatenate(signals, axis=1)
    assert state["length"] == 50
    assert state["mean"] == pytest.approx(np.nanmean(stacked, axis=1).tolist())
    assert state["std"] == pytest.approx(np.nanstd(stacked, axis=1).tolist())

    batch = codec.encode(table, state, issues)
    assert batch.shape == (4, 2, 50) and batch.dtype == torch.float32
    adapter = SignalAdapter(codec.config)
    codec.prepare(adapter, state)
    assert adapter.mean.flatten().tolist() == pytest.approx(state["mean"])
    normalised = adapter(batch)  # each channel in standard units (the NaN sample becomes 0)
    assert torch.allclose(normalised.mean(dim=(0, 2)), torch.zeros(2), atol=1e-4)
    assert torch.allclose(normalised.std(dim=(0, 2)), torch.ones(2), atol=0.02)


def test_a_spec_normalisation_is_not_replaced_by_fitted_statistics(tmp_path):
    np.save(tmp_path / "a.npy", np.ones((2, 8)))
    table = _table(tmp_path, ["a.npy"])
    for options in ({"mean": [0.0, 0.0], "std": [1.0, 1.0]}, {"instance_norm": True}):
        codec = _codec(**options)
        adapter = SignalAdapter(codec.config)
        before = adapter.mean.clone()
        codec.prepare(adapter, codec.fit(table))
        assert torch.equal(adapter.mean, before)


def test_bad_signal_files_are_bad_rows_naming_row_column_and_problem(tmp_path):
    np.save(tmp_path / "good.npy", np.zeros((2, 10)))
    np.save(tmp_path / "three.npy", np.zeros((3, 10)))
    np.save(tmp_path / "short.npy", np.zeros((2, 7)))
    np.save(tmp_path / "words.npy", np.array([["a", "b"], ["c", "d"]]))
    (tmp_path / "notes.npy").write_text("1, 2, 3")
    cells = ["good.npy", "", "gone.npy", "three.npy", "short.npy", "words.npy", "notes.npy"]
    table = _table(tmp_path, cells)
    issues = RowIssues(table)
    _codec().check(table, issues, None)
    assert issues.bad[1] == "heart.csv row 2, column 'ecg': no signal file (empty)"
    assert issues.bad[2] == f"heart.csv row 3, column 'ecg': signal file 'gone.npy' not found in {tmp_path}"
    assert issues.bad[3] == ("heart.csv row 4, column 'ecg': signal file 'three.npy' holds an array"
                             " of shape [3, 10]; inputs.ecg.adapter.channels is 2, so it must be"
                             " [2, T]")
    assert issues.bad[4].startswith("heart.csv row 5, column 'ecg': signal file 'short.npy' has 7"
                                    " time steps but the others have 10")
    assert issues.bad[5].endswith("signal file 'words.npy' holds <U1 values, not numbers")
    assert "signal file 'notes.npy' is not a readable .npy array" in issues.bad[6]
    assert 0 not in issues.bad
    # Only the empty cell says the recording is absent (plugin API 2.1): a file that is named
    # but cannot be read is a bad row, never an absent input.
    assert _codec().absent(table).tolist() == [False, True, False, False, False, False, False]

    trained = RowIssues(table)
    _codec().check(table, trained, {"mean": [0, 0], "std": [1, 1], "length": 7})
    assert trained.bad[0].endswith("'good.npy' has 10 time steps but the model was trained on"
                                   " signals of 7")


def test_one_channel_signals_may_be_one_dimensional(tmp_path):
    np.save(tmp_path / "flat.npy", np.arange(6.0))
    table = _table(tmp_path, ["flat.npy"])
    codec = _codec(channels=1)
    state = codec.fit(table)
    assert codec.encode(table, state, RowIssues(table)).tolist() == [[list(np.arange(6.0))]]


def test_noise_is_drawn_from_the_batch_generator_and_only_when_asked():
    batch = torch.zeros(4, 2, 16)
    quiet = _codec()
    assert quiet.augment(batch, torch.Generator().manual_seed(0)) is batch
    noisy = _codec(noise_std=0.5)
    first = noisy.augment(batch, torch.Generator().manual_seed(1))
    assert torch.equal(first, noisy.augment(batch, torch.Generator().manual_seed(1)))
    assert 0.3 < float(first.std()) < 0.7

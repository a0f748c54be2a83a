"""N-channel image files (.npy, multi-band TIFF) and augmentation that suits any channel count."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch

import polymodal
from polymodal.data.augment import augment_images
from polymodal.data.images import ImageReadError, image_shape, read_image
from polymodal.training.options import Augment


def test_npy_channels_first_or_last_and_tiff_bands(tmp_path):
    tifffile = pytest.importorskip("tifffile")
    cube = np.random.default_rng(0).random((5, 8, 6)).astype(np.float32)
    np.save(tmp_path / "first.npy", cube)
    np.save(tmp_path / "last.npy", np.moveaxis(cube, 0, -1))
    tifffile.imwrite(tmp_path / "bands.tif", (cube * 65535).astype(np.uint16))
    assert np.array_equal(read_image(tmp_path / "first.npy", 5), cube)
    assert np.array_equal(read_image(tmp_path / "last.npy", 5), cube)
    assert image_shape(tmp_path / "last.npy", 5) == (5, 8, 6)
    assert np.allclose(read_image(tmp_path / "bands.tif", 5), cube, atol=1e-4)
    with pytest.raises(ImageReadError, match="not found"):
        read_image(tmp_path / "gone.npy")


def test_twelve_band_scans_train_from_npy_files(tmp_path):
    rng = np.random.default_rng(1)
    rows = []
    (tmp_path / "scans").mkdir()
    for i in range(24):
        bright = i % 2
        scan = rng.random((12, 8, 8)).astype(np.float32) + bright
        np.save(tmp_path / "scans" / f"{i}.npy", scan)
        rows.append([f"scans/{i}.npy", "high" if bright else "low"])
    with (tmp_path / "scans.csv").open("w", newline="") as handle:
        csv.writer(handle).writerows([["scan", "level"], *rows])
    spec = {
        "inputs": {"scan": {"adapter": {"type": "image", "channels": 12},
                            "backbone": {"type": "timm", "model": "resnet10t", "in_chans": 12}}},
        "heads": {"level": {"type": "classification"}},
        "training": {"epochs": 1, "batch_size": 8,
                     "augment": {"hflip": True, "vflip": True, "rot90": True, "crop_padding": 2,
                                 "noise_std": 0.01}},
    }
    result = polymodal.train(spec, tmp_path / "scans.csv", tmp_path / "m.safetensors", progress=False)
    assert result.model.spec.inputs["scan"].adapter.mean is not None
    assert len(result.model.spec.inputs["scan"].adapter.mean) == 12


def test_augmentation_keeps_every_band_and_is_reproducible():
    images = torch.arange(2 * 12 * 6 * 6, dtype=torch.float32).view(2, 12, 6, 6)
    options = Augment(hflip=True, vflip=True, rot90=True, crop_padding=1, noise_std=0.0)
    first = augment_images(images, options, torch.Generator().manual_seed(3))
    again = augment_images(images, options, torch.Generator().manual_seed(3))
    assert torch.equal(first, again) and first.shape == images.shape
    # geometric operations move pixels but never mix bands: each band keeps its own values
    for b in range(2):
        for c in range(12):
            assert set(first[b, c].flatten().tolist()) <= set(images[b, c].flatten().tolist())
    noisy = augment_images(images, Augment(noise_std=0.5), torch.Generator().manual_seed(0))
    assert 0.3 < float((noisy - images).std()) < 0.7

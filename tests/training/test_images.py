"""N-channel image files (.npy, multi-band TIFF) and augmentation that suits any channel count."""

from __future__ import annotations

import csv
import re
import struct
import time
import warnings
import zlib

import numpy as np
import pytest
import torch

import polymodal
from polymodal_plugins._augment import Augment, augment_images
from polymodal_plugins._images import ImageReadError, image_array, image_shape, read_image


def write_png(path, width: int, height: int, pixels: bool = True) -> None:
    """An 8-bit grey PNG of zeros, compressed row by row (a 12000x12000 one is 420 KB); without
    ``pixels``, only its header, which may claim any size."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    stream = zlib.compressobj(9)
    row = bytes(width + 1)
    data = (b"".join(stream.compress(row) for _ in range(height)) if pixels else b"") + stream.flush()
    path.write_bytes(b"\x89PNG\r\n\x1a\n"
                     + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
                     + chunk(b"IDAT", data) + chunk(b"IEND", b""))


def write_npy_header(path, shape: tuple[int, ...]) -> None:
    """A .npy file whose header claims ``shape`` of float32, holding no values."""
    from numpy.lib import format as npy

    with path.open("wb") as handle:
        npy.write_array_header_1_0(handle, {"descr": "<f4", "fortran_order": False, "shape": shape})


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


def test_a_tiff_without_image_data_is_not_readable(tmp_path):
    pytest.importorskip("tifffile")
    (tmp_path / "garbage.tif").write_bytes(b"II*\x00" + b"\xff" * 1024)  # a header, then nothing
    with pytest.raises(ImageReadError, match="^is not a readable TIFF file"):
        read_image(tmp_path / "garbage.tif", 10)


def test_files_that_are_no_image_say_what_they_are(tmp_path):
    (tmp_path / "notes.npy").write_text("1, 2, 3")
    np.save(tmp_path / "objects.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    (tmp_path / "scans.npy").mkdir()
    np.save(tmp_path / "words.npy", np.array([["a", "b"], ["c", "d"]]))
    for read in (read_image, image_shape):
        with pytest.raises(ImageReadError, match=r"^is not a .npy file \(it lacks the .npy header\)$"):
            read(tmp_path / "notes.npy")
        with pytest.raises(ImageReadError, match="^holds Python objects, not numbers$"):
            read(tmp_path / "objects.npy")
        with pytest.raises(ImageReadError, match="^is a folder, not an image file$"):
            read(tmp_path / "scans.npy")
        with pytest.raises(ImageReadError, match="^holds <U1 values, not numbers$"):
            read(tmp_path / "words.npy")


def test_an_image_larger_than_the_limit_is_refused_from_its_header(tmp_path):
    write_png(tmp_path / "zeros.png", 12000, 12000)  # a real image: 420 KB, 144 megapixels
    write_png(tmp_path / "claims.png", 100_000, 100_000, pixels=False)  # beyond Pillow's limit
    write_npy_header(tmp_path / "claims.npy", (3, 100_000, 100_000))
    write_npy_header(tmp_path / "bands.npy", (4096, 512, 512))  # few pixels, too many values
    expected = {
        "zeros.png": "is 12000x12000 pixels, more than the 67,108,864 (8192x8192) an image may have",
        "claims.png": "is 100000x100000 pixels, more than the 67,108,864 (8192x8192)",
        "claims.npy": "is 100000x100000 pixels, more than the 67,108,864 (8192x8192)",
        "bands.npy": "holds 4096 channels of 512x512 pixels, more than the 268,435,456 values",
    }
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # Pillow's DecompressionBombWarning among them
        for name, said in expected.items():
            for read in (image_shape, read_image):
                started = time.process_time()
                with pytest.raises(ImageReadError, match=f"^{re.escape(said)}"):
                    read(tmp_path / name, 3)
                assert time.process_time() - started < 1.0, (name, read)


@pytest.mark.parametrize("mode", ["1", "L", "I;16", "LA", "RGB", "RGBA", "P", "P+t"])
def test_a_png_header_says_what_pillow_reads(tmp_path, mode):
    """The shape a PNG's header gives (read without Pillow) is the shape its pixels have."""
    from PIL import Image

    path = tmp_path / "x.png"
    image = Image.new(mode.removesuffix("+t"), (7, 5))
    image.save(path, **({"transparency": 0} if mode == "P+t" else {}))
    assert image_shape(path) == read_image(path).shape
    assert image_shape(path)[1:] == (5, 7)
    jpeg = tmp_path / "named.png"  # a JPEG under a PNG's name: Pillow tells
    Image.new("RGB", (6, 4)).save(jpeg, format="JPEG")
    assert image_shape(jpeg) == read_image(jpeg).shape == (3, 4, 6)


def test_a_tiff_larger_than_the_limit_is_refused_from_its_header(tmp_path):
    tifffile = pytest.importorskip("tifffile")
    # written without data: a sparse file where the file system allows
    tifffile.imwrite(tmp_path / "large.tif", shape=(9000, 9000), dtype="uint8",
                     photometric="minisblack")
    for read in (image_shape, read_image):
        started = time.process_time()
        with pytest.raises(ImageReadError, match=r"^is 9000x9000 pixels, more than the 67,108,864"):
            read(tmp_path / "large.tif", 1)
        assert time.process_time() - started < 1.0


def test_an_image_without_pixels_is_refused(tmp_path):
    np.save(tmp_path / "empty.npy", np.zeros((3, 0, 16), np.float32))
    for read in (image_shape, read_image):
        with pytest.raises(ImageReadError, match=r"^holds an empty array of shape \[3, 0, 16\]"):
            read(tmp_path / "empty.npy", 3)
    with pytest.raises(ImageReadError, match=r"^holds an empty array of shape \[0, 16, 3\]"):
        image_array(np.zeros((0, 16, 3), np.uint8), 3)


def test_an_image_holding_nan_or_infinity_is_refused_when_its_pixels_are_read(tmp_path):
    cube = np.zeros((3, 16, 16), np.float32)
    cube[1, 2, 3] = np.nan
    cube[2, 0, 0] = np.inf
    np.save(tmp_path / "nan.npy", cube)
    np.save(tmp_path / "huge.npy", np.full((3, 4, 4), 1e300))  # float64 beyond float32
    assert image_shape(tmp_path / "nan.npy", 3) == (3, 16, 16)  # a header holds no values
    with pytest.raises(ImageReadError, match=r"^holds 2 value\(s\) that are not finite numbers"
                       r" \(NaN or infinite\)$"):
        read_image(tmp_path / "nan.npy", 3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # numpy's overflow warning of the cast
        with pytest.raises(ImageReadError, match=r"^holds 48 value\(s\) .* beyond float32's range"):
            read_image(tmp_path / "huge.npy", 3)
    with pytest.raises(ImageReadError, match="not finite"):
        image_array(torch.tensor(cube), 3)
    np.save(tmp_path / "ok.npy", np.nan_to_num(cube, posinf=0.0))
    assert read_image(tmp_path / "ok.npy", 3).shape == (3, 16, 16)


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
        "inputs": {"scan": {"adapter": {"type": "image", "channels": 12,
                                        "augment": {"hflip": True, "vflip": True, "rot90": True,
                                                    "crop_padding": 2, "noise_std": 0.01}},
                            "backbone": {"type": "timm", "model": "resnet10t", "in_chans": 12}}},
        "heads": {"level": {"type": "classification"}},
        "training": {"epochs": 1, "batch_size": 8},
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


def _augmented_plainly(images: torch.Tensor, options: Augment, generator: torch.Generator) -> torch.Tensor:
    """What augmentation means, written the plain way: flips, quarter turns, reflection padding
    and a random crop, noise; the same draws in the same order."""
    batch, _, height, width = images.shape
    images = images.float() / 255 if images.dtype == torch.uint8 else images
    hflip = torch.rand(batch, generator=generator) < 0.5 if options.hflip else torch.zeros(batch, dtype=torch.bool)
    vflip = torch.rand(batch, generator=generator) < 0.5 if options.vflip else torch.zeros(batch, dtype=torch.bool)
    turns = torch.randint(0, 4, (batch,), generator=generator) if options.rot90 else torch.zeros(batch, dtype=torch.long)
    turns = turns if height == width else (turns % 2) * 2
    pad = options.crop_padding
    tops = torch.randint(0, 2 * pad + 1, (batch,), generator=generator) if pad else [0] * batch
    lefts = torch.randint(0, 2 * pad + 1, (batch,), generator=generator) if pad else [0] * batch
    samples = []
    for i, image in enumerate(images):
        image = image.flip(-1) if hflip[i] else image
        image = image.flip(-2) if vflip[i] else image
        image = torch.rot90(image, int(turns[i]), dims=(-2, -1))
        mode = "reflect" if pad < min(height, width) else "replicate"
        image = torch.nn.functional.pad(image[None], (pad,) * 4, mode=mode)[0] if pad else image
        samples.append(image[:, int(tops[i]):int(tops[i]) + height, int(lefts[i]):int(lefts[i]) + width])
    out = torch.stack(samples)
    if options.noise_std:
        out = out + torch.randn(out.shape, generator=generator) * options.noise_std
    return out


@pytest.mark.parametrize("shape", [(6, 2, 7, 7), (6, 12, 5, 8), (6, 1, 3, 3)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.uint8])
def test_augmentation_is_exactly_flips_turns_reflection_crops_and_noise(shape, dtype):
    images = torch.randint(0, 256, shape).to(dtype)
    for options in (Augment(hflip=True, vflip=True, rot90=True, crop_padding=2),
                    Augment(hflip=True, crop_padding=4, noise_std=0.1),
                    Augment(vflip=True, rot90=True, crop_padding=1, noise_std=0.0)):
        for seed in range(3):
            fast = augment_images(images, options, torch.Generator().manual_seed(seed))
            fast = fast.float() / 255 if fast.dtype == torch.uint8 else fast
            plain = _augmented_plainly(images, options, torch.Generator().manual_seed(seed))
            assert torch.equal(fast, plain), (options, seed)


def test_8_bit_batches_travel_as_uint8_and_the_adapter_scales_them(dataset, tmp_path):
    from polymodal._data.binding import Binding
    from polymodal._data.table import read_table

    spec = polymodal.load_spec({"inputs": {"photo": {"adapter": {"type": "image", "channels": 3},
                                                     "backbone": {"type": "timm", "model": "resnet10t"}}},
                                "heads": {"label": {"type": "classification", "classes": 2}}})
    binding, table = Binding(spec), read_table(dataset)
    state = binding.fit(table)
    batch = binding.encode(table.take(range(8)), state, targets=False).inputs["photo"]
    assert batch.dtype == torch.uint8  # a quarter of the bytes of float32
    files = [read_image(dataset.parent / p) for p in table.columns["photo"][:8]]
    assert torch.equal(batch.float() / 255, torch.from_numpy(np.stack(files)))

    model = polymodal.build(binding.complete(state)).eval()
    with torch.no_grad():
        assert torch.equal(model({"photo": batch})["label"], model({"photo": batch.float() / 255})["label"])

    # geometric augmentation keeps 8 bits; noise needs floats, so it scales first, the same way
    moved = augment_images(batch, Augment(hflip=True, rot90=True, crop_padding=2), torch.Generator().manual_seed(1))
    assert moved.dtype == torch.uint8
    for options in (Augment(hflip=True, crop_padding=2), Augment(vflip=True, noise_std=0.1)):
        from_8_bits = augment_images(batch, options, torch.Generator().manual_seed(1))
        if from_8_bits.dtype == torch.uint8:
            from_8_bits = from_8_bits.float() / 255
        assert torch.equal(from_8_bits, augment_images(batch.float() / 255, options,
                                                       torch.Generator().manual_seed(1)))


def test_16_bit_images_make_a_float_batch(tmp_path):
    from PIL import Image

    from polymodal._data.binding import Binding
    from polymodal._data.table import read_table

    Image.fromarray(np.full((8, 8), 40000, np.uint16)).save(tmp_path / "deep.png")
    Image.fromarray(np.full((8, 8), 200, np.uint8)).save(tmp_path / "flat.png")
    spec = polymodal.load_spec({"inputs": {"scan": {"adapter": {"type": "image", "channels": 1},
                                                    "backbone": {"type": "timm", "model": "resnet10t",
                                                                 "in_chans": 1}}},
                                "heads": {"y": {"type": "regression"}}})
    binding = Binding(spec)
    table = read_table({"scan": [str(tmp_path / "deep.png"), str(tmp_path / "flat.png")], "y": [1, 2]})
    batch = binding.encode(table, binding.fit(table), targets=False).inputs["scan"]
    assert batch.dtype == torch.float32
    assert torch.allclose(batch[:, 0, 0, 0], torch.tensor([40000 / 65535, 200 / 255]))


@pytest.mark.parametrize("dtype, stored, read", [
    (np.uint8, 255, 1.0), (np.uint16, 4095, 4095 / 65535), (np.bool_, True, 1.0),
    (np.int8, -7, -7.0), (np.int16, -1200, -1200.0), (np.int32, 70000, 70000.0),
    (np.uint32, 70000, 70000.0), (np.int64, 3, 3.0), (np.float16, 0.5, 0.5),
    (np.float64, 2.25, 2.25),
])
def test_image_values_are_scaled_by_their_type_as_the_guide_says(tmp_path, dtype, stored, read):
    import tifffile

    image = np.full((2, 4, 4), stored, dtype=dtype)
    np.save(tmp_path / "a.npy", image)
    tifffile.imwrite(tmp_path / "a.tif", image, photometric="minisblack")
    for path in (tmp_path / "a.npy", tmp_path / "a.tif"):
        got = read_image(path, channels=2)
        assert got.dtype == np.float32 and got.shape == (2, 4, 4)
        assert np.allclose(got, read, rtol=1e-6), (path.suffix, got.flat[0])

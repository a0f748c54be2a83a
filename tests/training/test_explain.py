"""polymodal explain: what each input, column and band contributes, per head, metric and row."""

from __future__ import annotations

import json

import numpy as np
import pytest
from training_data import read_csv, spec_data, write_csv

import polymodal
from polymodal._cli import main


@pytest.fixture(scope="module")
def two_heads(tmp_path_factory):
    """A model with a fused head and a head that reads the report alone, on a table whose label
    needs both inputs; some photos are absent."""
    from training_data import write_dataset

    folder = tmp_path_factory.mktemp("explain")
    table = write_dataset(folder, rows=48)
    rows = read_csv(table)
    for row in rows[::6]:
        row["photo"] = ""
    write_csv(table, rows)
    spec = spec_data(epochs=3)
    spec["heads"]["report_only"] = {"type": "classification", "target": "label", "inputs": ["report"]}
    model = folder / "m.safetensors"
    polymodal.train(spec, table, model, progress=False)
    return model, table


def test_each_input_column_and_band_gets_a_contribution(two_heads, tmp_path, capsys):
    model, table = two_heads
    out = tmp_path / "explained"
    assert main(["explain", str(model), "--data", str(table), "-o", str(out), "--repeats", "3",
                 "--rows", "4", "--keep", "id"]) == 0
    printed = capsys.readouterr().out
    assert "drop, photo absent" in printed and "drop, report.color permuted" in printed
    assert "drop, photo.channel_2 permuted" in printed  # bands, named channel_N when unnamed
    report = json.loads((out / "report.json").read_text())
    assert report["rows"] == 48 and report["repeats"] == 3
    # 1 full pass, 2 absent, 2 inputs x 3, 3 bands x 3, 2 columns x 3, and 2 for the rows
    assert report["passes"] == 1 + 2 + 6 + 9 + 6 + 2
    label = report["heads"]["label"]["contributions"]
    assert set(label) >= {"photo absent", "photo permuted", "report absent", "report permuted",
                          "report.color permuted", "report.age permuted"}
    assert set(label["photo permuted"]) == {"accuracy", "balanced_accuracy", "macro_f1", "auroc"}
    # the head that reads the report alone cannot take it as absent, and ignores the photo
    alone = report["heads"]["report_only"]
    assert "report absent" not in alone["contributions"]
    assert alone["cannot_be_absent"] == {"report": "head 'report_only' reads it alone"}
    for how in ("photo absent", "photo permuted", "photo.channel_1 permuted"):
        assert all(v["drop"] == 0 for v in alone["contributions"][how].values()), how
    importance = read_csv(out / "importance.csv")
    assert {r["how"] for r in importance} == {"absent", "permuted"}
    assert {r["part"] for r in importance if r["input"] == "report"} == {"", "color", "age"}
    rows = read_csv(out / "rows.csv")
    assert [r["id"] for r in rows] == ["r0", "r1", "r2", "r3"]
    for row in rows[1:]:
        change = float(row["label_score_without_photo"]) - float(row["label_score"])
        assert float(row["label_change_without_photo"]) == pytest.approx(change, abs=1e-6)
    assert rows[0]["label_change_without_photo"] == ""  # row 1 has no photo already
    # ... so without the report it would hold no input at all: no prediction, no change
    assert rows[0]["label_without_report"] == rows[0]["label_change_without_report"] == ""
    assert rows[1]["label_without_report"] != "" and rows[1]["label_change_without_report"] != ""
    assert (out / "importance_label.png").stat().st_size > 1000
    assert (out / "report.txt").read_text().startswith("explained 48 row(s)")


def test_rows_by_number_and_the_python_api(two_heads):
    model, table = two_heads
    result = polymodal.explain(model, table, repeats=1, rows=[2, 5], parts=False)
    assert result.per_row["row"] == [2, 5]
    assert result.passes == 1 + 2 + 2 + 2
    with pytest.raises(polymodal.DataError, match="has no row 99: rows are numbered"):
        polymodal.explain(model, table, repeats=1, rows=[99], parts=False)


def test_rows_after_skipped_bad_rows_are_shown_with_their_own_numbers(two_heads, tmp_path):
    model, table = two_heads
    rows = read_csv(table)
    for row in rows[1:4]:  # rows 2 to 4: files that are not there
        row["photo"] = "nowhere.png"
    messy = tmp_path / "messy.csv"
    write_csv(messy, rows)
    (tmp_path / "img").symlink_to(table.parent / "img")
    predicted = polymodal.predict(model, messy, on_bad_row="skip", keep=["id"])
    by_row = dict(zip(predicted["columns"]["row"], predicted["columns"]["label"]))
    result = polymodal.explain(model, messy, repeats=1, rows=[1, 5, 6], keep=["id"],
                               on_bad_row="skip", parts=False)
    assert result.per_row["row"] == [1, 5, 6] and result.per_row["id"] == ["r0", "r4", "r5"]
    assert result.per_row["label"] == [by_row[1], by_row[5], by_row[6]]
    first = polymodal.explain(model, messy, repeats=1, rows=3, on_bad_row="skip", parts=False)
    assert first.per_row["row"] == [1, 5, 6]


def test_the_same_seed_gives_the_same_explanation(two_heads):
    model, table = two_heads
    first = polymodal.explain(model, table, repeats=2, seed=3).importance_rows()
    assert first == polymodal.explain(model, table, repeats=2, seed=3).importance_rows()
    assert first != polymodal.explain(model, table, repeats=2, seed=4).importance_rows()


def test_a_large_table_is_sampled(two_heads):
    model, table = two_heads
    notes: list[str] = []
    result = polymodal.explain(model, table, repeats=1, parts=False, max_rows=20, log=notes.append)
    assert result.rows == 20 and any("explaining 20 drawn at random" in n for n in notes)


def test_image_bands_are_named_after_the_adapters_bands(tmp_path):
    from polymodal.plugin import Table

    from polymodal_plugins.image import ImageAdapter

    codec = ImageAdapter.Config(channels=3, bands=["red", "green", "nir"]).codec("tile", "inputs.tile")
    assert codec.parts() == ["red", "green", "nir"]
    import torch

    value = torch.arange(2 * 3 * 1 * 1).view(2, 3, 1, 1)
    swapped = codec.permute_part(value, "green", torch.tensor([1, 0]))
    assert swapped[:, 1].flatten().tolist() == [4, 1] and torch.equal(swapped[:, 0], value[:, 0])
    assert np.array_equal(codec.absent(Table.from_columns({"tile": ["a.png", "", None]})),
                          [False, True, True])


def test_cv_explains_each_fold_and_a_rerun_explains_the_folds_it_kept(tmp_path, capsys):
    """cv --explain: per-input drops per fold and their mean ± sd in the report; folds finished
    by a run without --explain are explained from their saved models, not trained again."""
    import yaml
    from training_data import write_dataset

    table = write_dataset(tmp_path, rows=48)
    rows = read_csv(table)
    for row in rows[::4]:
        row["photo"] = ""
    write_csv(table, rows)
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump(spec_data(epochs=1)))
    out = tmp_path / "cv"
    command = ["cv", str(spec), "--data", str(table), "--folds", "2", "-o", str(out)]
    assert main(command) == 0
    assert "what each input contributes" not in (out / "report.txt").read_text()
    capsys.readouterr()
    assert main([*command, "--explain"]) == 0
    printed = capsys.readouterr()
    assert printed.err.count("(finished in an earlier run: reused)") == 2
    assert "head label, toy, what each input contributes on the held-out fold" in printed.out
    summary = json.loads((out / "report.json").read_text())["specs"]["toy"]
    folds = summary["folds_contributions"]
    assert len(folds) == 2
    assert set(folds[0]["label"]) == {"photo absent", "photo permuted", "report absent",
                                      "report permuted"}
    drops = [f["label"]["photo permuted"]["accuracy"] for f in folds]
    mean = summary["contributions"]["label"]["photo permuted"]["accuracy"]
    assert mean["drop"] == pytest.approx(np.mean(drops), abs=1e-6)
    assert mean["drop_sd"] == pytest.approx(np.std(drops, ddof=1), abs=1e-6)
    saved = json.loads((out / "toy" / "fold_1" / "fold.json").read_text())
    assert saved["contributions"]["label"]["report permuted"]["accuracy"] == pytest.approx(
        folds[0]["label"]["report permuted"]["accuracy"], abs=1e-6)


def test_attribution_pictures_of_the_chosen_rows(two_heads, tmp_path, capsys):
    """--attribute: a PNG per chosen row, head reading the photo, and band group; none for a row
    without a photo or for the head that does not read the photo."""
    pytest.importorskip("captum")
    from PIL import Image

    model, table = two_heads
    out = tmp_path / "explained"
    assert main(["explain", str(model), "--data", str(table), "-o", str(out), "--repeats", "1",
                 "--no-parts", "--rows", "1,2", "--attribute", "integrated_gradients"]) == 0
    assert "attribution pictures of the chosen rows: 1 in" in capsys.readouterr().out
    report = json.loads((out / "report.json").read_text())
    # row 1 has no photo; head report_only does not read it
    assert report["attributions"] == ["attributions/row_2_label_photo_rgb.png"]
    picture = Image.open(out / "attributions" / "row_2_label_photo_rgb.png")
    assert picture.mode == "RGB" and picture.size[0] == 3 * picture.size[1] >= 384
    pixels = np.asarray(picture).astype(int)
    side = picture.size[1]
    grey, overlay = pixels[:, side:2 * side], pixels[:, 2 * side:]
    assert (grey[..., 0] == grey[..., 1]).all() and grey.max() == 255  # the attribution's map
    assert (overlay[..., 0] - overlay[..., 1]).max() > 100  # the attribution, in red
    assert main(["explain", str(model), "--data", str(table), "-o", str(out),
                 "--attribute", "saliency"]) == 1
    assert "choose the rows to draw (--rows)" in capsys.readouterr().err
    assert main(["explain", str(model), "--data", str(table), "--rows", "49,2"]) == 1
    assert "has no row 49: rows are numbered as the table's lines, from 1 after the header (1 to" \
           " 48 here)" in capsys.readouterr().err


def test_the_png_writer_writes_what_an_image_library_reads(tmp_path):
    from PIL import Image

    from polymodal._training.attribution import png

    picture = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    (tmp_path / "p.png").write_bytes(png(picture))
    assert np.array_equal(np.asarray(Image.open(tmp_path / "p.png")), picture)


def test_bands_are_drawn_three_at_a_time():
    from polymodal_plugins._attribution import band_groups

    assert band_groups(["r", "g", "b"]) == [("rgb", [0, 1, 2])]
    assert band_groups(["B2", "B3", "B4", "B8", "B11"]) == [("B2+B3+B4", [0, 1, 2]),
                                                            ("B8+B11", [3, 4])]
    assert band_groups(["mri"]) == [("mri", [0])]


def test_explain_refuses_a_folder_of_other_results(two_heads, tmp_path, capsys):
    model, table = two_heads
    results = tmp_path / "cv"
    results.mkdir()
    (results / "report.json").write_text("{}")  # a cross-validation's, say
    assert main(["explain", str(model), "--data", str(table), "-o", str(results)]) == 1
    assert "holds files explain did not write (report.json)" in capsys.readouterr().err
    assert (results / "report.json").read_text() == "{}"
    again = tmp_path / "explained"
    for _ in range(2):  # its own folder: replaced
        assert main(["explain", str(model), "--data", str(table), "-o", str(again),
                     "--no-parts", "--repeats", "1"]) == 0


def test_a_failed_write_leaves_the_previous_explanation_whole(two_heads, tmp_path, monkeypatch,
                                                               capsys):
    import errno

    from polymodal._training import explain as explaining

    model, table = two_heads
    out = tmp_path / "explained"
    args = ["explain", str(model), "--data", str(table), "-o", str(out), "--no-parts",
            "--repeats", "1"]
    assert main(args) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def full_disk(*_args):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(explaining, "_chart", full_disk)
    assert main([*args, "--repeats", "2"]) == 1
    assert "no space left on the device" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["explained"]  # no temporary folder

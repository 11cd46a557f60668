"""Crop folders and LUNA16-style lists -> nodule manifests, with errors that name the row and column."""

from __future__ import annotations

import csv

import numpy as np
import pydicom
import pytest

from helpers import write_ct_series
from noduleclip.cli import main
from noduleclip.data.manifest import NoduleManifest
from noduleclip.errors import InputError
from noduleclip.importers import import_crops, import_luna
from noduleclip.io import Volume, write_volume


def write_csv(path, header: list[str], rows: list[list]) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as fh:
        csv.writer(fh).writerows([header, *rows])
    return str(path)


def small_volume(value: float = -800.0) -> Volume:
    return Volume(np.full((6, 10, 12), value, np.float32), origin=(-10.0, 20.0, -50.0), spacing=(0.7, 0.7, 2.5))


@pytest.fixture
def crop_folder(tmp_path):
    folder = tmp_path / "crops"
    for name in ("a", "b", "c"):
        write_volume(small_volume(), folder / "images" / f"{name}.nii.gz")
    header = ["pid", "image", "malignancy", "spiculation", "texture", "margins", "series_uid"]
    rows = [["P1", "images/a.nii.gz", 5, 4, 5, "", "1.2.3"], ["P1", "images/b.nii.gz", 1, 1, 1, "smooth", "1.2.3"],
            ["P2", "images/c.nii.gz", 3, "", 5, "", "1.2.4"]]
    return folder, header, rows


def test_crop_table_becomes_a_manifest_with_labels_from_malignancy(crop_folder, tmp_path):
    folder, header, rows = crop_folder
    table = write_csv(folder / "crops.csv", header, rows)
    labels = import_crops(table, folder / "manifest.csv")
    manifest = NoduleManifest.read(folder / "manifest.csv")
    assert [r.nodule_id for r in manifest] == ["a", "b", "c"] and [r.label for r in manifest] == [1, 0, None]
    assert labels[1] == 1 and labels[0] == 1 and labels[None] == 1
    assert manifest[0].image == folder / "images" / "a.nii.gz" and manifest[0].coord is None  # the crop's centre
    assert manifest[0].features["margins"] == "spiculated" and manifest[1].features["margins"] == "smooth"
    assert manifest[0].columns["series_uid"] == "1.2.3"
    assert next(csv.DictReader(open(folder / "manifest.csv")))["image"] == "images/a.nii.gz"
    import_crops(table, tmp_path / "elsewhere" / "m.csv")  # outside the crop folder: absolute paths
    with open(tmp_path / "elsewhere" / "m.csv", newline="") as handle:
        assert next(csv.DictReader(handle))["image"] == (folder / "images" / "a.nii.gz").as_posix()


@pytest.mark.parametrize("change, message", [
    ((1, 2, "7"), ("crops.csv row 3", "'malignancy'", "'7'")),
    ((0, 1, "images/missing.nii.gz"), ("crops.csv row 2, column 'image'", "missing.nii.gz")),
    ((2, 5, "jagged"), ("crops.csv row 4", "margins", "jagged")),
    ((2, 0, ""), ("crops.csv row 4, column 'pid'",)),
])
def test_bad_crop_rows_give_one_sentence_and_no_file(crop_folder, capsys, change, message):
    folder, header, rows = crop_folder
    row, column, value = change
    rows[row][column] = value
    table = write_csv(folder / "crops.csv", header, rows)
    out = folder / "manifest.csv"
    assert main(["import-crops", table, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert all(m in err for m in message) and len(err.splitlines()) == 1 and not out.exists()


def test_real_lidc_crops_import(shared_data, tmp_path):
    source = shared_data / "lidc-crops" / "manifest.csv"
    labels = import_crops(source, tmp_path / "m.csv")
    manifest = NoduleManifest.read(tmp_path / "m.csv")
    original = NoduleManifest.read(source)
    assert len(manifest) == 665 and sum(labels.values()) == 665
    assert [r.label for r in manifest] == [r.label for r in original]
    def same_file(x, y):  # the same file, whichever symbolic link (e.g. a linked ../shared) led to it
        return (x is None and y is None) or (x is not None and y is not None and x.resolve() == y.resolve())

    assert all(np.allclose(a.coord, b.coord, atol=1e-3) and same_file(a.image, b.image) and same_file(a.mask, b.mask)
               for a, b in zip(manifest, original, strict=True))
    assert manifest[0].features == original[0].features


@pytest.fixture
def luna_folder(tmp_path):
    images = tmp_path / "scans"
    write_volume(small_volume(), images / "subset0" / "1.1.1.nii.gz")
    paths = write_ct_series(small_volume(), images / "subset1" / "2.2.2")
    for path in paths:
        ds = pydicom.dcmread(path)
        ds.PatientID = "PATIENT-2"
        ds.save_as(path)
    header = ["seriesuid", "coordX", "coordY", "coordZ", "diameter_mm", "class"]
    rows = [["1.1.1", -7.2, 23.1, -45.0, 6.5, 1], ["2.2.2", -6.0, 22.0, -44.0, 4.0, 0],
            ["1.1.1", -5.0, 24.0, -43.0, 3.0, 1], ["3.3.3", 0, 0, 0, 5.0, 1]]
    return tmp_path, images, header, rows


def test_luna_list_becomes_a_manifest_and_missing_scans_are_reported(luna_folder):
    root, images, header, rows = luna_folder
    table = write_csv(root / "annotations.csv", header, rows)
    report = import_luna(table, images, root / "m.csv")
    manifest = NoduleManifest.read(root / "m.csv")
    assert report.missing == {"3.3.3": 1} and report.nodules == 3 and "3.3.3" in report.summary()
    assert [r.patient_id for r in manifest] == ["1.1.1", "PATIENT-2", "1.1.1"]
    assert [r.label for r in manifest] == [1, 0, 1] and len({r.nodule_id for r in manifest}) == 3
    np.testing.assert_allclose(manifest[0].coord, [-7.2, 23.1, -45.0])
    assert manifest[1].image == images / "subset1" / "2.2.2" and manifest[0].features["long_diameter_mm"] == 6.5
    candidates = import_luna(table, images, root / "c.csv", candidates=True)
    kept = NoduleManifest.read(root / "c.csv")
    assert candidates.not_nodules == 1 and [r.label for r in kept] == [None, None]


@pytest.mark.parametrize("edit, message", [
    (lambda h, r: (["seriesuid", "x", "coordY", "coordZ"], [row[:4] for row in r]), "lacks coord_x"),
    (lambda h, r: (h, [r[3]]), "has a scan under"),
    (lambda h, r: (h, [[*r[0][:2], "north", *r[0][3:]]]), "row 2, column 'coordy'"),
    (lambda h, r: (h, [[*r[0][:5], "maybe"]]), "row 2, column 'class'"),
])
def test_luna_user_errors_are_one_line_and_write_nothing(luna_folder, capsys, edit, message):
    root, images, header, rows = luna_folder
    table = write_csv(root / "annotations.csv", *edit(header, rows))
    out = root / "m.csv"
    assert main(["import-luna", table, "--images", str(images), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1 and not out.exists()


def test_luna_without_images_folder_is_a_clear_error(luna_folder):
    root, images, header, rows = luna_folder
    with pytest.raises(InputError, match="is not a folder"):
        import_luna(write_csv(root / "a.csv", header, rows), root / "nope", root / "m.csv")

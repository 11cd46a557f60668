"""Reading the real LIDC-IDRI data (skipped when ../shared/data is absent)."""

from __future__ import annotations

import csv
import shutil

import numpy as np
import pytest
import SimpleITK as sitk

from noduleclip.errors import InputError
from noduleclip.io import looks_like_ct, read_mask, read_volume

SERIES_UID = "1.3.6.1.4.1.14519.5.2.1.6279.6001.179049373636438705059720603192"
NODULE_0001 = np.array([56.20840547, 86.34341278, -115.8675792])  # manifest centre of LIDC-IDRI-0001_R_1, LPS mm
CROPS = ["LIDC-IDRI-0001_R_1", "LIDC-IDRI-0003_R_2", "LIDC-IDRI-0262_R_1", "LIDC-IDRI-0415_R_1", "LIDC-IDRI-0671_R_4",
         "LIDC-IDRI-0850_R_1"]  # the last four have flipped in-plane axes (direction diag(-1, -1, 1))


@pytest.fixture(scope="module")
def study(shared_data):
    return shared_data / "lidc-idri-0001"


@pytest.fixture(scope="module")
def ct_0001(study):
    return read_volume(study / f"CT_{SERIES_UID}")


@pytest.fixture(scope="module")
def crops(shared_data):
    folder = shared_data / "lidc-crops"
    with open(folder / "manifest.csv", newline="") as fh:
        rows = {row["nodule_id"]: row for row in csv.DictReader(fh)}
    return folder, rows


def test_lidc_0001_series_geometry_and_hu(ct_0001):
    v = ct_0001
    assert v.array.shape == (133, 512, 512) and v.array.dtype == np.float32
    assert np.allclose(v.spacing, [0.703125, 0.703125, 2.5])
    assert np.allclose(v.direction, np.eye(3))
    assert np.allclose(v.origin, [-166.0, -171.7, -340.0], atol=1e-3)  # the lowest slice comes first
    assert v.metadata["series_uid"] == SERIES_UID and v.metadata["patient_id"] == "LIDC-IDRI-0001"
    assert 0.2 < np.mean((v.array > -1100) & (v.array < -900)) < 0.5  # air and lung near -1000 HU
    assert 0.1 < np.mean((v.array > -100) & (v.array < 100))  # soft tissue near 0 HU
    assert v.array.max() > 1000 and looks_like_ct(v)
    centre = tuple(np.round(v.world_to_index(NODULE_0001)).astype(int)[::-1])
    assert v.array[centre] > -100  # the annotated nodule is solid tissue


def test_lidc_0001_matches_simpleitk_reading_the_same_files(ct_0001):
    files = ct_0001.metadata["files"]
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(files[60:64])
    reader.SetOutputPixelType(sitk.sitkFloat32)
    image = reader.Execute()
    assert np.array_equal(sitk.GetArrayFromImage(image), ct_0001.array[60:64])
    assert np.allclose(image.GetOrigin(), ct_0001.index_to_world([0, 0, 60]), atol=1e-4)


def test_study_folder_chooses_the_ct_series_beside_seg_and_sr(study, ct_0001):
    volume = read_volume(study)
    assert volume.metadata["series_uid"] == SERIES_UID
    assert np.array_equal(volume.array, ct_0001.array)


@pytest.mark.parametrize("nodule_id", CROPS)
def test_crop_geometry_puts_the_manifest_centre_inside_on_its_mask(crops, nodule_id):
    folder, rows = crops
    row = rows[nodule_id]
    crop = read_volume(folder / row["image"])
    centre = np.array([float(row[c]) for c in ("coord_x", "coord_y", "coord_z")])
    assert crop.contains(centre, margin_voxels=0.0)
    mask = read_mask(folder / row["mask"], reference=crop)
    kji = np.argwhere(mask.array)
    centroid = crop.index_to_world(kji[:, ::-1].mean(axis=0))
    assert np.linalg.norm(centroid - centre) < max(2.0, float(row["diameter_mm"]) / 4)
    # with x and y negated, as a RAS/LPS mix-up would do, the centre leaves the crop
    assert not crop.contains(centre * np.array([-1.0, -1.0, 1.0]))


def test_crop_voxels_equal_the_full_series_at_the_same_world_points(crops, ct_0001):
    folder, rows = crops
    crop = read_volume(folder / rows["LIDC-IDRI-0001_R_1"]["image"])
    kji = np.indices(crop.array.shape).reshape(3, -1).T
    index = ct_0001.world_to_index(crop.index_to_world(kji[:, ::-1]))
    assert np.allclose(index, np.round(index), atol=0.01)  # the crop's grid is a sub-grid of the series
    ijk = np.round(index).astype(int)
    assert np.array_equal(crop.array.reshape(-1), ct_0001.array[ijk[:, 2], ijk[:, 1], ijk[:, 0]])


def test_dicom_seg_mask_lands_on_the_nodule(study, ct_0001):
    seg = next(iter(sorted(study.glob("SEG_*"))))
    mask = read_mask(seg, reference=ct_0001)
    assert mask.array.shape == ct_0001.array.shape and 1000 < mask.array.sum() < 20000
    kji = np.argwhere(mask.array)
    assert np.linalg.norm(ct_0001.index_to_world(kji[:, ::-1].mean(axis=0)) - NODULE_0001) < 3.0


def test_real_folder_with_only_seg_and_sr(study, tmp_path):
    for folder in list(study.glob("SEG_*"))[:1] + list(study.glob("SR_*"))[:2]:
        shutil.copytree(folder, tmp_path / folder.name)
    with pytest.raises(InputError, match=r"no CT image series in .* \(found 1 SEG series, 2 SR series\)"):
        read_volume(tmp_path)


def test_real_slices_with_a_gap_and_a_duplicate(ct_0001, tmp_path):
    files = [ct_0001.metadata["files"][k] for k in range(40, 46)]
    for name in ("gap", "dup"):
        (tmp_path / name).mkdir()
        for f in files:
            shutil.copy(f, tmp_path / name)
    (tmp_path / "gap" / files[3].split("/")[-1]).unlink()
    z = ct_0001.index_to_world([[0, 0, 42], [0, 0, 44]])[:, 2]
    with pytest.raises(InputError, match=rf"missing 1 slice between positions {z[0]:.2f} and {z[1]:.2f} mm"):
        read_volume(tmp_path / "gap")
    shutil.copy(files[2], tmp_path / "dup" / "again.dcm")
    with pytest.raises(InputError, match="two slices at the same position"):
        read_volume(tmp_path / "dup")

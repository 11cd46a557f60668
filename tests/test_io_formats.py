"""The same scan saved in every format lands on the same anatomy (LPS); writing, masks, geometry, HU check."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from helpers import blob_centroid, blob_volume, write_ct_series, write_nifti_ras, write_nrrd_ras
from noduleclip.errors import InputError
from noduleclip.io import Volume, check_looks_like_ct, looks_like_ct, read_mask, read_volume, same_grid, write_volume

WRITERS = {
    "dicom": lambda v, d: write_ct_series(v, d / "series", slopes=(1.0, 0.5, 2.0),
                                          intercepts=(-1024.0, -1000.0)) and d / "series",
    "nifti-ras-by-hand": lambda v, d: write_nifti_ras(v, d / "scan.nii"),
    "nrrd-ras-by-hand": lambda v, d: write_nrrd_ras(v, d / "scan.nrrd"),
    "nii.gz": lambda v, d: write_volume(v, d / "scan.nii.gz"),
    "mha": lambda v, d: write_volume(v, d / "scan.mha"),
    "mhd": lambda v, d: write_volume(v, d / "scan.mhd"),
    "nrrd": lambda v, d: write_volume(v, d / "scan.nrrd"),
}


@pytest.mark.parametrize("fmt", list(WRITERS))
def test_blob_lands_on_the_same_world_point_in_every_format(fmt, tmp_path):
    source, center = blob_volume()
    assert np.linalg.det(source.direction) < 0  # a left-handed grid: DICOM must re-order its slices
    assert np.linalg.norm(blob_centroid(source) - center) < 0.05
    volume = read_volume(WRITERS[fmt](source, tmp_path))
    assert volume.array.dtype == np.float32 and volume.array.shape == source.array.shape
    # every format: the blob sits where it was put, within a tenth of the smallest voxel side
    assert np.linalg.norm(blob_centroid(volume) - center) < 0.1 * source.spacing.min()
    # and every voxel centre maps to the same world point with the same HU
    probe = np.array([[3, 4, 2], [20, 17, 11], [13, 11, 6]])
    world = volume.index_to_world(probe)
    back = np.round(source.world_to_index(world)).astype(int)
    assert np.allclose(source.index_to_world(back), world, atol=1e-3)
    assert np.allclose(volume.array[tuple(probe[:, ::-1].T)], source.array[tuple(back[:, ::-1].T)], atol=1.0)


def test_dicom_series_is_sorted_along_the_normal_and_rescaled_per_slice(tmp_path):
    source, _ = blob_volume(flip_k=True)
    write_ct_series(source, tmp_path, slopes=(1.0, 0.5, 2.0), intercepts=(-1024.0, -1000.0))
    volume = read_volume(tmp_path)
    normal = np.cross(source.direction[:, 0], source.direction[:, 1])
    assert np.allclose(volume.direction[:, 2], normal, atol=1e-6)  # k runs along +normal: the stack is reversed
    assert np.allclose(volume.origin, source.index_to_world([0, 0, source.array.shape[0] - 1]), atol=1e-4)
    expected = source.array[::-1]
    for k in range(expected.shape[0]):  # the file of reversed slice k had slope slopes[(nk-1-k) % 3]
        slope = (1.0, 0.5, 2.0)[(expected.shape[0] - 1 - k) % 3]
        assert np.max(np.abs(volume.array[k] - expected[k])) <= slope / 2 + 1e-3
    assert volume.metadata["format"] == "dicom" and len(volume.metadata["sop_instance_uids"]) == expected.shape[0]


def test_dicom_pixels_through_simpleitk_match_pydicom(tmp_path, monkeypatch):
    """The SimpleITK path (used for compressed slices) applies each slice's own rescale too."""
    import noduleclip.io.dicom as dicom

    source, _ = blob_volume(flip_k=False)
    write_ct_series(source, tmp_path, slopes=(1.0, 0.5), intercepts=(-1024.0, -1000.0))
    direct = read_volume(tmp_path)
    monkeypatch.setattr(dicom, "_slice_pixels_hu", dicom._slice_pixels_sitk)
    via_sitk = read_volume(tmp_path)
    assert np.array_equal(direct.array, via_sitk.array)


def test_world_index_conversion_matches_simpleitk_with_a_rotated_direction():
    volume, _ = blob_volume()
    image = volume.to_sitk()
    rng = np.random.default_rng(1)
    for world in rng.uniform(-60, 160, size=(5, 3)):
        expected = image.TransformPhysicalPointToContinuousIndex(tuple(world))
        assert np.allclose(volume.world_to_index(world), expected, atol=1e-9)
    index = rng.uniform(0, 12, size=3)
    by_itk = image.TransformContinuousIndexToPhysicalPoint(tuple(index))
    assert np.allclose(volume.index_to_world(index), by_itk, atol=1e-9)


def test_write_volume_is_atomic_and_rejects_unknown_formats(tmp_path):
    source, _ = blob_volume()
    write_volume(source, tmp_path / "a.mhd")
    write_volume(source, tmp_path / "b.nii.gz")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.mhd", "a.zraw", "b.nii.gz"]
    with pytest.raises(InputError, match=r"\.nii.*\.nrrd"):
        write_volume(source, tmp_path / "c.png")
    assert not (tmp_path / "c.png").exists()
    mask = Volume(source.array > 0, source.origin, source.spacing, source.direction)
    write_volume(mask, tmp_path / "m.nrrd")
    assert sitk.ReadImage(str(tmp_path / "m.nrrd")).GetPixelID() == sitk.sitkUInt8


def test_read_mask_on_the_same_grid_takes_the_reference_geometry(tmp_path):
    source, center = blob_volume()
    labels = np.zeros(source.array.shape, np.int16)
    labels[source.array > 0] = 2  # any value above zero is the mask
    write_volume(Volume(labels, source.origin, source.spacing, source.direction), tmp_path / "mask.nii.gz")
    mask = read_mask(tmp_path / "mask.nii.gz", reference=source)
    assert mask.array.dtype == np.uint8 and set(np.unique(mask.array)) == {0, 1}
    assert np.array_equal(mask.array, (source.array > 0).astype(np.uint8))
    assert same_grid(mask, source) and np.array_equal(mask.origin, source.origin)


def test_read_mask_resamples_nearest_neighbour_onto_the_reference(tmp_path):
    source, center = blob_volume(shape=(20, 30, 34), spacing=(0.6, 0.6, 1.5), flip_k=False)
    coarse = Volume(np.zeros((10, 15, 17), np.uint8), source.origin, source.spacing * 2, source.direction)
    kji = np.indices(coarse.array.shape).reshape(3, -1).T
    inside = np.linalg.norm(coarse.index_to_world(kji[:, ::-1]) - center, axis=1) <= 4.0
    coarse.array.reshape(-1)[inside] = 1
    write_volume(coarse, tmp_path / "coarse.mha")
    mask = read_mask(tmp_path / "coarse.mha", reference=source)
    assert mask.array.shape == source.array.shape and same_grid(mask, source)
    assert set(np.unique(mask.array)) == {0, 1}  # nearest neighbour: no blended values
    kji = np.argwhere(mask.array)
    assert np.linalg.norm(source.index_to_world(kji[:, ::-1].mean(axis=0)) - center) < 1.5
    assert mask.metadata["resampled_from"]["shape"] == [10, 15, 17]
    far = Volume(coarse.array, coarse.origin + 500.0, coarse.spacing, coarse.direction)
    write_volume(far, tmp_path / "far.mha")
    with pytest.raises(InputError, match="does not overlap"):
        read_mask(tmp_path / "far.mha", reference=source)


def test_looks_like_ct_flags_non_hu_volumes():
    ct, _ = blob_volume()
    assert looks_like_ct(ct)
    check_looks_like_ct(ct)
    raw = Volume(ct.array + 1024.0, ct.origin, ct.spacing, ct.direction, source="raw.nii")
    assert not looks_like_ct(raw)
    with pytest.raises(InputError, match=r"raw\.nii .*never fall below -500"):
        check_looks_like_ct(raw)
    flat = Volume(np.full((4, 5, 6), -1000.0), ct.origin, ct.spacing)
    assert not looks_like_ct(flat)
    holes = Volume(ct.array.copy(), ct.origin, ct.spacing)
    holes.array[0, 0, 0] = np.nan
    with pytest.raises(InputError, match="NaN"):
        check_looks_like_ct(holes)

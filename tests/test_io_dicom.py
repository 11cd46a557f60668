"""Choosing and validating a DICOM series, and the one-sentence errors for every kind of bad input."""

from __future__ import annotations

import gzip

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from helpers import blob_volume, dicom_positions, write_ct_series, write_nifti_ras, write_non_image_object
from noduleclip.errors import InputError
from noduleclip.io import Volume, read_mask, read_volume, write_volume


@pytest.fixture
def axial():
    """A small axial CT-like volume: identity direction, 2.5 mm slices from z = -40."""
    volume, _ = blob_volume(shape=(8, 12, 10), spacing=(0.7, 0.7, 2.5), flip_k=False)
    return Volume(volume.array, origin=(-3.5, -4.2, -40.0), spacing=volume.spacing)


def edit_slice(path, **changes):
    ds = pydicom.dcmread(path)
    for key, value in changes.items():
        setattr(ds, key, value)
    ds.save_as(path)


def test_the_ct_series_is_chosen_among_sr_and_seg_objects_in_a_study_folder(tmp_path, axial):
    write_ct_series(axial, tmp_path / "CT_1")
    write_non_image_object(tmp_path / "SR_1" / "1-1.dcm", "SR")
    write_non_image_object(tmp_path / "SEG_1" / "1-1.dcm", "SEG")
    (tmp_path / "notes.xml").write_text("<read/>")
    volume = read_volume(tmp_path)
    assert volume.array.shape == (8, 12, 10)
    assert np.allclose(volume.origin, [-3.5, -4.2, -40.0]) and np.allclose(volume.spacing, [0.7, 0.7, 2.5])
    assert np.allclose(volume.array, axial.array, atol=0.5)


def test_missing_path_and_empty_folder(tmp_path):
    with pytest.raises(InputError, match=r"nowhere does not exist; check the path"):
        read_volume(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match=r"empty.* is empty"):
        read_volume(tmp_path / "empty")
    (tmp_path / "text").mkdir()
    (tmp_path / "text" / "readme.txt").write_text("hello")
    with pytest.raises(InputError, match="holds no DICOM files"):
        read_volume(tmp_path / "text")


def test_folder_with_only_sr_and_seg_objects(tmp_path):
    write_non_image_object(tmp_path / "SR_1" / "1-1.dcm", "SR")
    write_non_image_object(tmp_path / "SEG_1" / "1-1.dcm", "SEG")
    with pytest.raises(InputError, match=r"no CT image series in .* \(found 1 SEG series, 1 SR series\); "
                                         r"pass the folder that holds the CT slices"):
        read_volume(tmp_path)


def test_several_ct_series_need_a_choice(tmp_path, axial):
    write_ct_series(axial, tmp_path / "a", series_uid="1.2.3.4")
    write_ct_series(Volume(axial.array[:5], axial.origin, axial.spacing), tmp_path / "b", series_uid="1.2.3.5")
    with pytest.raises(InputError, match=r"holds 2 CT series: 1\.2\.3\.4 \(8 slices\); 1\.2\.3\.5 \(5 slices\); "
                       r"choose one with "
                       r"--series-uid UID \(or the manifest's series_uid column\)"):
        read_volume(tmp_path)
    assert read_volume(tmp_path, series_uid="1.2.3.5").array.shape[0] == 5
    assert read_volume(tmp_path / "a").metadata["series_uid"] == "1.2.3.4"
    with pytest.raises(InputError, match=r"series 9\.9 is not in .*1\.2\.3\.4 \(8 slices\)"):
        read_volume(tmp_path, series_uid="9.9")


def test_corrupt_files(tmp_path, axial):
    paths = write_ct_series(axial, tmp_path / "truncated")
    data = paths[3].read_bytes()
    paths[3].write_bytes(data[: len(data) - 50])
    with pytest.raises(InputError, match=rf"{paths[3].name} .*corrupt or truncated"):
        read_volume(tmp_path / "truncated")
    paths = write_ct_series(axial, tmp_path / "garbage")
    paths[0].write_bytes(b"\x00" * 50)
    with pytest.raises(InputError, match=rf"{paths[0].name} is named like a DICOM file but is not one"):
        read_volume(tmp_path / "garbage")
    (tmp_path / "bad.nii.gz").write_bytes(gzip.compress(b"not a nifti header" * 30))
    with pytest.raises(InputError, match=r"cannot read the image file .*bad\.nii\.gz \(corrupt"):
        read_volume(tmp_path / "bad.nii.gz")
    write_volume(axial, tmp_path / "cut.mha", compress=False)
    data = (tmp_path / "cut.mha").read_bytes()
    (tmp_path / "cut.mha").write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match=r"cut\.mha \(corrupt, truncated"):
        read_volume(tmp_path / "cut.mha")


def test_inconsistent_orientation_and_pixel_spacing(tmp_path, axial):
    paths = write_ct_series(axial, tmp_path / "orient")
    edit_slice(paths[2], ImageOrientationPatient=[1, 0, 0, 0, 0.9950042, 0.0998334])
    with pytest.raises(InputError, match="different ImageOrientationPatient"):
        read_volume(tmp_path / "orient")
    paths = write_ct_series(axial, tmp_path / "pixel")
    edit_slice(paths[5], PixelSpacing=[0.8, 0.8])
    with pytest.raises(InputError, match="different PixelSpacing"):
        read_volume(tmp_path / "pixel")


def test_inconsistent_slice_spacing(tmp_path, axial):
    write_ct_series(axial, tmp_path)
    last = max(dicom_positions(tmp_path).items(), key=lambda kv: kv[1])[0]
    edit_slice(last, ImagePositionPatient=[-3.5, -4.2, -40.0 + 7 * 2.5 + 1.0])
    with pytest.raises(InputError,
                       match=r"inconsistent slice spacing: 3\.5 mm between positions -25\.00 and -21\.50 mm"):
        read_volume(tmp_path)


def test_missing_slice_names_the_gap(tmp_path, axial):
    write_ct_series(axial, tmp_path)
    positions = dicom_positions(tmp_path)
    gone = [p for p, z in positions.items() if abs(z - (-32.5)) < 1e-3]
    gone[0].unlink()
    with pytest.raises(InputError, match=r"missing 1 slice between positions -35\.00 and -30\.00 mm .*every 2\.5 mm"):
        read_volume(tmp_path)


def test_duplicated_and_single_slices(tmp_path, axial):
    paths = write_ct_series(axial, tmp_path / "dup")
    copy = tmp_path / "dup" / "copy.dcm"
    copy.write_bytes(paths[4].read_bytes())
    edit_slice(copy, SOPInstanceUID=pydicom.uid.generate_uid())
    with pytest.raises(InputError, match=r"two slices at the same position .*remove the duplicate"):
        read_volume(tmp_path / "dup")
    write_ct_series(Volume(axial.array[:1], axial.origin, axial.spacing), tmp_path / "one")
    with pytest.raises(InputError, match="has a single slice"):
        read_volume(tmp_path / "one")


def test_gantry_tilt_is_refused(tmp_path, axial):
    paths = write_ct_series(axial, tmp_path)
    for path in paths:  # shift each slice in y by 0.2 mm per slice: a sheared stack
        z = float(pydicom.dcmread(path).ImagePositionPatient[2])
        edit_slice(path, ImagePositionPatient=[-3.5, -4.2 + 0.2 * (z + 40.0) / 2.5, z])
    with pytest.raises(InputError, match="gantry tilt"):
        read_volume(tmp_path)


def test_non_3d_images_and_unsupported_files(tmp_path, axial):
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((12, 10), np.int16)), str(tmp_path / "flat.nii"))
    with pytest.raises(InputError, match=r"flat\.nii is a 2-D image"):
        read_volume(tmp_path / "flat.nii")
    four_d = sitk.GetImageFromArray(np.zeros((3, 4, 5, 6), np.int16), isVector=False)
    sitk.WriteImage(four_d, str(tmp_path / "series.nii"))
    with pytest.raises(InputError, match=r"series\.nii is a 4-D image"):
        read_volume(tmp_path / "series.nii")
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((1, 12, 10), np.int16)), str(tmp_path / "slab.mha"))
    with pytest.raises(InputError, match=r"slab\.mha holds a single slice"):
        read_volume(tmp_path / "slab.mha")
    (tmp_path / "scan.png").write_bytes(b"\x89PNG")
    with pytest.raises(InputError, match=r"scan\.png is not a format noduleclip reads"):
        read_volume(tmp_path / "scan.png")
    paths = write_ct_series(axial, tmp_path / "ct")
    with pytest.raises(InputError, match="is a single DICOM file; pass the folder"):
        read_volume(paths[0])
    with pytest.raises(InputError, match=r"series_uid column\) only applies to DICOM folders"):
        read_volume(tmp_path / "slab.mha", series_uid="1.2")


def test_sheared_nifti_and_multi_frame_ct_are_refused(tmp_path, axial):
    direction = np.eye(3)
    direction[:, 2] = [0.3, 0.0, 1.0]  # a slice axis leaning in x: not orthonormal
    write_nifti_ras(Volume(axial.array, axial.origin, axial.spacing, direction), tmp_path / "shear.nii")
    with pytest.raises(InputError, match=r"shear\.nii has a sheared \(non-orthonormal\) orientation"):
        read_volume(tmp_path / "shear.nii")
    paths = write_ct_series(axial, tmp_path / "enhanced")
    for path in paths[1:]:
        path.unlink()
    edit_slice(paths[0], SOPClassUID="1.2.840.10008.5.1.4.1.1.2.1", NumberOfFrames=8)
    with pytest.raises(InputError,
                       match=r"found 1 CT multi-frame series\); enhanced \(multi-frame\) CT is not supported"):
        read_volume(tmp_path / "enhanced")


def test_read_mask_errors(tmp_path, axial):
    with pytest.raises(InputError, match=r"mask .*absent\.nii\.gz does not exist"):
        read_mask(tmp_path / "absent.nii.gz")
    paths = write_ct_series(axial, tmp_path / "ct")
    with pytest.raises(InputError, match="not a DICOM Segmentation"):
        read_mask(paths[0])
    with pytest.raises(InputError, match="must hold exactly one DICOM Segmentation"):
        read_mask(tmp_path / "ct")

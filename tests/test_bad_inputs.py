"""Inputs that used to be read silently wrong: each is refused with one sentence that names it, and a command
given one exits non-zero and leaves its --out folder without results.

One table: how each bad input is built in tmp_path, the function or command it is given to, the words the
InputError (or the command's error output) must hold, and words it must not hold."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest

from helpers import Case, full_ct, make_volume, refusal, write_ct_series
from noduleclip.data.manifest import NoduleManifest
from noduleclip.io import check_looks_like_ct, read_mask, read_volume, write_volume
from noduleclip.predict.sites import locate_nodules
from noduleclip.preprocess.pipeline import nodule_center

MANIFEST_HEADER = "patient_id,nodule_id,image,coord_x,coord_y,coord_z,label\n"


def manifest(tmp_path: Path, cells: str, image: str = "scan.nii.gz") -> Path:
    """m.csv with one nodule row: `cells` are its coord_x, coord_y, coord_z, label."""
    path = tmp_path / "m.csv"
    path.write_text(MANIFEST_HEADER + f"p1,n1,{image},{cells}\n")
    return path


def uncentred_manifest(tmp_path: Path, coords: str = ",,") -> Path:
    full_ct(tmp_path)
    return manifest(tmp_path, coords + ",1")


def uncentred_table(tmp_path: Path) -> Path:
    """A `predict --nodules` table whose row has neither coordinates nor mask, beside a scan."""
    full_ct(tmp_path)
    table = tmp_path / "nodules.csv"
    table.write_text("nodule_id,coord_x,coord_y,coord_z,mask\nA,,,,\n")
    return table


def truncated(path: Path, data_file: Path | None = None) -> Path:
    """`path` with its voxel data (or its separate data file) cut to half its bytes."""
    target = data_file or path
    data = target.read_bytes()
    target.write_bytes(data[: len(data) // 2])
    return path


def truncated_file(tmp_path: Path, name: str) -> Path:
    volume = make_volume(shape=(12, 30, 30), angles=(0, 0, 0))
    path = write_volume(volume, tmp_path / name, compress=name.endswith(".gz"))
    data_file = path.with_suffix(".raw") if path.suffix == ".mhd" else None
    return truncated(path, data_file)


def with_nan(tmp_path: Path, name: str, everywhere: bool = False) -> Path:
    """A 12 x 30 x 30 float32 volume with one NaN voxel, or NaN everywhere."""
    volume = make_volume(shape=(12, 30, 30), angles=(0, 0, 0))
    if everywhere:
        volume.array[...] = np.nan
    else:
        volume.array[6, 15, 15] = np.nan
    return write_volume(volume, tmp_path / name)


def all_nan_manifest(tmp_path: Path) -> Path:
    with_nan(tmp_path, "nan.nii.gz", everywhere=True)
    return manifest(tmp_path, "0,0,0,1", "nan.nii.gz")


def shifted_by_intercept(tmp_path: Path) -> Path:
    """A lung-like volume stored with RescaleIntercept 0 instead of -1024 (every value +1024), padded with -1024
    outside a circular field of view: its minimum is below -500, its body is not."""
    volume = make_volume(shape=(12, 48, 48), spacing=(4.0, 4.0, 5.0), angles=(0, 0, 0))
    _, j, i = np.indices(volume.array.shape)
    outside = (i - 23.5) ** 2 + (j - 23.5) ** 2 > 22**2
    volume.array = np.where(outside, -1024.0, volume.array + 1024.0).astype(np.float32)
    return write_volume(volume, tmp_path / "shifted.nii.gz")


def real_series_with_intercept_0(tmp_path: Path, shared: Path) -> Path:
    """The LIDC-IDRI-0001 CT series re-written with RescaleIntercept 0 (its slices store HU + 1024)."""
    folder = tmp_path / "intercept0"
    folder.mkdir()
    for path in sorted(next((shared / "lidc-idri-0001").glob("CT_*")).iterdir()):
        ds = pydicom.dcmread(path)
        ds.RescaleIntercept = 0
        ds.save_as(folder / path.name)
    return folder


def series(tmp_path: Path) -> list[Path]:
    volume = make_volume(shape=(8, 24, 20), spacing=(0.7, 0.7, 2.5), angles=(0, 0, 0))
    return write_ct_series(volume, tmp_path / "series")


def series_with_mr_slice(tmp_path: Path) -> Path:
    """A CT series whose fourth slice, broken.dcm, is tagged Modality MR."""
    paths = series(tmp_path)
    ds = pydicom.dcmread(paths[3])
    ds.Modality = "MR"
    ds.save_as(paths[3].parent / "broken.dcm")
    paths[3].unlink()
    return paths[3].parent


def series_with_header_cut(tmp_path: Path) -> Path:
    """A CT series whose fourth slice, broken.dcm, is cut inside its header (before its SeriesInstanceUID)."""
    paths = series(tmp_path)
    (paths[3].parent / "broken.dcm").write_bytes(paths[3].read_bytes()[:400])
    paths[3].unlink()
    return paths[3].parent


def labelled(tmp_path: Path, label: str) -> Path:
    return manifest(tmp_path, f"1,2,3,{label}")


def read_ct(path: Path) -> None:
    check_looks_like_ct(read_volume(path))


def centre_of_first_row(path: Path) -> None:
    record = NoduleManifest.read(path)[0]
    nodule_center(read_volume(record.image), record)


def sites_on_scan(table: Path) -> None:
    """What `predict --nodules TABLE` does with the scan beside the table."""
    locate_nodules(read_volume(table.parent / "scan.nii.gz"), nodules=table)


PREPROCESS = ("preprocess", "INPUT", "--out", "OUT", "--workers", "1")
VIEWS = ("views", "INPUT", "--coord", "0,0,0", "--out", "OUT/views.png")
NOT_A_CROP = ("row 2 (nodule 'n1')", "spans 320 x 320 x 100 mm", "not a nodule crop", "give coord_x, coord_y, coord_z")

CASES = {
    # 1. no coordinates and no mask on a scan: its centre is not a nodule
    "empty coordinates on a scan": Case(uncentred_manifest, NOT_A_CROP, call=centre_of_first_row),
    "nan coordinates on a scan, preprocess": Case(lambda t: uncentred_manifest(t, "nan,nan,nan"),
                                                 ("failed n1:",) + NOT_A_CROP, command=PREPROCESS, status=1),
    "predict nodule table row on a scan": Case(uncentred_table, ("nodules.csv row 2 (nodule 'A')", "not a nodule crop",
                                                                "give coord_x, coord_y, coord_z"), call=sites_on_scan),
    # 2. files cut short: half the voxels would read as 0
    "truncated nii.gz": Case(lambda t: truncated_file(t, "cut.nii.gz"), ("cut.nii.gz is truncated", "re-copy"),
                             call=read_ct),
    "truncated nii.gz, views": Case(lambda t: truncated_file(t, "cut.nii.gz"), ("cut.nii.gz is truncated",),
                                    command=VIEWS),
    "truncated nii": Case(lambda t: truncated_file(t, "cut.nii"),
                          ("cut.nii is truncated", "voxel bytes its header declares"), call=read_ct),
    "truncated nii.gz mask": Case(lambda t: truncated_file(t, "mask.nii.gz"), ("mask.nii.gz is truncated",),
                                  call=read_mask),
    "truncated mha": Case(lambda t: truncated_file(t, "cut.mha"), ("cut.mha", "truncated"), call=read_ct),
    "truncated mhd data file": Case(lambda t: truncated_file(t, "cut.mhd"), ("cut.mhd", "truncated"), call=read_ct),
    "truncated nrrd": Case(lambda t: truncated_file(t, "cut.nrrd"), ("cut.nrrd", "truncated"), call=read_ct),
    # 3. NaN voxels: the same refusal whatever the format
    "NaN voxel in nii.gz": Case(lambda t: with_nan(t, "nan.nii.gz"),
                                ("nan.nii.gz contains NaN", "1 of its 10800 voxels"), call=read_ct),
    "NaN voxel in nii": Case(lambda t: with_nan(t, "nan.nii"), ("nan.nii contains NaN", "1 of its 10800 voxels"),
                             call=read_ct),
    "NaN voxel in mha": Case(lambda t: with_nan(t, "nan.mha"), ("nan.mha contains NaN", "1 of its 10800 voxels"),
                             call=read_ct),
    "NaN voxel in nrrd": Case(lambda t: with_nan(t, "nan.nrrd"), ("nan.nrrd contains NaN", "1 of its 10800 voxels"),
                              call=read_ct),
    "all-NaN nii.gz, preprocess": Case(all_nan_manifest, ("failed n1:", "contains NaN", "all its voxels are NaN"),
                                       command=PREPROCESS, status=1, absent=("range 0 to 0",)),
    # 4. a wrong rescale intercept: the padding is below -500, the body is not
    "intercept 0, synthetic": Case(shifted_by_intercept, ("shifted.nii.gz does not look like CT", "lowest value -1024",
                                                          "RescaleIntercept"), call=read_ct),
    "intercept 0, LIDC-IDRI-0001": Case(real_series_with_intercept_0, ("intercept0 does not look like CT",
                                                                       "lowest value -1024", "RescaleIntercept"),
                                        call=read_ct, shared=True),
    # 5. DICOM series with one wrong file
    "MR slice in a CT series": Case(series_with_mr_slice, ("broken.dcm in CT series", "is Modality MR, not a CT slice"),
                                    call=read_ct),
    "MR slice in a CT series, views": Case(series_with_mr_slice, ("broken.dcm", "is Modality MR"), command=VIEWS),
    "slice cut inside its header": Case(series_with_header_cut, ("broken.dcm has no SeriesInstanceUID", "truncated"),
                                        call=read_ct, absent=("missing",)),
    # 6. labels other than 1, 0 or empty
    **{f"label {word!r}": Case(lambda t, w=word: labelled(t, w), ("m.csv row 2", f"label {word!r}", "'label' column"),
                               call=NoduleManifest.read) for word in ("yes", "true", "malignant", "benign", "no", "2")},
    "label 'yes', preprocess": Case(lambda t: labelled(t, "yes"), ("m.csv row 2", "label 'yes'"), command=PREPROCESS),
}


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_is_refused_in_one_sentence(name, tmp_path, request, capsys):
    case = CASES[name]
    built = case.build(tmp_path, request.getfixturevalue("shared_data")) if case.shared else case.build(tmp_path)
    message = refusal(case, built, tmp_path, capsys)
    assert "\n" not in message and message.count("; ") >= 1, message  # one sentence: what and where; what to do
    for word in case.words:
        assert word in message, message
    for word in case.absent:
        assert word not in message, message


def test_a_nodule_crop_without_coordinates_is_cut_at_its_centre(tmp_path):
    crop = make_volume(shape=(10, 44, 44), spacing=(0.75, 0.75, 1.5), angles=(0, 0, 0))  # 33 x 33 x 15 mm
    path = write_volume(crop, tmp_path / "crop.nii.gz")
    record = NoduleManifest.read(manifest(tmp_path, ",,,", "crop.nii.gz"))[0]
    volume = read_volume(path)
    np.testing.assert_allclose(nodule_center(volume, record), volume.center_world())
    table = tmp_path / "nodules.csv"
    table.write_text("nodule_id,coord_x,coord_y,coord_z\nA,,,\n")
    np.testing.assert_allclose(locate_nodules(volume, nodules=table)[0].center_lps, volume.center_world())


@pytest.mark.parametrize("label,expected", [("1", 1), ("0", 0), ("1.0", 1), ("0.0", 0), ("", None), ("nan", None)])
def test_label_spellings_that_are_read(tmp_path, label, expected):
    assert NoduleManifest.read(manifest(tmp_path, f"1,2,3,{label}"))[0].label == expected


def test_the_real_series_as_written_looks_like_ct(shared_data):
    check_looks_like_ct(read_volume(next((shared_data / "lidc-idri-0001").glob("CT_*"))))


def test_finite_nifti_reads_unchanged(tmp_path):
    volume = make_volume(shape=(12, 30, 30), angles=(0, 0, 0))
    for name in ("ok.nii", "ok.nii.gz"):
        np.testing.assert_array_equal(read_volume(write_volume(volume, tmp_path / name)).array, volume.array)

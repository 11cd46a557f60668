"""From a manifest to the view cache, and the `preprocess` / `views` commands."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from helpers import add_sphere, lidc0001_nodule_center, make_volume, write_ct_series, write_nifti_ras, write_nrrd_ras
from noduleclip.cli import main
from noduleclip.data.manifest import NoduleManifest
from noduleclip.errors import InputError
from noduleclip.io import read_volume, write_volume
from noduleclip.preprocess.cache import ViewCache
from noduleclip.preprocess.pipeline import check_inside, preprocess_manifest
from noduleclip.preprocess.views import ViewConfig, sample_planes


def scan_with_nodules(tmp_path: Path, centers_offset=((0, 0, 0), (-8, 10, 6))):
    volume = make_volume(shape=(40, 80, 80), spacing=(0.9, 0.9, 2.0), angles=(0, 0, 0))
    centers = [volume.center_world() + np.array(o, float) for o in centers_offset]
    for c in centers:
        add_sphere(volume, c, 3.0, hu=500.0)
    image = write_volume(volume, tmp_path / "scan.nii.gz")
    return volume, image, centers


def write_manifest(path: Path, rows: list[dict]) -> Path:
    return NoduleManifest.write(path, rows)


def test_cache_skips_done_nodules_and_recomputes_changed_rows(tmp_path):
    _, image, centers = scan_with_nodules(tmp_path)
    rows = [dict(patient_id="p1", nodule_id=f"n{i}", image=image.name, coord_x=c[0], coord_y=c[1], coord_z=c[2],
                 label=i % 2) for i, c in enumerate(centers)]
    manifest_path = write_manifest(tmp_path / "m.csv", rows)
    cache = ViewCache(tmp_path / "cache")
    first = preprocess_manifest(NoduleManifest.read(manifest_path), cache, progress=False)
    assert sorted(first.done) == ["n0", "n1"] and not first.failed
    views = cache.load("n1")
    assert views.shape == (9, 50, 50) and np.all(views[:, 25, 25] == 1.0)
    again = preprocess_manifest(NoduleManifest.read(manifest_path), cache, progress=False)
    assert again.done == [] and sorted(again.skipped) == ["n0", "n1"]
    rows[1]["coord_x"] = centers[1][0] + 5.0  # moved: must be recomputed, the other kept
    write_manifest(manifest_path, rows)
    moved = preprocess_manifest(NoduleManifest.read(manifest_path), cache, progress=False)
    assert moved.done == ["n1"] and moved.skipped == ["n0"]
    assert cache.load("n1")[0, 25, 25] < 1.0


def test_cache_refuses_other_view_settings(tmp_path):
    ViewCache(tmp_path / "cache")
    with pytest.raises(InputError, match="other settings"):
        ViewCache(tmp_path / "cache", ViewConfig(size=64))


def test_a_failed_nodule_is_reported_and_the_rest_complete(tmp_path):
    volume, image, centers = scan_with_nodules(tmp_path)
    rows = [
        dict(patient_id="p1", nodule_id="good", image=image.name, coord_x=centers[0][0], coord_y=centers[0][1],
             coord_z=centers[0][2]),
        dict(patient_id="p1", nodule_id="far", image=image.name, coord_x=900, coord_y=0, coord_z=0),
        dict(patient_id="p2", nodule_id="nofile", image="missing.nii.gz", coord_x=0, coord_y=0, coord_z=0),
    ]
    manifest = NoduleManifest.read(write_manifest(tmp_path / "m.csv", rows))
    report = preprocess_manifest(manifest, ViewCache(tmp_path / "cache"), progress=False)
    assert report.done == ["good"]
    reasons = dict(report.failed)
    assert "outside the scan" in reasons["far"] and "extent" in reasons["far"]
    assert "missing.nii.gz" in reasons["nofile"]


def test_outside_scan_messages_point_at_voxel_indices_and_ras(tmp_path):
    volume, _, centers = scan_with_nodules(tmp_path)
    with pytest.raises(InputError, match="voxel indices"):
        check_inside(volume, [40.0, 40.0, 20.0])
    ras = centers[0] * np.array([-1, -1, 1])
    if volume.contains(ras):
        pytest.skip("this geometry is symmetric about the origin")
    with pytest.raises(InputError, match="RAS"):
        check_inside(volume, ras)


def test_centre_from_mask_and_from_a_crop(tmp_path):
    volume, image, centers = scan_with_nodules(tmp_path, centers_offset=((4, -6, 2),))
    mask = volume.array * 0
    mask[volume.array >= 500] = 1
    from noduleclip.io.volume import Volume

    write_volume(Volume(mask.astype(np.uint8), volume.origin, volume.spacing, volume.direction),
                 tmp_path / "mask.nii.gz")
    rows = [dict(patient_id="p1", nodule_id="bymask", image=image.name, mask="mask.nii.gz"),
            dict(patient_id="p1", nodule_id="bycrop", image=image.name)]
    cache = ViewCache(tmp_path / "cache")
    report = preprocess_manifest(NoduleManifest.read(write_manifest(tmp_path / "m.csv", rows)), cache, progress=False)
    assert sorted(report.done) == ["bycrop", "bymask"]
    assert np.all(cache.load("bymask")[:, 25, 25] == 1.0)  # the mask centroid is the sphere centre
    crop_center = cache.read_meta("bycrop")["center_lps"]
    np.testing.assert_allclose(crop_center, volume.center_world(), atol=1e-6)


def test_sphere_lands_at_the_centre_in_every_file_format(tmp_path):
    volume = make_volume(shape=(30, 64, 60), spacing=(0.8, 0.65, 2.0), angles=(12, -25, 33))
    center = volume.center_world() + np.array([2.0, -3.0, 1.5])
    add_sphere(volume, center, 5.0, hu=500.0)
    files = [write_volume(volume, tmp_path / f"scan{ext}") for ext in (".nii.gz", ".mha", ".nrrd")]
    files += [write_nifti_ras(volume, tmp_path / "ras.nii"), write_nrrd_ras(volume, tmp_path / "ras.nrrd")]
    write_ct_series(volume, tmp_path / "dicom")
    files.append(tmp_path / "dicom")
    expected = sample_planes(volume, center)
    for path in files:
        views = sample_planes(read_volume(path), center)
        assert np.all(views[:, 25, 25] == 1.0), path.name
        assert np.abs(views - expected).mean() < 0.01, path.name


def test_cli_preprocess_and_views(tmp_path, capsys):
    _, image, centers = scan_with_nodules(tmp_path)
    rows = [dict(patient_id="p1", nodule_id="n0", image=image.name, coord_x=centers[0][0], coord_y=centers[0][1],
                 coord_z=centers[0][2]),
            dict(patient_id="p1", nodule_id="bad", image=image.name, coord_x=-900, coord_y=0, coord_z=0)]
    manifest = write_manifest(tmp_path / "m.csv", rows)
    assert main(["preprocess", str(manifest), "--out", str(tmp_path / "cache"), "--workers", "1"]) == 1
    captured = capsys.readouterr()
    assert "1 computed" in captured.out and "failed bad:" in captured.err
    png = tmp_path / "views.png"
    coord = ",".join(f"{c:.2f}" for c in centers[0])
    assert main(["views", str(image), "--coord", coord, "--out", str(png)]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert main(["views", str(image), "--coord", "1,2", "--out", str(tmp_path / "x.png")]) == 2
    assert "three numbers" in capsys.readouterr().err
    assert not (tmp_path / "x.png").exists()
    assert main(["preprocess", str(tmp_path / "nope.csv"), "--out", str(tmp_path / "c2")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_real_series_nodule_is_at_the_centre_of_the_views(shared_data):
    volume = read_volume(shared_data / "lidc-idri-0001")
    center = lidc0001_nodule_center(shared_data, volume)
    views = sample_planes(volume, center)
    tissue = -300.0
    level = (tissue + 1000.0) / 1500.0
    for p in range(9):
        solid = views[p] > level
        assert solid[25, 25], f"plane {p}: the centre is not nodule tissue"
        rows, cols = np.nonzero(solid[10:40, 10:40])
        # The ~30 mm nodule fills the middle of every view, centred within a few mm.
        assert abs(rows.mean() + 10 - 25) < 4 and abs(cols.mean() + 10 - 25) < 4, f"plane {p}"


def test_all_lidc_crops_preprocess(shared_data, tmp_path):
    manifest = NoduleManifest.read(shared_data / "lidc-crops" / "manifest.csv")
    report = preprocess_manifest(manifest, ViewCache(tmp_path / "cache"), workers=2, progress=False)
    assert len(manifest) == 665
    # One row of the real manifest has a centre 9 mm beyond its crop (33 mm from its mask's centroid):
    # it must be reported as such, never cut silently.
    assert len(report.done) == 664
    assert [nid for nid, _ in report.failed] == ["LIDC-IDRI-0332_R_1"]
    assert "outside the scan" in report.failed[0][1] and "mask's centroid" in report.failed[0][1]

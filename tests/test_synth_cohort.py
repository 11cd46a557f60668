"""The synthetic cohort on disk: DICOM that readers accept, right geometry, nodules where the manifest says,
determinism, and clear errors for bad input."""

from __future__ import annotations

import dataclasses
import io
import json
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from noduleclip.cli import main as cli_main
from noduleclip.data.manifest import NoduleManifest
from noduleclip.errors import InputError
from noduleclip.io.readers import read_volume
from noduleclip.semantics.schema import validate_features
from noduleclip.synth import make_cohort
from noduleclip.synth.dicom import SliceEncoder
from noduleclip.synth.presets import get_preset

TINY = get_preset("tiny")
ODD_GEOMETRY = dataclasses.replace(TINY, name="tiny-odd", unusual_geometry=1.0)


def read_series(folder: Path) -> sitk.Image:
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder)))
    return reader.Execute()


def hu_at(image: sitk.Image, world) -> float:
    """HU at a world point (trilinear)."""
    array = sitk.GetArrayFromImage(image).astype(np.float32)
    i, j, k = image.TransformPhysicalPointToContinuousIndex(tuple(float(v) for v in world))
    from scipy.ndimage import map_coordinates

    return float(map_coordinates(array, [[k], [j], [i]], order=1)[0])


def plain_solid(record) -> bool:
    c = record.columns
    return c["consistency"] == "solid" and all(
        c[name] == "absent" for name in ("cavitation", "cyst_like_spaces", "intranodular_bronchiectasis")
    )


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> Path:
    return make_cohort(tmp_path_factory.mktemp("synth") / "cohort", patients=3, seed=5, preset="tiny")


def test_manifest_follows_the_design_and_the_schema(cohort):
    manifest = NoduleManifest.read(cohort)
    assert manifest.fieldnames[:7] == ["patient_id", "nodule_id", "image", "coord_x", "coord_y", "coord_z", "label"]
    assert len({r.patient_id for r in manifest}) == 3
    assert 3 <= len(manifest) <= 9
    for record in manifest:
        assert record.image.is_dir() and record.image.parent.name == "images"
        assert record.label in (0, 1)
        features = validate_features(record.columns, where=record.where)  # raises on any value off the schema
        assert features["long_diameter_mm"] >= features["short_diameter_mm"] > 0
        assert 5.0 <= features["long_diameter_mm"] <= 30.0
    text = cohort.read_text()
    assert str(cohort.parent) not in text  # image paths are relative
    summary = json.loads((cohort.parent / "cohort.json").read_text())
    assert summary["nodules"] == len(manifest) and len(summary["nodule_truth"]) == len(manifest)


def test_dicom_series_read_back_with_its_geometry(cohort):
    manifest = NoduleManifest.read(cohort)
    for folder in sorted({r.image for r in manifest}):
        files = sorted(folder.glob("*.dcm"))
        first = pydicom.dcmread(files[0])
        assert first.file_meta.MediaStorageSOPClassUID == pydicom.uid.CTImageStorage
        assert first.SOPClassUID == pydicom.uid.CTImageStorage and first.Modality == "CT"
        assert first.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
        uids = {(d.StudyInstanceUID, d.SeriesInstanceUID, d.FrameOfReferenceUID) for d in map(pydicom.dcmread, files)}
        assert len(uids) == 1
        image = read_series(folder)
        assert image.GetSize() == (first.Columns, first.Rows, len(files))
        spacing = [float(v) for v in first.PixelSpacing]
        assert np.allclose(image.GetSpacing(), (spacing[1], spacing[0], float(first.SliceThickness)), atol=1e-4)
        assert np.allclose(image.GetOrigin(), [float(v) for v in first.ImagePositionPatient], atol=1e-3)
        row_col = np.array(image.GetDirection()).reshape(3, 3)[:, :2].T.ravel()
        assert np.allclose(row_col, [float(v) for v in first.ImageOrientationPatient], atol=1e-5)
        hu = sitk.GetArrayFromImage(image)
        assert hu.min() >= -3024 and hu.max() > 300  # bone
        lung = np.median(hu[hu.shape[0] // 2][(hu[hu.shape[0] // 2] < -700) & (hu[hu.shape[0] // 2] > -950)])
        assert -900 < lung < -780
        volume = read_volume(folder)  # the project's own DICOM reader agrees with SimpleITK
        assert np.allclose(volume.origin, image.GetOrigin(), atol=1e-3)
        assert np.allclose(volume.array[:, 10:-10, 10:-10], hu[:, 10:-10, 10:-10], atol=0.5)


def test_each_nodule_coordinate_lies_in_its_rendered_nodule(cohort):
    manifest = NoduleManifest.read(cohort)
    checked = 0
    for record in manifest:
        image = read_series(record.image)
        i, j, k = image.TransformPhysicalPointToContinuousIndex(tuple(record.coord))
        assert all(0 <= v <= n - 1 for v, n in zip((i, j, k), image.GetSize(), strict=True))
        if plain_solid(record):
            assert hu_at(image, record.coord) > -450, record.where
            checked += 1
    assert checked >= 1


def test_unusual_patient_positions_keep_world_coordinates_right(tmp_path):
    manifest = NoduleManifest.read(make_cohort(tmp_path / "odd", patients=4, seed=2, preset=ODD_GEOMETRY))
    positions = set()
    for record in manifest:
        first = pydicom.dcmread(sorted(record.image.glob("*.dcm"))[0])
        positions.add((first.PatientPosition, float(first.GantryDetectorTilt) != 0.0))
        image = read_series(record.image)
        assert not np.allclose(np.array(image.GetDirection()), np.eye(3).ravel())
        if record.columns["consistency"] in ("solid", "part-solid", "semiconsolidation", "pure ground glass") and \
                record.columns["cavitation"] == "absent" and record.columns["cyst_like_spaces"] == "absent":
            assert hu_at(image, record.coord) > -760, record.where  # denser than the lung around it
    assert len(positions) >= 2


def test_same_seed_gives_identical_files_and_another_seed_does_not(tmp_path):
    first = make_cohort(tmp_path / "a", patients=1, seed=11, preset="tiny").parent
    second = make_cohort(tmp_path / "b", patients=1, seed=11, preset="tiny").parent
    other = make_cohort(tmp_path / "c", patients=1, seed=12, preset="tiny").parent
    files = sorted(p.relative_to(first) for p in first.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(second) for p in second.rglob("*") if p.is_file())
    assert len(files) > 10
    for rel in files:
        assert (first / rel).read_bytes() == (second / rel).read_bytes(), rel
    assert (first / "manifest.csv").read_bytes() != (other / "manifest.csv").read_bytes()


def test_workers_do_not_change_the_output(tmp_path):
    serial = make_cohort(tmp_path / "serial", patients=2, seed=4, preset="tiny", workers=1).parent
    parallel = make_cohort(tmp_path / "parallel", patients=2, seed=4, preset="tiny", workers=2).parent
    for path in sorted(p for p in serial.rglob("*") if p.is_file()):
        assert path.read_bytes() == (parallel / path.relative_to(serial)).read_bytes(), path


def test_slice_files_are_the_bytes_pydicom_writes(tmp_path, monkeypatch):
    """The series writer encodes what every slice shares once; each file must still be what save_as writes."""
    fast = make_cohort(tmp_path / "fast", patients=4, seed=2, preset="tiny").parent

    def save_as(self, ds) -> bytes:
        buffer = io.BytesIO()
        ds.save_as(buffer, enforce_file_format=True)
        return buffer.getvalue()

    monkeypatch.setattr(SliceEncoder, "encode", save_as)
    reference = make_cohort(tmp_path / "reference", patients=4, seed=2, preset="tiny").parent
    files = sorted(p for p in reference.rglob("*.dcm"))
    assert len(files) > 20
    for path in files:
        assert (fast / path.relative_to(reference)).read_bytes() == path.read_bytes(), path
    signs = {int(pydicom.dcmread(sorted(f.glob("*.dcm"))[0], stop_before_pixels=True).PixelRepresentation)
             for f in (fast / "images").iterdir()}
    assert signs == {0, 1}  # both pixel encodings (12-bit unsigned, signed 16-bit with padding) were compared


def test_prevalence_can_be_set(tmp_path):
    make_cohort(tmp_path / "p", patients=1, seed=0, preset="tiny", prevalence=0.7)
    summary = json.loads((tmp_path / "p" / "cohort.json").read_text())
    assert summary["target_prevalence"] == 0.7 and summary["preset"]["name"] == "tiny"


@pytest.mark.parametrize(
    "kwargs, words",
    [
        (dict(patients=-3), "--patients"),
        (dict(patients=0), "--patients"),
        (dict(preset="ultra"), "preset"),
        (dict(workers=0), "--workers"),
        (dict(seed=-1), "--seed"),
        (dict(prevalence=1.5), "--prevalence"),
    ],
)
def test_bad_arguments_raise_one_sentence(tmp_path, kwargs, words):
    args = dict(patients=1, seed=0, preset="tiny") | kwargs
    with pytest.raises(InputError, match=words) as info:
        make_cohort(tmp_path / "out", **args)
    assert "\n" not in str(info.value)
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_existing_file_or_non_empty_folder_is_refused(tmp_path):
    target = tmp_path / "taken.csv"
    target.write_text("x")
    with pytest.raises(InputError, match="existing file"):
        make_cohort(target, patients=1, preset="tiny")
    folder = tmp_path / "full"
    folder.mkdir()
    (folder / "notes.txt").write_text("keep me")
    with pytest.raises(InputError, match="not empty"):
        make_cohort(folder, patients=1, preset="tiny")
    make_cohort(folder, patients=1, preset="tiny", overwrite=True)
    assert (folder / "notes.txt").read_text() == "keep me" and (folder / "manifest.csv").exists()


def test_cli_writes_a_cohort_and_reports_bad_input_in_one_line(tmp_path, capsys):
    assert cli_main(["synth", "--out", str(tmp_path / "c"), "--patients", "1", "--preset", "tiny",
                     "--no-progress"]) == 0
    assert "wrote 1 patients" in capsys.readouterr().out
    assert (tmp_path / "c" / "manifest.csv").exists()
    assert cli_main(["synth", "--out", str(tmp_path / "d"), "--patients", "-2"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("noduleclip synth: error:") and "--patients" in err and "\n" not in err

"""LIDC XML reads -> nodules: parsing, world coordinates, clustering, consensus, masks, the CLI, and the real series."""

from __future__ import annotations

import csv
import tarfile

import numpy as np
import pydicom
import pytest
from scipy.spatial.transform import Rotation

from helpers import lidc0001_nodule_center, write_ct_series
from noduleclip.cli import main
from noduleclip.data.manifest import NoduleManifest
from noduleclip.importers import LidcConfig, import_lidc, read_lidc_ratings
from noduleclip.importers.lidc_xml import (
    ReaderNodule,
    Roi,
    XmlReport,
    cluster_marks,
    label_from_malignancy,
    median_grade,
    mode_grade,
    place_mark,
    read_series_reads,
)
from noduleclip.io import Volume, read_mask, read_volume
from noduleclip.preprocess.views import mask_centroid

NS = "http://www.nih.gov"
TAGS = ("subtlety", "internalStructure", "calcification", "sphericity", "margin", "lobulation", "spiculation",
        "texture", "malignancy")


def circle(cx: float, cy: float, r: float) -> np.ndarray:
    """Boundary pixels (x, y) of a circle, in contour order."""
    t = np.linspace(0, 2 * np.pi, int(16 * r), endpoint=False)
    pts = np.round(np.column_stack([cx + r * np.cos(t), cy + r * np.sin(t)])).astype(int)
    _, first = np.unique(pts, axis=0, return_index=True)
    return pts[np.sort(first)]


def roi_xml(z: float, sop: str, points, inclusion: bool = True) -> str:
    edges = "".join(f"<edgeMap><xCoord>{x}</xCoord><yCoord>{y}</yCoord></edgeMap>" for x, y in points)
    return (f"<roi><imageZposition>{z:.6f} </imageZposition><imageSOP_UID>{sop}</imageSOP_UID>"
            f"<inclusion>{'TRUE' if inclusion else 'FALSE'}</inclusion>{edges}</roi>")


def lidc_xml(series_uid: str, sessions: list[list[str]], study_uid: str = "1.2.3.4") -> str:
    body = "".join("<readingSession><servicingRadiologistID>anon</servicingRadiologistID>" + "".join(s)
                   + "</readingSession>" for s in sessions)
    return (f'<?xml version="1.0" encoding="UTF-8"?>\n<LidcReadMessage uid="1.1" xmlns="{NS}"><ResponseHeader>'
            f"<SeriesInstanceUid>{series_uid}</SeriesInstanceUid><StudyInstanceUID>{study_uid}</StudyInstanceUID>"
            f"</ResponseHeader>{body}</LidcReadMessage>")


def nodule_xml(name: str, rois: list[str], ratings: tuple | None) -> str:
    tags = "" if ratings is None else "".join(f"<{t}>{v}</{t}>" for t, v in zip(TAGS, ratings, strict=True))
    chars = "" if ratings is None else f"<characteristics>{tags}</characteristics>"
    return f"<unblindedReadNodule><noduleID>{name}</noduleID>{chars}{''.join(rois)}</unblindedReadNodule>"


def write_series(folder, direction, patient_id: str, origin=(-20.0, -25.0, 40.0)):
    """A 12 x 64 x 64 CT series (0.7 mm pixels, 2.5 mm slices); returns the writer's Volume and (SOP UID, z) per k."""
    volume = Volume(np.full((12, 64, 64), -900.0, np.float32), origin=origin, spacing=(0.7, 0.7, 2.5),
                    direction=direction)
    paths = write_ct_series(volume, folder)
    slices = []
    for path in paths:
        ds = pydicom.dcmread(path)
        ds.PatientID = patient_id
        ds.save_as(path)
        slices.append((str(ds.SOPInstanceUID), float(ds.ImagePositionPatient[2])))
    return volume, slices, str(pydicom.dcmread(paths[0]).SeriesInstanceUID)


def two_reader_xml(series_uid: str, slices) -> str:
    """Reader 1: nodule A (with a hole on k=4) and nodule B; reader 2: nodule A (matched by z only), a point, a
    non-nodule."""
    a1 = [roi_xml(slices[k][1], slices[k][0], circle(20, 22, 7)) for k in (3, 4, 5)]
    a1.append(roi_xml(slices[4][1], slices[4][0], circle(20, 22, 2), inclusion=False))
    b1 = [roi_xml(slices[k][1], slices[k][0], circle(45, 40, 5)) for k in (8, 9)]
    a2 = [roi_xml(slices[k][1], "", circle(21, 22, 6)) for k in (3, 4, 5, 6)]
    small = roi_xml(slices[1][1], slices[1][0], [(10, 10)])
    non_nodule = (f"<nonNodule><nonNoduleID>x</nonNoduleID><imageZposition>{slices[2][1]}</imageZposition>"
                  f"<imageSOP_UID>{slices[2][0]}</imageSOP_UID><locus><xCoord>50</xCoord><yCoord>12</yCoord></locus></nonNodule>")
    reader1 = [nodule_xml("A", a1, (5, 1, 6, 4, 2, 3, 4, 5, 5)), nodule_xml("B", b1, (3, 1, 6, 5, 5, 1, 1, 5, 2))]
    reader2 = [nodule_xml("a", a2, (3, 1, 3, 3, 3, 2, 3, 5, 4)), nodule_xml("s", [small], None), non_nodule]
    return lidc_xml(series_uid, [reader1, reader2])


@pytest.fixture
def lidc_like(tmp_path):
    """Two series: one rotated in-plane with slices stored in descending z, one axial; and their XML reads."""
    rotated = Rotation.from_euler("z", 25, degrees=True).as_matrix() @ np.diag([1.0, 1.0, -1.0])
    vol1, slices1, uid1 = write_series(tmp_path / "dicom" / "p1" / "CT1", rotated, "LIDC-IDRI-9001")
    vol2, slices2, uid2 = write_series(tmp_path / "dicom" / "p2" / "CT2", np.eye(3), "LIDC-IDRI-9002",
                                       origin=(10.0, 5.0, -80.0))
    xml = tmp_path / "xml" / "157"
    xml.mkdir(parents=True)
    (xml / "001.xml").write_text(two_reader_xml(uid1, slices1))
    (xml / "002.xml").write_text(two_reader_xml(uid2, slices2).replace("1.2.3.4", "1.2.3.5"))
    return tmp_path, {uid1: vol1, uid2: vol2}


def expected_world(volume: Volume, index) -> np.ndarray:
    """world = origin + direction @ (spacing * index), written out by hand."""
    return volume.origin + volume.direction @ (volume.spacing * np.asarray(index, float))


def test_world_coordinates_clusters_consensus_and_labels(lidc_like):
    root, volumes = lidc_like
    out = root / "manifest.csv"
    report = import_lidc(root / "dicom", root / "xml", out, root / "masks", progress=False)
    manifest = NoduleManifest.read(out)
    assert len(manifest) == 4 and report.small_marks == 2 and report.matched == 2
    for uid, volume in volumes.items():
        a, b = sorted((r for r in manifest if r.columns["series_uid"] == uid), key=lambda r: -int(r.columns["readers"]))
        # Nodule A: reader 1 centred at pixel (20, 22), slices 3-5; reader 2 at (21, 22), slices 3-6.
        np.testing.assert_allclose(a.coord, expected_world(volume, [20.5, 22.0, 4.25]), atol=0.3)
        np.testing.assert_allclose(b.coord, expected_world(volume, [45.0, 40.0, 8.5]), atol=0.3)
        assert a.columns["readers"] == "2" and b.columns["readers"] == "1"
        rated = ("subtlety", "calcification", "margin", "lobulation", "spiculation", "malignancy")
        grades = {k: int(a.columns[k]) for k in rated}
        # medians (5,3)->4, (2,3)->2.5->3, (3,2)->2.5->3, (4,3)->3.5->3, (5,4)->4.5->4; calcification mode tie (6,3)->3
        assert grades == {"subtlety": 4, "calcification": 3, "margin": 3, "lobulation": 3, "spiculation": 3,
                          "malignancy": 4}
        assert a.label == 1 and b.label == 0 and b.columns["malignancy"] == "2"
        assert 12 * 0.7 <= float(a.columns["diameter_mm"]) <= 14 * 0.7
        assert a.patient_id == b.patient_id
    assert {r.patient_id for r in manifest} == {"LIDC-IDRI-9001", "LIDC-IDRI-9002"}
    assert len({r.nodule_id for r in manifest}) == 4
    assert next(csv.DictReader(open(out)))["image"].startswith("dicom/")  # relative to the manifest's folder


def test_consensus_mask_is_aligned_with_the_series(lidc_like):
    root, volumes = lidc_like
    import_lidc(root / "dicom", root / "xml", root / "m.csv", root / "masks", progress=False)
    record = max(NoduleManifest.read(root / "m.csv"), key=lambda r: int(r.columns["readers"]))
    ct = read_volume(record.image)
    mask = read_mask(record.mask, reference=ct)
    np.testing.assert_allclose(mask_centroid(mask), record.coord, atol=0.5)
    zs = sorted({round(float(ct.index_to_world([0, 0, k])[2]), 2) for k in np.nonzero(mask.array.any(axis=(1, 2)))[0]})
    volume = volumes[record.columns["series_uid"]]
    assert zs == sorted(round(float(expected_world(volume, [0, 0, k])[2]), 2) for k in (3, 4, 5, 6))


def square(x0: int, y0: int, size: int) -> np.ndarray:
    """Every boundary pixel of a square, in contour order (as LIDC edge maps list them)."""
    side = np.arange(size)
    return np.concatenate([np.column_stack([x0 + side, np.full(size, y0)]),
                           np.column_stack([np.full(size, x0 + size), y0 + side]),
                           np.column_stack([x0 + size - side, np.full(size, y0 + size)]),
                           np.column_stack([np.full(size, x0), y0 + size - side])])


def test_half_of_the_readers_decide_the_mask_and_exclusions_are_holes():
    to_mm = lambda xyk: xyk * np.array([0.7, 0.7, 2.0])  # noqa: E731
    slice_of = lambda roi: int(roi.z)  # noqa: E731
    rois = [[Roi(0, "", True, square(0, 0, 10))], [Roi(0, "", True, square(4, 0, 10))],
            [Roi(0, "", True, square(8, 0, 10)), Roi(0, "", False, square(9, 3, 4))]]
    marks = [place_mark(ReaderNodule(r, "n", {"malignancy": 3}, roi), slice_of, to_mm) for r, roi in enumerate(rois)]
    assert len(marks[2].keys) == 11 * 11 - 3 * 3  # the exclusion's interior, not its edge, is removed
    (group,) = cluster_marks(marks)
    keys, counts = np.unique(np.concatenate([m.keys for m in group]), return_counts=True)
    kept = keys[counts >= LidcConfig().mask_agreement * 3]
    xs = kept & ((1 << 20) - 1)
    assert xs.min() == 4 and xs.max() == 14  # columns covered by at least two of the three squares
    assert marks[0].diameter == pytest.approx(np.hypot(7, 7))


def test_one_mark_per_reader_and_distant_marks_stay_apart():
    to_mm = lambda xyk: xyk * np.array([0.7, 0.7, 2.5])  # noqa: E731
    def mark(reader, cx, cy, r=4):
        return place_mark(ReaderNodule(reader, "n", {}, [Roi(k, "", True, circle(cx, cy, r)) for k in (2, 3)]),
                          lambda roi: int(roi.z), to_mm)
    # Reader 0 marks two touching nodules 5 pixels (3.5 mm) apart; reader 1 marks the first; a far one by reader 1.
    groups = cluster_marks([mark(0, 20, 20), mark(0, 25, 20), mark(1, 21, 20), mark(1, 80, 80)])
    found = sorted((len(g), tuple(np.round(np.mean([m.centroid[:2] for m in g], axis=0) / 0.7, 1))) for g in groups)
    assert found == [(1, (25.0, 20.0)), (1, (80.0, 80.0)), (2, (20.5, 20.0))]


def test_rounding_modes_and_labels():
    assert median_grade([3, 4], "malignancy") == 3 and median_grade([2, 3], "malignancy") == 3
    assert median_grade([4, 5], "malignancy") == 4 and median_grade([1, 2], "malignancy") == 2
    assert median_grade([2, 3, 5], "spiculation") == 3 and mode_grade([6, 6, 3, 3, 1]) == 3
    assert [label_from_malignancy(m) for m in (1, 2, 3, 4, 5, None)] == [0, 0, None, 1, 1, None]
    strict = LidcConfig(malignant_at=5, benign_at=1)
    assert [label_from_malignancy(m, strict) for m in (1, 2, 4, 5)] == [0, None, None, 1]


def test_ratings_without_images_from_a_folder_or_a_tarball(lidc_like, tmp_path):
    root, _ = lidc_like
    with tarfile.open(tmp_path / "xml.tar.gz", "w:gz") as tar:
        tar.add(root / "xml", arcname="lidc-xml")
    for source in (root / "xml", tmp_path / "xml.tar.gz"):
        rows = read_lidc_ratings(source)
        assert len(rows) == 4 and {r["patient_id"] for r in rows} == {"1.2.3.4", "1.2.3.5"}
        big = [r for r in rows if r["readers"] == 2]
        assert len(big) == 2 and all(r["malignancy"] == 4 and r["label"] == 1 and r["calcification"] == 3 for r in big)
        assert sorted(r["label"] for r in rows) == [0, 0, 1, 1]
    assert [r["label"] for r in read_lidc_ratings(root / "xml", malignant_at=5, benign_at=1)] == [None] * 4


def test_bad_and_radiograph_files_are_reported_not_fatal(lidc_like):
    root, _ = lidc_like
    (root / "xml" / "broken.xml").write_text("<LidcReadMessage><ResponseHeader>")
    (root / "xml" / "cxr.xml").write_text(f'<IdriReadMessage xmlns="{NS}/idri"><ResponseHeader/></IdriReadMessage>')
    report = XmlReport()
    reads = read_series_reads(root / "xml", report, progress=False)
    assert len(reads) == 2 and report.read == 2 and report.skipped_radiograph == 1
    assert [name.endswith("broken.xml") for name, _ in report.bad] == [True]
    import_report = import_lidc(root / "dicom", root / "xml", root / "m.csv", progress=False)
    assert sum(import_report.labels.values()) == 4 and "1 unreadable XML" in " ".join(import_report.details())


def test_unmatched_series_and_xml_are_reported(lidc_like):
    root, volumes = lidc_like
    (root / "xml" / "157" / "002.xml").rename(root / "002.xml")
    (root / "xml" / "157" / "003.xml").write_text(lidc_xml("9.9.9", [[]]))
    report = import_lidc(root / "dicom", root / "xml", root / "m.csv", progress=False)
    assert report.matched == 1 and len(report.series_without_xml) == 1
    assert report.xml_without_series[0].startswith("9.9.9")


@pytest.mark.parametrize("args, message", [
    (["--xml", "{root}/nope"], "does not exist"),
    (["--xml", "{root}/xml", "--malignant-at", "2", "--benign-at", "2"], "benign-at < malignant-at"),
    (["--xml", "{root}/xml", "--masks", "{root}/masks"], "--masks needs --dicom"),
    (["--xml", "{root}/xml", "--dicom", "{root}/dicom/p1/CT1/nothing"], "is not a folder"),
    (["--xml", "{root}/other", "--dicom", "{root}/dicom"], "has a read"),
])
def test_cli_user_errors_are_one_line_and_write_nothing(lidc_like, capsys, args, message):
    root, _ = lidc_like
    (root / "other").mkdir()
    (root / "other" / "x.xml").write_text(lidc_xml("9.9.9", [[]]))
    out = root / "out" / "m.csv"
    assert main(["import-lidc", *[a.format(root=root) for a in args], "--out", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not out.exists()


def test_cli_import_lidc_writes_manifest_and_ratings(lidc_like, capsys):
    root, _ = lidc_like
    assert main(["import-lidc", "--xml", str(root / "xml"), "--dicom", str(root / "dicom"),
                 "--out", str(root / "m.csv"), "--masks", str(root / "masks"), "--no-progress"]) == 0
    assert "4 nodules (2 malignant, 2 benign, 0 unknown)" in capsys.readouterr().out
    assert all(r.mask.exists() for r in NoduleManifest.read(root / "m.csv"))
    assert main(["import-lidc", "--xml", str(root / "xml"), "--out", str(root / "ratings.csv"), "--no-progress"]) == 0
    rows = list(csv.DictReader(open(root / "ratings.csv")))
    assert len(rows) == 4 and sorted(r["label"] for r in rows) == ["0", "0", "1", "1"] and "image" not in rows[0]


def test_real_series_gives_the_big_nodule_at_the_centre_of_the_views(shared_data, tmp_path):
    from noduleclip.preprocess.cache import ViewCache
    from noduleclip.preprocess.pipeline import preprocess_manifest

    out = tmp_path / "lidc.csv"
    report = import_lidc(shared_data / "lidc-idri-0001", shared_data / "lidc-xml.tar.gz", out, tmp_path / "masks",
                         progress=False)
    assert report.matched == 1 and len(report.xml_without_series) == 1017 and report.xml.skipped_radiograph == 283
    (record,) = NoduleManifest.read(out)
    assert record.patient_id == "LIDC-IDRI-0001" and record.label == 1 and record.columns["readers"] == "4"
    assert int(record.columns["malignancy"]) >= 4 and int(record.columns["spiculation"]) >= 3
    assert 25 <= float(record.columns["diameter_mm"]) <= 36
    volume = read_volume(record.image)
    assert np.linalg.norm(record.coord - lidc0001_nodule_center(shared_data, volume)) < 3.0
    mask = read_mask(record.mask, reference=volume)
    # one reader's DICOM SEG
    seg = read_mask(sorted((shared_data / "lidc-idri-0001").glob("SEG_*"))[0], reference=volume)
    overlap = np.sum((seg.array > 0) & (mask.array > 0))
    assert 2 * overlap / (np.sum(seg.array > 0) + np.sum(mask.array > 0)) > 0.8  # Dice: measured 0.84-0.92 per reader
    cache = ViewCache(tmp_path / "cache")
    assert preprocess_manifest(NoduleManifest.read(out), cache, progress=False).done == [record.nodule_id]
    views = cache.load(record.nodule_id)
    level = (-300.0 + 1000.0) / 1500.0
    for p in range(9):
        rows, cols = np.nonzero(views[p][10:40, 10:40] > level)
        assert views[p][25, 25] > level and abs(rows.mean() - 15) < 4 and abs(cols.mean() - 15) < 4, f"plane {p}"

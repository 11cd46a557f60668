"""LIDC-IDRI reads + CT series -> a nodule manifest (world LPS coordinates, consensus ratings, masks).

Each XML names its series (ResponseHeader/SeriesInstanceUid); the CT series under the DICOM root are
found from their headers alone. A contour point (x = column, y = row) on the slice named by its
imageSOP_UID (else the slice whose ImagePositionPatient z equals imageZposition) becomes world
millimetres through the series' geometry, so orientation and slice order are respected. Marks
become nodules as `noduleclip.importers.lidc_xml` describes. Without images (`lidc_ratings_table`)
the same nodules are formed in the XML's own units: pixels scaled by a nominal pixel size, z in mm.
"""

from __future__ import annotations

import contextlib
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from noduleclip.atomic import staged_dir, write_csv
from noduleclip.data.manifest import NoduleManifest
from noduleclip.errors import InputError, NoduleClipError
from noduleclip.importers.crops import path_for_manifest
from noduleclip.importers.lidc_xml import (
    RATING_COLUMNS,
    LidcConfig,
    Mark,
    Roi,
    SeriesReads,
    XmlReport,
    cluster_marks,
    consensus,
    key_voxels,
    place_mark,
    read_series_reads,
)
from noduleclip.io.dicom import DicomSeries, _read_header, slice_geometry
from noduleclip.io.readers import write_volume
from noduleclip.io.volume import Volume
from noduleclip.progress import progress_bar

RATINGS_COLUMNS = ("patient_id", "nodule_id", "series_uid", "label", "readers", "diameter_mm", *RATING_COLUMNS,
                   "pixel_x", "pixel_y", "z_mm")


@dataclass
class LidcImportReport:
    xml: XmlReport = field(default_factory=XmlReport)
    dicom_files: int = 0
    bad_dicom: list[tuple[str, str]] = field(default_factory=list)
    matched: int = 0
    series_without_xml: list[str] = field(default_factory=list)
    xml_without_series: list[str] = field(default_factory=list)
    bad_series: list[tuple[str, str]] = field(default_factory=list)
    small_marks: int = 0  # marks without a contour (nodules < 3 mm)
    unplaced_rois: int = 0  # contours whose slice is not in the series
    below_min_diameter: int = 0
    labels: Counter = field(default_factory=Counter)
    warnings: list[str] = field(default_factory=list)

    def summary(self) -> str:
        n = sum(self.labels.values())
        return (f"{n} nodules ({self.labels[1]} malignant, {self.labels[0]} benign, {self.labels[None]} unknown) "
                f"from {self.matched} series; {self.xml.summary()}")

    def details(self) -> list[str]:
        """Lines for what was skipped or could not be used (first few of each kind)."""
        lines = []
        for what, items in (("CT series without XML", self.series_without_xml),
                            ("XML series without CT", self.xml_without_series),
                            ("unreadable XML", [f"{a} ({b})" for a, b in self.xml.bad]),
                            ("unreadable DICOM", [f"{a} ({b})" for a, b in self.bad_dicom]),
                            ("series not imported", [f"{a}: {b}" for a, b in self.bad_series])):
            if items:
                more = f" and {len(items) - 3} more" if len(items) > 3 else ""
                lines.append(f"{len(items)} {what}: {'; '.join(items[:3])}{more}")
        if self.unplaced_rois:
            lines.append(f"{self.unplaced_rois} contours name a slice that is not in their series; they were left out")
        lines.append(f"{self.small_marks} marks without a contour (< 3 mm) and {self.below_min_diameter} nodules "
                     f"below the minimum diameter left out")
        return lines + self.warnings


def scan_ct_series(root: Path, report: LidcImportReport, progress: bool = True) -> dict[str, DicomSeries]:
    """The CT image series under `root` by SeriesInstanceUID (headers only); unreadable files are reported."""
    paths = []
    for folder, dirs, files in os.walk(root):
        dirs.sort()
        paths += [Path(folder) / f for f in sorted(files)
                  if not f.startswith(".") and f.upper() != "DICOMDIR" and not f.lower().endswith(".xml")]
    series: dict[str, DicomSeries] = {}
    for path in progress_bar(paths, desc="DICOM headers", unit="file", disable=not progress):
        try:
            obj = _read_header(path)
        except InputError as exc:
            report.bad_dicom.append((str(path), str(exc)))
            continue
        if obj is not None:
            report.dicom_files += 1
            series.setdefault(obj.series_uid, DicomSeries(obj.series_uid)).objects.append(obj)
    return {uid: s for uid, s in series.items() if s.is_ct_image}


def series_folder(series: DicomSeries) -> Path:
    return Path(os.path.commonpath([str(o.path.parent) for o in series.objects]))


def series_geometry(series: DicomSeries) -> tuple[Volume, dict[str, int]]:
    """A geometry-only Volume of the series (zero-stride array) and each slice's index by SOPInstanceUID."""
    slices, origin, spacing, direction = slice_geometry(series, series_folder(series))
    shape = (len(slices), slices[0].rows, slices[0].columns)
    volume = Volume(np.broadcast_to(np.zeros(1, np.uint8), shape), origin, spacing, direction,
                    str(series_folder(series)))
    return volume, {o.sop_instance_uid: k for k, o in enumerate(slices)}


def _patient_id(series: DicomSeries) -> str:
    import pydicom  # imported on first use: loading pydicom takes a quarter second

    ds = pydicom.dcmread(series.objects[0].path, stop_before_pixels=True, specific_tags=["PatientID"])
    return str(ds.get("PatientID", "")).strip() or series.uid


def series_nodules(reads: SeriesReads, volume: Volume, sop_to_slice: dict[str, int], config: LidcConfig,
                   report: LidcImportReport) -> list[tuple[dict, np.ndarray]]:
    """(consensus, consensus-mask voxel (x, y, k) indices) of each nodule of one series, sorted by position."""
    slice_z = volume.index_to_world(np.array([[0, 0, k] for k in range(volume.array.shape[0])], float))[:, 2]
    z_tolerance = max(0.01, 0.25 * abs(volume.index_to_world_matrix[2, 2]))

    def slice_of(roi: Roi) -> int | None:
        k = sop_to_slice.get(roi.sop_uid)
        if k is None:
            nearest = int(np.argmin(np.abs(slice_z - roi.z)))
            k = nearest if abs(slice_z[nearest] - roi.z) <= z_tolerance else None
        if k is None:
            report.unplaced_rois += 1
        return k

    out = []
    for row, group in _nodules(_place_marks(reads, slice_of, volume.index_to_world, report), config, report):
        keys, counts = np.unique(np.concatenate([m.keys for m in group]), return_counts=True)
        voxels = key_voxels(keys[counts >= config.mask_agreement * len(group) - 1e-9])
        out.append((row, voxels[np.all(voxels < np.array(volume.shape_ijk), axis=1)]))  # contours may touch the edge
    return out


def _place_marks(reads: SeriesReads, slice_of, to_mm, report: LidcImportReport) -> list[Mark]:
    """The contoured marks of one series placed on a grid (uncontoured ones only counted)."""
    marks = []
    for nodule in reads.nodules():
        if not nodule.contoured:
            report.small_marks += 1
            continue
        mark = place_mark(nodule, slice_of, to_mm)
        if mark is not None:
            marks.append(mark)
    return marks


def _nodules(marks: list[Mark], config: LidcConfig, report: LidcImportReport) -> list[tuple[dict, list[Mark]]]:
    """(consensus, marks) of each nodule at least the minimum diameter, ordered by z, y, x."""
    out = []
    for group in cluster_marks(marks, config):
        row = consensus(group, config)
        if row["diameter_mm"] < config.min_diameter_mm:
            report.below_min_diameter += 1
        else:
            out.append((row, group))
    return sorted(out, key=lambda item: tuple(np.round(item[0]["centroid"][::-1], 3)))


def _row(row: dict, patient_id: str, nodule_id: str, series_uid: str) -> dict:
    out = {"patient_id": patient_id, "nodule_id": nodule_id, "label": row["label"], "series_uid": series_uid,
           "readers": row["readers"], "diameter_mm": row["diameter_mm"]}
    return out | {c: row[c] for c in RATING_COLUMNS}


def import_lidc(dicom_root, xml_source, out, masks_dir=None, config: LidcConfig | None = None,
                progress: bool = True) -> LidcImportReport:
    """Write a nodule manifest (and consensus masks) for every CT series under `dicom_root` that has reads."""
    config = config or LidcConfig()
    check_config(config)
    dicom_root, out = Path(dicom_root).expanduser(), Path(out).expanduser()
    if not dicom_root.is_dir():
        raise InputError(f"DICOM root {dicom_root} is not a folder; pass the folder that holds the CT series")
    report = LidcImportReport()
    ct = scan_ct_series(dicom_root, report, progress)
    if not ct:
        raise InputError(f"no CT image series under {dicom_root} ({report.dicom_files} DICOM files); "
                         "pass the folder that holds the LIDC CT series")
    reads = read_series_reads(xml_source, report.xml, progress, wanted=set(ct))
    if not reads and not report.xml.not_wanted:
        raise InputError(f"{xml_source} holds no LIDC CT read (LidcReadMessage) among its {report.xml.files} XML "
                         "files; pass the LIDC XML folder or tarball")
    matched = sorted(set(reads) & set(ct))
    report.series_without_xml = sorted(f"{uid} ({series_folder(ct[uid])})" for uid in set(ct) - set(reads))
    report.xml_without_series = sorted(f"{uid} ({name})" for uid, name in report.xml.not_wanted.items())
    if not matched:
        raise InputError(f"none of the {len(ct)} CT series under {dicom_root} has a read in {xml_source}; "
                         "check that they are the same LIDC series")
    rows, per_patient = [], Counter()
    stage_ctx = staged_dir(masks_dir) if masks_dir else contextlib.nullcontext(None)
    with stage_ctx as stage:
        for uid in progress_bar(matched, desc="series", unit="series", disable=not progress):
            try:
                volume, sop_to_slice = series_geometry(ct[uid])
                patient_id = _patient_id(ct[uid])
                nodules = series_nodules(reads[uid], volume, sop_to_slice, config, report)
            except NoduleClipError as exc:
                report.bad_series.append((uid, str(exc)))
                continue
            except Exception as exc:  # one unusable series must not stop the others
                report.bad_series.append((uid, f"{type(exc).__name__}: {exc}"))
                continue
            folder = series_folder(ct[uid])
            others = [s for s in ct if s != uid and series_folder(ct[s]).is_relative_to(folder)]
            if others:
                report.warnings.append(f"series {uid}: its folder {folder} also holds {len(others)} other CT series, "
                                       "which the image reader will refuse; give each series its own folder")
            report.matched += 1
            for consensus_row, voxels in nodules:
                per_patient[patient_id] += 1
                nodule_id = f"{patient_id}_N{per_patient[patient_id]:02d}"
                row = _row(consensus_row, patient_id, nodule_id, uid)
                row["image"] = path_for_manifest(folder, out)
                row.update(zip(("coord_x", "coord_y", "coord_z"), np.round(consensus_row["centroid"], 3).tolist(),
                               strict=True))
                if stage is not None:
                    mask = np.zeros(volume.array.shape, np.uint8)
                    mask[voxels[:, 2], voxels[:, 1], voxels[:, 0]] = 1
                    write_volume(Volume(mask, volume.origin, volume.spacing, volume.direction),
                                 stage / f"{nodule_id}.nii.gz")
                    row["mask"] = path_for_manifest(Path(masks_dir).expanduser() / f"{nodule_id}.nii.gz", out)
                report.labels[row["label"]] += 1
                rows.append(row)
        if not rows:
            raise InputError(f"no nodule of at least {config.min_diameter_mm:g} mm in the {len(matched)} matched "
                             "series; "
                             + ("; ".join(f"{a}: {b}" for a, b in report.bad_series[:2]) or "nothing to write"))
    NoduleManifest.write(out, rows)
    return report


def check_config(config: LidcConfig) -> None:
    if not 1 <= config.benign_at < config.malignant_at <= 5:
        raise InputError(f"the label thresholds must satisfy 1 <= benign-at < malignant-at <= 5 "
                         f"(got benign-at {config.benign_at}, malignant-at {config.malignant_at})")
    if config.min_diameter_mm < 0:
        raise InputError(f"--min-diameter must be zero or more millimetres, got {config.min_diameter_mm}")


def _nominal_marks(reads: SeriesReads, pixel_mm: float, report: LidcImportReport) -> list[Mark]:
    """The contoured marks of one series in the XML's units: pixels x `pixel_mm`, z in mm."""
    z_values = np.array(sorted({round(r.z, 3) for n in reads.nodules() for r in n.rois}) or [0.0])
    index = {z: k for k, z in enumerate(z_values.tolist())}

    def to_mm(xyk: np.ndarray) -> np.ndarray:
        return np.column_stack([xyk[:, 0] * pixel_mm, xyk[:, 1] * pixel_mm, z_values[xyk[:, 2].astype(int)]])

    return _place_marks(reads, lambda roi: index[round(roi.z, 3)], to_mm, report)


def lidc_ratings_table(xml_source, config: LidcConfig | None = None, patient_ids: dict[str, str] | None = None,
                       progress: bool = False) -> tuple[list[dict], LidcImportReport]:
    """Consensus ratings of every LIDC nodule from the XML alone, with the import report.

    Without images, marks are placed in the XML's units: x, y pixels times `config.nominal_pixel_mm`, z in mm
    (so diameters and the minimum-diameter cut are approximate). `patient_id` comes from `patient_ids`
    (SeriesInstanceUID -> patient) when given, else it is the read's StudyInstanceUID.
    """
    config = config or LidcConfig()
    check_config(config)
    report = LidcImportReport()
    reads = read_series_reads(xml_source, report.xml, progress)
    if not reads:
        raise InputError(f"{xml_source} holds no LIDC CT read (LidcReadMessage) among its {report.xml.files} XML "
                         "files; pass the LIDC XML folder or tarball")
    rows, per_patient, pixel = [], Counter(), config.nominal_pixel_mm
    for uid in sorted(reads, key=lambda u: ((patient_ids or {}).get(u, reads[u].study_uid), u)):
        patient_id = (patient_ids or {}).get(uid) or reads[uid].study_uid or uid
        marks = _nominal_marks(reads[uid], config.nominal_pixel_mm, report)
        report.matched += 1
        for row, _ in _nodules(marks, config, report):
            per_patient[patient_id] += 1
            out = _row(row, patient_id, f"{patient_id}_N{per_patient[patient_id]:02d}", uid)
            x, y, z = row["centroid"]
            out.update(pixel_x=round(x / pixel, 1), pixel_y=round(y / pixel, 1), z_mm=round(z, 2))
            report.labels[out["label"]] += 1
            rows.append(out)
    return rows, report


def read_lidc_ratings(xml_source, malignant_at: int = 4, benign_at: int = 2,
                      min_diameter_mm: float = 3.0) -> list[dict]:
    """One dict per LIDC nodule (patient_id, nodule_id, series_uid, label, readers, diameter_mm, the nine ratings)."""
    config = LidcConfig(malignant_at=malignant_at, benign_at=benign_at, min_diameter_mm=min_diameter_mm)
    return lidc_ratings_table(xml_source, config)[0]


def write_ratings(path, rows: list[dict]) -> Path:
    """Write the ratings table as CSV, atomically (empty cells for missing ratings and unknown labels)."""
    path = Path(path).expanduser()
    return write_csv(path, RATINGS_COLUMNS, [["" if row.get(k) is None else row[k] for k in RATINGS_COLUMNS]
                                              for row in rows])

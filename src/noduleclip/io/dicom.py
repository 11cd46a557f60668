"""A CT series from a DICOM folder: scan the headers, choose the CT series, validate and stack its slices.

Headers are scanned with pydicom (`stop_before_pixels`), so SEG, SR and other objects beside the
slices cost little. The slices are ordered by their position along the slice normal
(row direction x column direction . ImagePositionPatient) and checked to form one regular grid:
same orientation, pixel spacing and size, no duplicates, no gaps, no in-plane drift (gantry tilt).
Pixels are decoded by pydicom and rescaled to HU with each slice's own RescaleSlope/Intercept;
compressed transfer syntaxes that pydicom cannot decode here go through SimpleITK (GDCM) per slice.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import numpy as np

from noduleclip.errors import InputError
from noduleclip.io.volume import Volume

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
ENHANCED_CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2.1"
SEGMENTATION_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"
MEDIA_STORAGE_DIRECTORY = "1.2.840.10008.1.3.10"  # a DICOMDIR: the one DICOM file without a series
HEADER_TAGS = [
    "SOPClassUID", "SOPInstanceUID", "Modality", "SeriesInstanceUID", "StudyInstanceUID",
    "FrameOfReferenceUID", "PatientID", "SeriesDescription", "ImageType", "NumberOfFrames",
    "ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "Rows", "Columns",
]
ORIENTATION_TOLERANCE = 1e-3  # direction cosines
SPACING_TOLERANCE = 0.05  # fraction of the slice step (consecutive gaps and the uniform grid)
DRIFT_TOLERANCE = 0.1  # fraction of a pixel: in-plane offset between slices before it counts as tilt
T = TypeVar("T")


@dataclass
class DicomObject:
    """The header fields of one DICOM file that choosing and stacking a series needs."""

    path: Path
    sop_class_uid: str
    sop_instance_uid: str
    modality: str
    series_uid: str
    image_type: tuple[str, ...]
    frames: int
    position: np.ndarray | None
    orientation: np.ndarray | None
    pixel_spacing: tuple[float, float] | None
    rows: int | None
    columns: int | None


def _is_ct_slice(obj: DicomObject) -> bool:
    """A single-frame axial/oblique CT image (not a localizer, not another modality or object)."""
    return (
        obj.modality == "CT"
        and obj.sop_class_uid in (CT_IMAGE_STORAGE, "")
        and "LOCALIZER" not in obj.image_type
        and obj.rows is not None
    )


def _what_object(obj: DicomObject) -> str:
    """How a non-CT-slice object of a series is described in a message."""
    if obj.modality != "CT":
        return f"Modality {obj.modality or '(empty)'}"
    if "LOCALIZER" in obj.image_type:
        return "a localizer (scout) image"
    if obj.sop_class_uid not in (CT_IMAGE_STORAGE, ""):
        return f"SOP class {obj.sop_class_uid}"
    return "an object without pixel rows"


@dataclass
class DicomSeries:
    """All objects of one SeriesInstanceUID found in a folder."""

    uid: str
    objects: list[DicomObject] = field(default_factory=list)

    @property
    def modality(self) -> str:
        return self.objects[0].modality

    @property
    def is_ct_image(self) -> bool:
        """Single-frame CT slices, most of its objects (localizer/scout series excluded)."""
        return 2 * sum(_is_ct_slice(o) for o in self.objects) > len(self.objects)

    def describe(self) -> str:
        kind = "CT" if self.is_ct_image else (self.modality or "unknown")
        return f"{self.uid} ({kind}, {len(self.objects)} file{'s' if len(self.objects) != 1 else ''})"


def _floats(value, n: int) -> np.ndarray | None:
    try:
        out = np.array([float(v) for v in value], dtype=np.float64)
    except (TypeError, ValueError):
        return None
    return out if out.shape == (n,) else None


def _read_header(path: Path) -> DicomObject | None:
    """Header of one file, or None when the file is not DICOM at all (a note, an XML read, ...) or a DICOMDIR."""
    import pydicom  # imported on first use: loading pydicom takes a quarter second
    from pydicom.errors import InvalidDicomError  # imported on first use, as pydicom above

    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=HEADER_TAGS)
    except InvalidDicomError:
        if path.suffix.lower() in (".dcm", ".dicom", ".ima"):
            raise InputError(f"{path} is named like a DICOM file but is not one (no DICOM header); remove or replace "
                             "it") from None
        return None
    except Exception as exc:
        raise InputError(f"cannot read the DICOM file {path} ({type(exc).__name__}: it looks corrupt or truncated); "
                         "remove or replace it") from None
    if "SeriesInstanceUID" not in ds:
        if str(ds.file_meta.get("MediaStorageSOPClassUID", "")) != MEDIA_STORAGE_DIRECTORY:
            raise InputError(f"the DICOM file {path} has no SeriesInstanceUID ({path.stat().st_size} bytes: its header "
                             "is truncated or damaged); replace it, or remove it if it is not part of the series")
        return None
    pixel_spacing = _floats(ds.get("PixelSpacing"), 2)
    return DicomObject(
        path=path,
        sop_class_uid=str(ds.get("SOPClassUID", "")),
        sop_instance_uid=str(ds.get("SOPInstanceUID", "")),
        modality=str(ds.get("Modality", "")).upper(),
        series_uid=str(ds.SeriesInstanceUID),
        image_type=tuple(str(v).upper() for v in (ds.get("ImageType") or ())),
        frames=int(ds.get("NumberOfFrames", 1) or 1),
        position=_floats(ds.get("ImagePositionPatient"), 3),
        orientation=_floats(ds.get("ImageOrientationPatient"), 6),
        pixel_spacing=None if pixel_spacing is None else (float(pixel_spacing[0]), float(pixel_spacing[1])),
        rows=int(ds.Rows) if "Rows" in ds else None,
        columns=int(ds.Columns) if "Columns" in ds else None,
    )


def scan_dicom_folder(folder: Path) -> list[DicomSeries]:
    """Every DICOM series under `folder` (searched recursively), with their objects' headers."""
    paths = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        paths += [Path(root) / f for f in sorted(files) if not f.startswith(".") and f.upper() != "DICOMDIR"]
    if not paths:
        raise InputError(f"the folder {folder} is empty; pass the folder that holds the CT series' slices")
    series: dict[str, DicomSeries] = {}
    for path in paths:
        obj = _read_header(path)
        if obj is not None:
            series.setdefault(obj.series_uid, DicomSeries(obj.series_uid)).objects.append(obj)
    if not series:
        raise InputError(f"the folder {folder} holds no DICOM files ({len(paths)} other "
                         f"file{'s' if len(paths) != 1 else ''}); pass a DICOM series folder or a NIfTI/MHA/NRRD file")
    return list(series.values())


def choose_ct_series(series: list[DicomSeries], folder: Path, series_uid: str | None = None) -> DicomSeries:
    """The CT image series to read: the one named by `series_uid`, else the only one in the folder."""
    cts = [s for s in series if s.is_ct_image]
    listing = "; ".join(f"{s.uid} ({len(s.objects)} slices)" for s in cts)
    if series_uid is not None:
        match = [s for s in series if s.uid == series_uid]
        if not match:
            found = f"its CT series are {listing}" if cts else "it holds no CT image series"
            raise InputError(f"series {series_uid} is not in {folder}: {found}; pass one of those with --series-uid "
                             "(or in the manifest's series_uid column)")
        if not match[0].is_ct_image:
            raise InputError(f"series {series_uid} in {folder} is {match[0].describe()}, not a CT image series; pass a "
                             "CT series' UID")
        return match[0]
    if not cts:
        kinds = Counter(s.modality + (" localizer" if "LOCALIZER" in s.objects[0].image_type else "")
                        + (" multi-frame" if s.objects[0].sop_class_uid == ENHANCED_CT_IMAGE_STORAGE else "")
                        for s in series)
        found = ", ".join(f"{n} {k.strip() or 'unknown'} series" for k, n in sorted(kinds.items()))
        hint = ("enhanced (multi-frame) CT is not supported: convert it to single-frame slices or NIfTI"
                if any(s.objects[0].sop_class_uid == ENHANCED_CT_IMAGE_STORAGE for s in series)
                else "pass the folder that holds the CT slices")
        raise InputError(f"no CT image series in {folder} (found {found}); {hint}")
    if len(cts) > 1:
        raise InputError(f"{folder} holds {len(cts)} CT series: {listing}; choose one with --series-uid UID (or the "
                         "manifest's series_uid column)")
    return cts[0]


def _check_same(series: DicomSeries, folder: Path, name: str, values: Sequence[T | None],
                close: Callable[[T, T], bool]) -> T:
    """The slices' common value of `name` (one value per slice): InputError if a slice lacks it or differs."""

    def missing(obj: DicomObject) -> InputError:
        return InputError(f"slice {obj.path} has no {name}; the series in {folder} cannot be stacked into a volume")

    first = values[0]
    if first is None:
        raise missing(series.objects[0])
    for obj, value in zip(series.objects, values, strict=True):
        if value is None:
            raise missing(obj)
        if not close(value, first):
            raise InputError(
                f"slices of series {series.uid} in {folder} have different {name} ({series.objects[0].path.name}: "
                f"{np.asarray(first).round(4).tolist()}, {obj.path.name}: {np.asarray(value).round(4).tolist()}); "
                "pass a series with one consistent geometry"
            )
    return first


def slice_geometry(series: DicomSeries, folder: Path) -> tuple[list[DicomObject], np.ndarray, np.ndarray, np.ndarray]:
    """Slices ordered along the normal, with the grid's origin, spacing (i, j, k) and direction; raises if irregular."""
    objs = series.objects
    for obj in objs:
        if not _is_ct_slice(obj):
            raise InputError(f"{obj.path} in CT series {series.uid} ({folder}) is {_what_object(obj)}, not a CT slice "
                             "like the others; remove it from the folder or replace it with the right slice")
    if any(o.frames > 1 for o in objs):
        raise InputError(f"series {series.uid} in {folder} is multi-frame, which is not supported; convert it to "
                         "single-frame slices or NIfTI")
    if len(objs) < 2:
        raise InputError(f"series {series.uid} in {folder} has a single slice; a CT volume needs the whole series of "
                         "slices")
    orientation = _check_same(series, folder, "ImageOrientationPatient", [o.orientation for o in objs],
                              lambda a, b: np.allclose(a, b, atol=ORIENTATION_TOLERANCE))
    pixel_spacing = _check_same(series, folder, "PixelSpacing", [o.pixel_spacing for o in objs],
                                lambda a, b: np.allclose(a, b, rtol=1e-4))
    _check_same(series, folder, "Rows x Columns", [(o.rows, o.columns) for o in objs], lambda a, b: a == b)
    for obj in objs:
        if obj.position is None:
            raise InputError(f"slice {obj.path} has no ImagePositionPatient; the series in {folder} cannot be stacked "
                             "into a volume")
    row_dir, col_dir = orientation[:3], orientation[3:]
    if (abs(np.linalg.norm(row_dir) - 1) > 0.01 or abs(np.linalg.norm(col_dir) - 1) > 0.01
            or abs(row_dir @ col_dir) > 0.01):
        raise InputError(f"series {series.uid} in {folder} has an invalid ImageOrientationPatient "
                         f"{orientation.tolist()} (not two orthogonal unit vectors); fix the files' headers")
    row_dir = row_dir / np.linalg.norm(row_dir)
    col_dir = col_dir - (col_dir @ row_dir) * row_dir
    col_dir = col_dir / np.linalg.norm(col_dir)
    normal = np.cross(row_dir, col_dir)

    positions = np.array([o.position for o in objs])
    depth = positions @ normal
    order = np.argsort(depth, kind="stable")
    objs, positions, depth = [objs[i] for i in order], positions[order], depth[order]
    steps = np.diff(depth)
    for n, step in enumerate(steps):
        if step < 1e-3:
            raise InputError(
                f"series {series.uid} in {folder} has two slices at the same position {depth[n]:.2f} mm along the "
                f"normal ({objs[n].path.name} and {objs[n + 1].path.name}); remove the duplicate"
            )
    step = float(np.median(steps))
    for n, gap in enumerate(steps):
        if abs(gap - step) <= SPACING_TOLERANCE * step:
            continue
        missing = round(gap / step) - 1
        if missing >= 1 and abs(gap - (missing + 1) * step) <= SPACING_TOLERANCE * step:
            raise InputError(
                f"series {series.uid} in {folder} is missing {missing} slice{'s' if missing > 1 else ''} between "
                f"positions {depth[n]:.2f} and {depth[n + 1]:.2f} mm along the normal (slices every {step:.3g} mm "
                "elsewhere); add the missing files"
            )
        raise InputError(
            f"series {series.uid} in {folder} has inconsistent slice spacing: {gap:.3g} mm between positions "
            f"{depth[n]:.2f} and {depth[n + 1]:.2f} mm where the other slices are {step:.3g} mm apart; resample it to "
            "a regular grid first"
        )
    uniform = (depth[-1] - depth[0]) / (len(depth) - 1)
    if np.max(np.abs(depth - (depth[0] + uniform * np.arange(len(depth))))) > SPACING_TOLERANCE * uniform:
        raise InputError(f"series {series.uid} in {folder} has slice positions that drift from a regular {uniform:.3g} "
                         "mm grid; resample it to a regular grid first")
    pixel = np.array([pixel_spacing[1], pixel_spacing[0]])  # (between columns, between rows)
    offsets = (positions - positions[0]) @ np.stack([row_dir, col_dir], axis=1)
    if np.max(np.abs(offsets) / pixel) > DRIFT_TOLERANCE:
        raise InputError(
            f"slices of series {series.uid} in {folder} are shifted in-plane from one to the next (gantry tilt or a "
            "sheared stack), which a regular volume cannot represent; correct the tilt (resample) first"
        )
    direction = np.stack([row_dir, col_dir, normal], axis=1)
    spacing = np.array([pixel[0], pixel[1], uniform])
    return objs, positions[0], spacing, direction


def _slice_pixels_hu(obj: DicomObject) -> np.ndarray:
    """One slice in HU (float32), rescaled with its own slope and intercept."""
    import pydicom  # imported on first use: loading pydicom takes a quarter second
    from pydicom.pixels import apply_modality_lut  # imported on first use, as pydicom above

    try:
        ds = pydicom.dcmread(obj.path)
        syntax = ds.file_meta.get("TransferSyntaxUID")
    except Exception as exc:
        raise InputError(f"cannot read the DICOM slice {obj.path} ({type(exc).__name__}); it looks corrupt or "
                         "truncated: replace it") from None
    try:
        return np.asarray(apply_modality_lut(ds.pixel_array, ds), dtype=np.float32)
    except Exception as exc:
        if syntax is None or not syntax.is_compressed:
            raise InputError(f"cannot decode the pixels of DICOM slice {obj.path} ({exc}); it looks corrupt or "
                             "truncated: replace it") from None
    return _slice_pixels_sitk(obj)


def _slice_pixels_sitk(obj: DicomObject) -> np.ndarray:
    """One slice in HU via SimpleITK/GDCM (which applies that file's own rescale)."""
    import SimpleITK as sitk  # imported on first use: loading SimpleITK takes a fifth of a second

    try:
        image = sitk.ReadImage(str(obj.path), sitk.sitkFloat32)
    except RuntimeError:
        raise InputError(f"cannot decode the pixels of DICOM slice {obj.path} (unsupported compression or a corrupt "
                         "file); replace it or convert the series to NIfTI") from None
    return sitk.GetArrayFromImage(image).reshape(image.GetHeight(), image.GetWidth())


def read_dicom_series(folder: str | os.PathLike, series_uid: str | None = None) -> Volume:
    """The CT series in `folder` (or the one named `series_uid`) as a float32 HU Volume in LPS."""
    folder = Path(folder)
    series = choose_ct_series(scan_dicom_folder(folder), folder, series_uid)
    slices, origin, spacing, direction = slice_geometry(series, folder)
    rows, columns = slices[0].rows, slices[0].columns
    if rows is None or columns is None:  # slice_geometry checked that all slices agree, not that Columns is there
        raise InputError(f"slice {slices[0].path} has no Rows or Columns; the series in {folder} cannot be stacked "
                         "into a volume")
    array = np.empty((len(slices), rows, columns), dtype=np.float32)
    for k, obj in enumerate(slices):
        pixels = _slice_pixels_hu(obj)
        if pixels.shape != array.shape[1:]:
            raise InputError(f"DICOM slice {obj.path} holds pixels of shape {pixels.shape}, not {array.shape[1:]} as "
                             "its header says; replace it")
        array[k] = pixels
    metadata = _series_metadata(slices)
    metadata.update(format="dicom", series_uid=series.uid, files=[str(o.path) for o in slices],
                    sop_instance_uids=[o.sop_instance_uid for o in slices])
    return Volume(array, origin=origin, spacing=spacing, direction=direction, source=str(folder), metadata=metadata)


def _series_metadata(slices: list[DicomObject]) -> dict:
    import pydicom  # imported on first use: loading pydicom takes a quarter second

    ds = pydicom.dcmread(slices[0].path, stop_before_pixels=True, specific_tags=HEADER_TAGS)
    names = {"StudyInstanceUID": "study_uid", "FrameOfReferenceUID": "frame_of_reference_uid",
             "PatientID": "patient_id", "SeriesDescription": "series_description", "Modality": "modality"}
    return {key: str(ds.get(tag, "")) for tag, key in names.items()}

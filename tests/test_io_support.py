"""Writers used by the io tests, independent of the reader under test: a CT series written with pydicom,
a NIfTI and an NRRD written byte by byte in RAS, and a synthetic volume with a blob at a known world point."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from scipy.spatial.transform import Rotation

from noduleclip.io.volume import Volume

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])


def blob_volume(shape=(16, 36, 34), spacing=(0.8, 0.65, 2.0), flip_k: bool = True, sigma_mm: float = 2.5) -> tuple[Volume, np.ndarray]:
    """Air (-1000 HU) with a Gaussian blob (peak +400) at a known LPS point; rotated direction, det -1 if flip_k."""
    direction = Rotation.from_euler("xyz", (12, -25, 33), degrees=True).as_matrix()
    if flip_k:
        direction = direction @ np.diag([1.0, 1.0, -1.0])
    volume = Volume(np.zeros(shape, np.float32), origin=(-31.5, 22.25, 140.0), spacing=spacing, direction=direction)
    center_index = np.array([shape[2] * 0.47, shape[1] * 0.53, shape[0] * 0.45])  # (i, j, k), off the voxel centres
    center = volume.index_to_world(center_index)
    k, j, i = np.indices(shape)
    world = volume.index_to_world(np.stack([i, j, k], axis=-1).reshape(-1, 3)).reshape(shape + (3,))
    r2 = np.sum((world - center) ** 2, axis=-1)
    volume.array = np.round(-1000.0 + 1400.0 * np.exp(-r2 / (2 * sigma_mm**2))).astype(np.float32)
    return volume, center


def blob_centroid(volume: Volume) -> np.ndarray:
    """Intensity-weighted LPS centroid of everything brighter than air."""
    weights = np.clip(np.asarray(volume.array, np.float64) + 1000.0, 0, None)
    kji = np.argwhere(weights > 0)
    w = weights[weights > 0]
    return volume.index_to_world((kji[:, ::-1] * w[:, None]).sum(axis=0) / w.sum())


def write_ct_series(volume: Volume, folder: Path, slopes=(1.0,), intercepts=(-1024.0,), series_uid: str | None = None,
                    study_uid: str | None = None, name_prefix: str = "") -> list[Path]:
    """Write `volume` as single-frame CT slices (one file per k, shuffled names), rescale varying per slice."""
    folder.mkdir(parents=True, exist_ok=True)
    series_uid = series_uid or generate_uid()
    study_uid = study_uid or generate_uid()
    frame_uid = generate_uid()
    nk, rows, cols = volume.array.shape
    names = np.random.default_rng(len(folder.name) + nk).permutation(nk)
    paths = []
    for k in range(nk):
        slope, intercept = slopes[k % len(slopes)], intercepts[k % len(intercepts)]
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID = CT_IMAGE_STORAGE
        ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.SOPClassUID, ds.SOPInstanceUID = CT_IMAGE_STORAGE, ds.file_meta.MediaStorageSOPInstanceUID
        ds.Modality, ds.PatientID = "CT", "SYNTH-1"
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study_uid, series_uid, frame_uid
        ds.InstanceNumber = k + 1
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.ImagePositionPatient = [f"{v:.6f}" for v in volume.index_to_world([0, 0, k])]
        ds.ImageOrientationPatient = [f"{v:.8f}" for v in np.concatenate([volume.direction[:, 0], volume.direction[:, 1]])]
        ds.PixelSpacing = [f"{volume.spacing[1]:.6f}", f"{volume.spacing[0]:.6f}"]  # (between rows, between columns)
        ds.SliceThickness = f"{volume.spacing[2]:.6f}"
        ds.Rows, ds.Columns = rows, cols
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleSlope, ds.RescaleIntercept = f"{slope:g}", f"{intercept:g}"
        stored = np.round((volume.array[k].astype(np.float64) - intercept) / slope).astype(np.int16)
        ds.PixelData = stored.tobytes()
        path = folder / f"{name_prefix}img{names[k]:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def write_non_image_object(path: Path, modality: str = "SR") -> Path:
    """A DICOM object without pixels (an SR-like or SEG-like file) to sit beside a series."""
    sop_class = {"SR": "1.2.840.10008.5.1.4.1.1.88.33", "SEG": "1.2.840.10008.5.1.4.1.1.66.4"}[modality]
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, ds.file_meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.SeriesInstanceUID, ds.StudyInstanceUID = modality, generate_uid(), generate_uid()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def write_nifti_ras(volume: Volume, path: Path) -> Path:
    """A NIfTI-1 file (float32, sform only) whose affine maps (i, j, k) to RAS, as NIfTI stores it."""
    ras = LPS_TO_RAS @ volume.index_to_world_matrix
    ras_origin = LPS_TO_RAS @ volume.origin
    nk, nj, ni = volume.array.shape
    header = bytearray(352)
    struct.pack_into("<i", header, 0, 348)
    struct.pack_into("<8h", header, 40, 3, ni, nj, nk, 1, 1, 1, 1)
    struct.pack_into("<hh", header, 70, 16, 32)  # float32
    struct.pack_into("<8f", header, 76, 1.0, *volume.spacing, 1, 1, 1, 1)
    struct.pack_into("<fff", header, 108, 352.0, 1.0, 0.0)  # vox_offset, scl_slope, scl_inter
    struct.pack_into("<B", header, 123, 2)  # mm
    struct.pack_into("<hh", header, 252, 0, 1)  # qform_code 0, sform_code 1 (scanner)
    for row in range(3):
        struct.pack_into("<4f", header, 280 + 16 * row, *ras[row], ras_origin[row])
    header[344:348] = b"n+1\x00"
    path.write_bytes(bytes(header) + np.ascontiguousarray(volume.array, dtype="<f4").tobytes())
    return path


def write_nrrd_ras(volume: Volume, path: Path) -> Path:
    """An NRRD file declaring the right-anterior-superior space (directions and origin in RAS)."""
    ras = LPS_TO_RAS @ volume.index_to_world_matrix
    origin = LPS_TO_RAS @ volume.origin
    vec = lambda v: "(" + ",".join(f"{x:.10g}" for x in v) + ")"  # noqa: E731
    nk, nj, ni = volume.array.shape
    header = (
        "NRRD0004\ntype: float\ndimension: 3\nspace: right-anterior-superior\n"
        f"sizes: {ni} {nj} {nk}\nspace directions: {vec(ras[:, 0])} {vec(ras[:, 1])} {vec(ras[:, 2])}\n"
        f"kinds: domain domain domain\nendian: little\nencoding: raw\nspace origin: {vec(origin)}\n\n"
    )
    path.write_bytes(header.encode() + np.ascontiguousarray(volume.array, dtype="<f4").tobytes())
    return path


def dicom_positions(folder: Path) -> dict[Path, float]:
    """Each slice's z (third ImagePositionPatient value), by file."""
    return {p: float(pydicom.dcmread(p, stop_before_pixels=True).ImagePositionPatient[2]) for p in sorted(folder.glob("*.dcm"))}

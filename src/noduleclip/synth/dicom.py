"""Write a synthetic CT as a DICOM series: one CT Image Storage file per slice.

Files carry a proper file meta header (Explicit VR Little Endian), the patient, study and series
modules, the frame of reference, the image plane (ImagePositionPatient, ImageOrientationPatient,
PixelSpacing, SliceThickness) and the CT image module (RescaleSlope/Intercept to HU). Half the
patients get 12-bit unsigned pixels (intercept -1024), the others signed 16-bit pixels with padding
outside the reconstruction circle, as different vendors write them. UIDs derive from the cohort's
seed and dates are fixed, so the same seed gives byte-identical files.

The elements that are the same on every slice are encoded once per series (`SliceEncoder`); each
file is the bytes pydicom's `save_as` writes for it, in less than half the time (`benchmarks/synth.py`).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import correct_ambiguous_vr_element, write_data_element, write_file_meta_info
from pydicom.tag import BaseTag, Tag
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, CTImageStorage, ExplicitVRLittleEndian, generate_uid

from noduleclip.synth.scanner import Scan

STUDY_EPOCH = dt.date(2020, 1, 6)


@dataclass
class SeriesIdentity:
    """Who and what the series belongs to; `uid_key` makes every UID deterministic."""

    patient_id: str
    uid_key: str
    index: int
    sex: str
    age: int
    contrast: bool = False
    description: str = "synthetic chest CT"


def _uid(key: str, *parts: object) -> str:
    return generate_uid(entropy_srcs=["noduleclip-synth", key, *map(str, parts)])


def _ds(values) -> list[str]:
    return [f"{float(v):.6f}".rstrip("0").rstrip(".") if abs(float(v)) > 1e-9 else "0" for v in values]


# what changes from slice to slice (besides the file meta's MediaStorageSOPInstanceUID)
SLICE_TAGS = tuple(Tag(name) for name in ("SOPInstanceUID", "AcquisitionTime", "ContentTime", "InstanceNumber",
                                          "ImagePositionPatient", "SliceLocation", "PixelData"))


class SliceEncoder:
    """Encodes the files of a series (Explicit VR Little Endian, no sequences) as `Dataset.save_as(path,
    enforce_file_format=True)` does, with the elements outside `varying` encoded once, from the first dataset."""

    def __init__(self, ds: Dataset, varying: tuple[BaseTag, ...] = SLICE_TAGS):
        self.encodings = ds.get("SpecificCharacterSet", "iso8859")
        self.parts: list[bytes | BaseTag] = []  # the dataset's elements in tag order: encoded, or to encode per slice
        for tag in sorted(ds.keys()):
            if tag.element == 0 and tag.group > 6:  # retired group lengths are not written
                continue
            part = tag if tag in varying else self.element(ds, tag)
            if isinstance(part, bytes) and self.parts and isinstance(self.parts[-1], bytes):
                self.parts[-1] += part
            else:
                self.parts.append(part)

    @staticmethod
    def _buffer() -> DicomBytesIO:
        fp = DicomBytesIO()
        fp.is_little_endian, fp.is_implicit_VR = True, False
        return fp

    def element(self, ds: Dataset, tag: BaseTag) -> bytes:
        fp = self._buffer()
        write_data_element(fp, correct_ambiguous_vr_element(ds[tag], ds, True), self.encodings)
        return bytes(fp.getvalue())

    def encode(self, ds: Dataset) -> bytes:
        """The whole file of `ds`, which differs from the first dataset only in the `varying` elements and the file
        meta."""
        fp = self._buffer()
        fp.write(b"\x00" * 128 + b"DICM")
        write_file_meta_info(fp, ds.file_meta, enforce_standard=True)
        head = bytes(fp.getvalue())
        return head + b"".join(part if isinstance(part, bytes) else self.element(ds, part) for part in self.parts)


def write_series(folder: Path, hu: np.ndarray, scan: Scan, who: SeriesIdentity) -> list[Path]:
    """Write the HU array (z, y, x) of `scan` as one DICOM file per slice into `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    study_uid, series_uid = _uid(who.uid_key, "study"), _uid(who.uid_key, "series")
    frame_uid = _uid(who.uid_key, "frame")
    date = STUDY_EPOCH + dt.timedelta(days=7 * who.index)
    birth = date.replace(year=date.year - who.age)
    stored = np.rint(hu) + 1024.0
    if scan.signed_pixels:
        pixels = np.clip(stored, -2000, 32767).astype(np.int16)
    else:
        pixels = np.clip(stored, 0, 4095).astype(np.uint16)
    row, col, normal = scan.direction[:, 0], scan.direction[:, 1], scan.direction[:, 2]
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    meta.ImplementationVersionName = f"PYDICOM {pydicom.__version__}"[:16]
    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = ""
    ds.StudyDate = ds.SeriesDate = ds.AcquisitionDate = ds.ContentDate = date.strftime("%Y%m%d")
    ds.StudyTime = ds.SeriesTime = ds.AcquisitionTime = ds.ContentTime = "093000"
    ds.AccessionNumber = f"SYN{who.index:06d}"
    ds.Modality = "CT"
    ds.Manufacturer = "noduleclip"
    ds.ManufacturerModelName = "synthetic chest CT"
    ds.InstitutionName = "synthetic cohort"
    ds.ReferringPhysicianName = ""
    ds.StudyDescription = "CT CHEST"
    ds.SeriesDescription = who.description
    ds.PatientName = f"SYNTHETIC^{who.patient_id}"
    ds.PatientID = who.patient_id
    ds.PatientBirthDate = birth.strftime("%Y%m%d")
    ds.PatientSex = who.sex
    ds.PatientAge = f"{who.age:03d}Y"
    ds.BodyPartExamined = "CHEST"
    ds.ScanOptions = "HELICAL MODE"
    ds.SliceThickness = _ds([scan.thickness])[0]
    ds.SpacingBetweenSlices = _ds([scan.thickness])[0]
    ds.KVP = "120"
    ds.DataCollectionDiameter = "500"
    ds.ReconstructionDiameter = _ds([scan.fov_mm])[0]
    ds.GantryDetectorTilt = _ds([scan.tilt_deg])[0]
    ds.XRayTubeCurrent = scan.tube_current_ma
    ds.ConvolutionKernel = scan.kernel_name
    ds.PatientPosition = scan.position
    if who.contrast:
        ds.ContrastBolusAgent = "IV CONTRAST"
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.StudyID = "1"
    ds.SeriesNumber = 2
    ds.AcquisitionNumber = 1
    ds.InstanceNumber = 1
    ds.ImagePositionPatient = _ds(scan.origin)
    ds.ImageOrientationPatient = _ds(np.concatenate([row, col]))
    ds.FrameOfReferenceUID = frame_uid
    ds.PositionReferenceIndicator = ""
    ds.SliceLocation = "0"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = int(hu.shape[1]), int(hu.shape[2])
    ds.PixelSpacing = _ds([scan.spacing[1], scan.spacing[0]])
    ds.BitsAllocated = 16
    if scan.signed_pixels:
        ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 15, 1
        ds.add_new(0x00280120, "SS", -2000)  # PixelPaddingValue
    else:
        ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 12, 11, 0
    ds.WindowCenter, ds.WindowWidth = "-600", "1600"
    ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = "-1024", "1", "HU"
    ds.PixelData = b""
    paths = []
    encoder = None
    for k in range(hu.shape[0]):  # one dataset, updated per slice
        sop_uid = _uid(who.uid_key, "slice", k)
        position = scan.origin + normal * scan.thickness * k
        meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = sop_uid
        ds.AcquisitionTime = ds.ContentTime = f"0930{k % 60:02d}"
        ds.InstanceNumber = k + 1
        ds.ImagePositionPatient = _ds(position)
        ds.SliceLocation = _ds([position[2]])[0]
        ds.PixelData = np.ascontiguousarray(pixels[k]).tobytes()
        path = folder / f"CT{k + 1:04d}.dcm"
        encoder = encoder or SliceEncoder(ds)
        path.write_bytes(encoder.encode(ds))
        paths.append(path)
    return paths

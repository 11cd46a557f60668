"""One reader for every CT format: DICOM series folders, NIfTI, MHA/MHD and NRRD, always returned in LPS.

File formats go through SimpleITK, which converts what the file stores (NIfTI's RAS, NRRD's declared
space) into the LPS patient frame; DICOM folders go through `noduleclip.io.dicom`. Masks are read the
same way (or from a DICOM SEG) and, given a reference volume, checked against or resampled onto its grid.
"""

from __future__ import annotations

import gzip
import os
import shutil
import struct
import tempfile
import zlib
from pathlib import Path

import numpy as np

from noduleclip.atomic import atomic_path
from noduleclip.errors import InputError
from noduleclip.io.dicom import SEGMENTATION_STORAGE, read_dicom_series, scan_dicom_folder
from noduleclip.io.volume import Volume

SINGLE_FILE_SUFFIXES = (".nii", ".nii.gz", ".mha", ".nrrd")
HEADER_DATA_SUFFIXES = (".mhd", ".nhdr")  # a header beside a separate data file
DICOM_SUFFIXES = (".dcm", ".dicom", ".ima")
FORMATS = "a DICOM series folder, NIfTI (.nii, .nii.gz), MHA/MHD or NRRD (.nrrd, .nhdr)"
NIFTI_FLOAT_TYPES = {16: "f4", 64: "f8"}  # NIfTI datatype codes whose voxels can be NaN or infinite
CHUNK_BYTES = 1 << 24
AIR_HU = -1000.0
AIR_LUNG_HU = -500.0  # air and lung lie below this, every other tissue above
MIN_AIR_LUNG_FRACTION = 0.02  # of the voxels less the padding: chest scans and LIDC lung crops have at least 12%
HU_SAMPLE_VOXELS = 2_000_000


def _suffix(path: Path) -> str:
    name = path.name.lower()
    return ".nii.gz" if name.endswith(".nii.gz") else path.suffix.lower()


def _existing(path: str | os.PathLike, what: str) -> Path:
    path = Path(path).expanduser()
    if not path.exists():
        raise InputError(f"{what} {path} does not exist; check the path")
    return path


def _is_dicom_file(path: Path) -> bool:
    if _suffix(path) in DICOM_SUFFIXES:
        return True
    with open(path, "rb") as fh:
        head = fh.read(132)
    return len(head) == 132 and head[128:] == b"DICM"


def _nifti_header(head: bytes, path: Path) -> tuple[np.dtype | None, int, int]:
    """(float voxel dtype or None, voxel data bytes, byte offset of the voxels) from a NIfTI-1 or NIfTI-2 header."""
    for order in "<>":
        size = struct.unpack(order + "i", head[:4])[0] if len(head) >= 4 else 0
        if size == 348 and len(head) >= 348:
            dims = struct.unpack(order + "8h", head[40:56])
            datatype, bitpix = struct.unpack(order + "2h", head[70:74])
            offset = max(int(struct.unpack(order + "f", head[108:112])[0]), 352)
            break
        if size == 540 and len(head) >= 540:
            datatype, bitpix = struct.unpack(order + "2h", head[12:16])
            dims = struct.unpack(order + "8q", head[16:80])
            offset = max(struct.unpack(order + "q", head[168:176])[0], 544)
            break
    else:
        raise InputError(f"{path} has no valid NIfTI header (it is truncated or not a NIfTI file); re-export or "
                         "re-copy it")
    count = int(np.prod([max(int(d), 1) for d in dims[1:1 + min(max(int(dims[0]), 1), 7)]]))
    dtype = np.dtype(order + NIFTI_FLOAT_TYPES[datatype]) if datatype in NIFTI_FLOAT_TYPES else None
    return dtype, count * (bitpix // 8), offset


def _scan_nifti_voxels(path: Path) -> np.ndarray | None:
    """Check that a NIfTI file holds every voxel byte its header declares, and return the flat mask of its NaN or
    infinite voxels (the NIfTI reader silently turns them into 0), or None when there are none."""
    compressed = _suffix(path) == ".nii.gz"
    got, nonfinite = 0, None
    try:
        with (gzip.open if compressed else open)(path, "rb") as fh:
            dtype, expected, offset = _nifti_header(fh.read(544), path)
            if dtype is None and not compressed:
                got = max(path.stat().st_size - offset, 0)
            else:
                fh.seek(offset)
                step = CHUNK_BYTES - CHUNK_BYTES % (dtype.itemsize if dtype else 1)
                while chunk := fh.read(step):
                    if dtype is not None and got < expected:
                        values = np.frombuffer(chunk, dtype, count=min(len(chunk), expected - got) // dtype.itemsize)
                        bad = ~np.isfinite(values)
                        if bad.any():
                            nonfinite = np.zeros(expected // dtype.itemsize, bool) if nonfinite is None else nonfinite
                            nonfinite[got // dtype.itemsize:got // dtype.itemsize + values.size] = bad
                    got += len(chunk)
    except (EOFError, gzip.BadGzipFile, zlib.error):
        raise InputError(f"the image file {path} is truncated (its compressed data ends early); re-export or re-copy "
                         "it") from None
    if got < expected:
        raise InputError(f"the image file {path} is truncated: it holds {got} of the {expected} voxel bytes its header "
                         f"declares; re-export or re-copy it")
    return nonfinite


def _read_image_file(path: Path):
    """A 3-D scalar SimpleITK image from a NIfTI/MHA/MHD/NRRD file, in its stored pixel type."""
    import SimpleITK as sitk  # imported on first use: loading SimpleITK takes a fifth of a second

    if _suffix(path) not in SINGLE_FILE_SUFFIXES + HEADER_DATA_SUFFIXES:
        raise InputError(f"{path} is not a format noduleclip reads; pass {FORMATS}")
    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as exc:
        if "orthonormal" in str(exc):
            raise InputError(f"{path} has a sheared (non-orthonormal) orientation, which a regular volume cannot "
                             "represent; resample it to an orthogonal grid") from None
        raise InputError(f"cannot read the image file {path} (corrupt, truncated or not a valid {_suffix(path)} file); "
                         "re-export or re-copy it") from None
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(f"{path} has {image.GetNumberOfComponentsPerPixel()} values per voxel (colour or vector "
                         "image); pass a single-channel CT volume")
    size = list(image.GetSize())
    if image.GetDimension() == 4 and size[3] == 1:
        image = image[:, :, :, 0]
        size = size[:3]
    if image.GetDimension() != 3:
        raise InputError(f"{path} is a {image.GetDimension()}-D image of size {size}; pass a single 3-D volume")
    if min(size) < 2:
        raise InputError(f"{path} holds a single slice (size {size}); a CT volume needs at least two slices along "
                         "every axis")
    return image


def _volume_from_image(image, path: Path) -> Volume:
    volume = Volume.from_sitk(image, source=str(path), metadata={"format": _suffix(path).lstrip(".")})
    if abs(np.linalg.det(volume.direction)) < 1e-6:
        raise InputError(f"{path} has a degenerate direction matrix {volume.direction.tolist()}; fix the file's "
                         "orientation")
    return volume


def _read_file_volume(path: Path) -> Volume:
    """A NIfTI/MHA/MHD/NRRD file as a Volume in its stored pixel type; a NIfTI's NaN voxels stay NaN as in other
    formats."""
    image = _read_image_file(path)
    nonfinite = _scan_nifti_voxels(path) if _suffix(path) in (".nii", ".nii.gz") else None
    volume = _volume_from_image(image, path)
    if nonfinite is not None:
        volume.array = volume.array.astype(np.float32, copy=False)
        volume.array[nonfinite.reshape(volume.array.shape)] = np.nan
    return volume


def read_volume(path: str | os.PathLike, series_uid: str | None = None) -> Volume:
    """Read a CT scan (DICOM series folder, NIfTI, MHA/MHD, NRRD) as float32 HU in the LPS frame."""
    path = _existing(path, "image")
    if path.is_dir():
        return read_dicom_series(path, series_uid)
    if series_uid is not None:
        raise InputError(f"a series UID (--series-uid or the manifest's series_uid column) only applies to DICOM "
                         f"folders, and {path} is a file; drop the series UID or pass the folder")
    if _is_dicom_file(path):
        raise InputError(f"{path} is a single DICOM file; pass the folder that holds the whole series")
    volume = _read_file_volume(path)
    volume.array = volume.array.astype(np.float32, copy=False)
    return volume


def write_volume(volume: Volume, path: str | os.PathLike, compress: bool = True) -> Path:
    """Write a Volume atomically as NIfTI (.nii/.nii.gz), MHA/MHD or NRRD/NHDR, keeping its LPS geometry."""
    import SimpleITK as sitk  # imported on first use: loading SimpleITK takes a fifth of a second

    path = Path(path)
    suffix = _suffix(path)
    if suffix not in SINGLE_FILE_SUFFIXES + HEADER_DATA_SUFFIXES:
        raise InputError(f"cannot write {path}: use a .nii, .nii.gz, .mha, .mhd, .nrrd or .nhdr name")
    array = volume.array.astype(np.uint8) if volume.array.dtype == bool else volume.array
    image = Volume(array, volume.origin, volume.spacing, volume.direction).to_sitk()
    if suffix in SINGLE_FILE_SUFFIXES:
        with atomic_path(path) as tmp:
            sitk.WriteImage(image, str(tmp), useCompression=compress)
        return path
    # Header + data file: write both under their final names in a staging folder, move data first.
    path.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=".staging-", dir=path.parent))
    try:
        sitk.WriteImage(image, str(stage / path.name), useCompression=compress)
        written = sorted(stage.iterdir(), key=lambda p: p.name == path.name)
        for item in written:
            os.replace(item, path.parent / item.name)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return path


def same_grid(a: Volume, b: Volume, tolerance_voxels: float = 0.01) -> bool:
    """True when two volumes share shape, spacing, direction and origin (to a small fraction of a voxel)."""
    if a.array.shape != b.array.shape or not np.allclose(a.direction, b.direction, atol=1e-4):
        return False
    if not np.allclose(a.spacing, b.spacing, rtol=1e-4):
        return False
    return bool(np.all(np.abs(b.world_to_index(a.origin)) <= tolerance_voxels))


def _resample_nearest(mask: Volume, reference: Volume) -> np.ndarray:
    import SimpleITK as sitk  # imported on first use: loading SimpleITK takes a fifth of a second

    resampler = sitk.ResampleImageFilter()
    resampler.SetSize([int(n) for n in reference.shape_ijk])
    resampler.SetOutputOrigin(tuple(reference.origin))
    resampler.SetOutputSpacing(tuple(reference.spacing))
    resampler.SetOutputDirection(tuple(reference.direction.ravel()))
    resampler.SetInterpolator(sitk.sitkNearestNeighbor)
    resampler.SetDefaultPixelValue(0)
    resampler.SetOutputPixelType(sitk.sitkUInt8)
    return sitk.GetArrayFromImage(resampler.Execute(mask.to_sitk()))


def _read_dicom_seg(path: Path) -> Volume:
    """A DICOM Segmentation object as a mask on its own frames' grid (all segments together)."""
    import highdicom as hd  # imported on first use: loading highdicom takes a third of a second

    try:
        seg = hd.seg.segread(path)
        hd_volume = seg.get_volume()
    except Exception as exc:
        raise InputError(f"cannot read the DICOM segmentation {path} as a volume ({type(exc).__name__}: {exc}); export "
                         "the mask as NIfTI instead") from None
    array = np.asarray(hd_volume.array)
    if array.ndim == 4:
        array = array.max(axis=-1)
    affine = np.asarray(hd_volume.affine, dtype=np.float64)
    # highdicom indexes (slice, row, column); Volume's direction columns are (i, j, k) = (column, row, slice).
    columns = affine[:3, [2, 1, 0]]
    spacing = np.linalg.norm(columns, axis=0)
    return Volume((array > 0).astype(np.uint8), origin=affine[:3, 3], spacing=spacing, direction=columns / spacing,
                  source=str(path), metadata={"format": "dicom-seg", "series_uid": str(seg.SeriesInstanceUID)})


def _dicom_seg_in(path: Path) -> Path:
    """The one DICOM SEG file at `path` (a file, or a folder holding exactly one)."""
    series = scan_dicom_folder(path) if path.is_dir() else []
    if path.is_file():
        import pydicom  # imported on first use: loading pydicom takes a quarter second

        ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["SOPClassUID"], force=True)
        if str(ds.get("SOPClassUID", "")) != SEGMENTATION_STORAGE:
            raise InputError(f"{path} is a DICOM file but not a DICOM Segmentation; pass a SEG object or a "
                             "NIfTI/MHA/NRRD mask")
        return path
    segs = [o.path for s in series for o in s.objects if o.sop_class_uid == SEGMENTATION_STORAGE]
    if len(segs) != 1:
        found = "none" if not segs else ", ".join(str(p) for p in segs)
        raise InputError(f"a mask folder must hold exactly one DICOM Segmentation, {path} holds {len(segs)} ({found}); "
                         "pass the SEG file itself")
    return segs[0]


def read_mask(path: str | os.PathLike, reference: Volume | None = None) -> Volume:
    """Read a segmentation (values > 0 are the mask) as a uint8 0/1 Volume, on `reference`'s grid when given."""
    path = _existing(path, "mask")
    if path.is_dir() or _is_dicom_file(path):
        mask = _read_dicom_seg(_dicom_seg_in(path))
    else:
        mask = _read_file_volume(path)
        mask.array = (mask.array > 0).astype(np.uint8)
    if reference is None or same_grid(mask, reference):
        if reference is not None:
            mask = Volume(mask.array, reference.origin, reference.spacing, reference.direction, mask.source,
                          mask.metadata)
        return mask
    resampled = _resample_nearest(mask, reference)
    if mask.array.any() and not resampled.any():
        raise InputError(f"the mask {path} does not overlap the image {reference.source or '(in memory)'}; check that "
                         "they belong to the same scan")
    metadata = dict(mask.metadata, resampled_from={"origin": mask.origin.tolist(), "spacing": mask.spacing.tolist(),
                                                   "shape": list(mask.array.shape)})
    return Volume(resampled, reference.origin, reference.spacing, reference.direction, str(path), metadata)


def _air_lung_problem(values: np.ndarray, low: float, where: str) -> str | None:
    """Why too few voxels lie in air and lung for a chest CT in HU, or None; the lowest value does not count when it is
    at or below air (the padding outside the field of view sits there). Judged on an evenly spaced sample of the
    voxels."""
    flat = values.reshape(-1)
    sample = flat[::max(1, flat.size // HU_SAMPLE_VOXELS)]
    body = sample[sample > low] if low <= AIR_HU else sample
    fraction = np.count_nonzero(body < AIR_LUNG_HU) / max(body.size, 1)
    if fraction >= MIN_AIR_LUNG_FRACTION:
        return None
    padding = (f"apart from its lowest value {low:g} ({1.0 - body.size / sample.size:.0%} of the voxels, the padding "
               f"outside the field of view) " if body.size < sample.size else "")
    darkest = f"{float(np.percentile(body, 1)):g}" if body.size else "nowhere"
    return (f"{where} does not look like CT in Hounsfield units: {padding}only {fraction:.1%} of its voxels fall below "
            f"{AIR_LUNG_HU:g} where air and lung lie, and its darkest tissue sits near {darkest} instead of -1000; "
            "check the scanner's rescale to HU (a RescaleIntercept of 0 where -1024 was meant shifts every value by "
            "+1024)")


def ct_hu_problem(volume: Volume) -> str | None:
    """Why `volume` does not look like CT in Hounsfield units, or None when it does."""
    where = volume.source or "the volume"
    values = np.asarray(volume.array)
    finite = np.isfinite(values)
    if not finite.all():
        bad = values.size - int(np.count_nonzero(finite))
        amount = "all its voxels are" if bad == values.size else f"{bad} of its {values.size} voxels are"
        return (f"{where} contains NaN or infinite values ({amount} NaN or infinite); a CT in HU has finite values "
                f"everywhere (fill them, e.g. with -1000)")
    low, high = float(values.min()), float(values.max())
    if low >= AIR_LUNG_HU:
        return (f"{where} does not look like CT in Hounsfield units: its values never fall below -500 (range {low:g} "
                f"to {high:g}) while air and lung are near -1000; apply the scanner's rescale to HU, or pass a CT scan")
    if high - low < 200:
        return (f"{where} does not look like CT in Hounsfield units: its values span only {low:g} to {high:g}; pass "
                "a CT scan")
    if low < -10000 or high > 40000:
        return (f"{where} does not look like CT in Hounsfield units: its values reach {low:g} to {high:g}; apply "
                "the scanner's rescale to HU")
    return _air_lung_problem(values, low, where)


def looks_like_ct(volume: Volume) -> bool:
    """True when the values are plausible CT Hounsfield units (air and lung below -500 inside the body, a real
    range)."""
    return ct_hu_problem(volume) is None


def check_looks_like_ct(volume: Volume) -> None:
    """Raise InputError with a clear reason when `volume` does not look like CT in Hounsfield units."""
    problem = ct_hu_problem(volume)
    if problem:
        raise InputError(problem)

"""Helpers shared by the test modules (a plain module, not a test module: pytest collects nothing here).

- synthetic volumes built in memory: `make_volume`, `add_sphere`, `blob_volume`, `blob_centroid`;
- writers independent of the readers under test: a CT series written with pydicom (`write_ct_series`), a
  DICOM object without pixels, a NIfTI and an NRRD written byte by byte in RAS;
- the real LIDC-IDRI-0001 nodule by hand from its XML (`lidc0001_nodule_center`);
- the tiny training cohort and options (`write_cohort`, `BASE`, `cli_args`) and run-folder readers
  (`read_rows`, `write_rows`, `comparable_log`, `assert_same_results`);
- the bad-input table of test_bad_inputs.py and test_bad_run_folders.py (`Case`, `full_ct`, `refusal`).

Test modules import these with `from helpers import ...`: pytest's default import mode puts tests/ (which has
no __init__.py) on sys.path, as it does for conftest.py.
"""

from __future__ import annotations

import csv
import json
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from scipy.ndimage import gaussian_filter
from scipy.spatial.transform import Rotation

from noduleclip.io.volume import Volume

REPO = Path(__file__).resolve().parents[1]


# -- synthetic volumes -------------------------------------------------------------------------------------

def make_volume(shape=(40, 90, 80), spacing=(0.8, 0.7, 2.0), angles=(10, -20, 30), seed=0,
                origin=(-40.0, 30.0, 100.0)) -> Volume:
    """A lung-like textured volume (HU) with anisotropic spacing and a rotated direction."""
    rng = np.random.default_rng(seed)
    texture = gaussian_filter(rng.normal(size=shape), 3)
    array = (-800 + texture / texture.std() * 150).astype(np.float32)
    direction = Rotation.from_euler("xyz", angles, degrees=True).as_matrix()
    return Volume(array, origin=origin, spacing=spacing, direction=direction)


def add_sphere(volume: Volume, center_lps, radius_mm: float, hu: float = 400.0) -> Volume:
    """Paint a sphere of `hu` at a world point (in place) and return the volume."""
    k, j, i = np.indices(volume.array.shape)
    world = volume.index_to_world(np.stack([i, j, k], axis=-1).reshape(-1, 3)).reshape(volume.array.shape + (3,))
    inside = np.linalg.norm(world - np.asarray(center_lps), axis=-1) <= radius_mm
    volume.array[inside] = hu
    return volume


def blob_volume(shape=(16, 36, 34), spacing=(0.8, 0.65, 2.0), flip_k: bool = True,
                sigma_mm: float = 2.5) -> tuple[Volume, np.ndarray]:
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


# -- image writers, independent of the readers under test -------------------------------------------------

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])


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
        ds = _dicom_object(CT_IMAGE_STORAGE)
        ds.Modality, ds.PatientID = "CT", "SYNTH-1"
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study_uid, series_uid, frame_uid
        ds.InstanceNumber = k + 1
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.ImagePositionPatient = [f"{v:.6f}" for v in volume.index_to_world([0, 0, k])]
        row_and_column = np.concatenate([volume.direction[:, 0], volume.direction[:, 1]])
        ds.ImageOrientationPatient = [f"{v:.8f}" for v in row_and_column]
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


def _dicom_object(sop_class: str) -> Dataset:
    """An empty DICOM object of `sop_class` with its file meta and a new SOP instance UID (explicit VR LE)."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, ds.file_meta.MediaStorageSOPInstanceUID
    return ds


def write_non_image_object(path: Path, modality: str = "SR") -> Path:
    """A DICOM object without pixels (an SR-like or SEG-like file) to sit beside a series."""
    sop_class = {"SR": "1.2.840.10008.5.1.4.1.1.88.33", "SEG": "1.2.840.10008.5.1.4.1.1.66.4"}[modality]
    ds = _dicom_object(sop_class)
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
    return {p: float(pydicom.dcmread(p, stop_before_pixels=True).ImagePositionPatient[2])
            for p in sorted(folder.glob("*.dcm"))}


# -- the real LIDC-IDRI-0001 nodule, by hand ----------------------------------------------------------------

def lidc0001_first_reader_contours(shared: Path) -> list[tuple[float, list[tuple[int, int]]]]:
    """Nodule 001 of the first reader in 069.xml: [(imageZposition, [(x_pixel, y_pixel), ...]), ...]."""
    import xml.etree.ElementTree as ET

    ns = {"l": "http://www.nih.gov"}
    root = ET.parse(shared / "lidc-idri-0001" / "069.xml").getroot()
    session = root.find("l:readingSession", ns)
    for nodule in session.findall("l:unblindedReadNodule", ns):
        if nodule.find("l:characteristics", ns) is None:
            continue
        rois = []
        for roi in nodule.findall("l:roi", ns):
            z = float(roi.find("l:imageZposition", ns).text)
            pts = [(int(e.find("l:xCoord", ns).text), int(e.find("l:yCoord", ns).text))
                   for e in roi.findall("l:edgeMap", ns)]
            rois.append((z, pts))
        return rois
    raise AssertionError("no characterised nodule for the first reader")


def lidc0001_nodule_center(shared: Path, volume) -> np.ndarray:
    """The first reader's nodule centre in LPS mm, by hand from its contour points and the series geometry."""
    points = []
    for z, pts in lidc0001_first_reader_contours(shared):
        zs = volume.index_to_world(np.array([[0, 0, k] for k in range(volume.array.shape[0])]))[:, 2]
        k = int(np.argmin(np.abs(zs - z)))
        assert abs(zs[k] - z) < 0.01, "contour z must match a slice"
        points += [volume.index_to_world([x, y, k]) for x, y in pts]
    return np.mean(points, axis=0)


# -- the tiny training cohort, options and run folders -------------------------------------------------------

# The settings of the session's shared tiny run (conftest.py `tiny_run`) and of most test trainings.
BASE = dict(backbone="tiny", folds=2, test_fraction=0.25, epochs=2, batch_size=4, bootstrap=50, threads=1,
            workers=0, progress=False)


def write_cohort(root: Path, patients: int = 16, seed: int = 0) -> Path:
    """Small CT-like volumes (32^3 at 2 mm) with one or two spheres each; malignant ones larger and denser.

    Patient p has nodule 0, malignant when p is even, and a benign nodule 1 when p is a multiple of 3; nodule
    P05-0 has no label and patient P07 is forced into the test set (`split` column)."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    k, j, i = np.indices((32, 32, 32))
    rows = []
    for p in range(patients):
        volume = rng.normal(-800, 40, (32, 32, 32))
        for n, centre in enumerate([(16, 12, 12), (16, 20, 22)][: 1 + (p % 3 == 0)]):
            malignant = p % 2 == 0 and n == 0
            radius = (4.0 if malignant else 2.0) + rng.uniform(-0.5, 0.5)
            volume[(k - centre[0]) ** 2 + (j - centre[1]) ** 2 + (i - centre[2]) ** 2 <= radius ** 2] = \
                40 if malignant else -350
            rows.append(dict(
                patient_id=f"P{p:02d}", nodule_id=f"P{p:02d}-{n}", image=f"p{p:02d}.nii.gz",
                coord_x=-32 + 2 * centre[2], coord_y=-32 + 2 * centre[1], coord_z=-32 + 2 * centre[0],
                label="" if (p, n) == (5, 0) else int(malignant),
                margins="spiculated" if malignant or rng.random() < 0.2 else "smooth",
                consistency=rng.choice(["solid", "pure ground glass"]),
                pleural_attachment="" if rng.random() < 0.3 else rng.choice(["present", "absent"]),
                long_diameter_mm=round(4 * radius, 1), split="test" if p == 7 else ""))
        image = sitk.GetImageFromArray(volume.astype(np.int16))
        image.SetSpacing((2.0, 2.0, 2.0))
        image.SetOrigin((-32.0, -32.0, -32.0))
        sitk.WriteImage(image, str(root / f"p{p:02d}.nii.gz"))
    return write_rows(root / "manifest.csv", rows)


def read_rows(path: Path) -> list[dict]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def write_rows(path: Path, rows: list[dict]) -> Path:
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def read_log(run: Path) -> list[dict]:
    """The entries of a run's log.jsonl."""
    return [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]


def comparable_log(run: Path) -> list[dict]:
    """log.jsonl without the wall times, which differ between equal runs."""
    return [{k: v for k, v in e.items() if k != "seconds"} for e in read_log(run)]


def assert_same_results(run: Path, other: Path) -> None:
    for name in ("splits.csv", "predictions.csv", "val_predictions.csv", "patient_predictions.csv", "metrics.json"):
        assert (run / name).read_text() == (other / name).read_text(), name
    assert comparable_log(run) == comparable_log(other)


def cli_args(manifest, run, cache, **overrides) -> list[str]:
    """`noduleclip train` arguments for BASE changed by `overrides` (None leaves an option out)."""
    options = {**BASE, "cache": cache, **overrides}
    args = ["train", str(manifest), "--out", str(run)]
    for name, value in options.items():
        if value is None:
            continue
        flag = "--" + name.replace("_", "-")
        args += ([flag] if value else [f"--no-{flag[2:]}"]) if isinstance(value, bool) else [flag, str(value)]
    return args


def tree_state(root: Path) -> dict[str, tuple[int, int]]:
    """(size, mtime in ns) of every file under `root`, by relative path: equal before and after means untouched."""
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(root.rglob("*")) if p.is_file()}


# -- the bad-input table (test_bad_inputs.py, test_bad_run_folders.py) --------------------------------------

def full_ct(tmp_path: Path, name: str = "scan.nii.gz") -> Path:
    """A CT-like scan of 320 x 320 x 100 mm (64 x 64 x 20 voxels of 5 mm): a scan, not a nodule crop."""
    from noduleclip.io import write_volume

    return write_volume(make_volume(shape=(20, 64, 64), spacing=(5.0, 5.0, 5.0), angles=(0, 0, 0)), tmp_path / name)


@dataclass(frozen=True)
class Case:
    build: Callable  # tmp_path (and the shared data folder) -> the input given to `call` or to the command
    words: tuple[str, ...]
    call: Callable[[Path], None] | None = None  # raises InputError; or else
    command: tuple[str, ...] = ()  # CLI arguments, INPUT and OUT replaced by the input and the --out folder
    status: int = 2  # the command's exit status
    absent: tuple[str, ...] = ()
    shared: bool = False  # the input is built from ../shared/data


def produced(out: Path) -> list[Path]:
    """Files a command left under --out, except the cache's settings file (written before any scan is read)."""
    return [p for p in out.rglob("*") if p.is_file() and p.name != "cache.json"] if out.exists() else []


def refusal(case: Case, built: Path, tmp_path: Path, capsys) -> str:
    """The one-sentence refusal of a case: its InputError, or the single error line of its command (which must exit
    with the case's status and leave --out without results). INPUT, SCAN and OUT in the command are filled in."""
    from noduleclip.cli import main
    from noduleclip.errors import InputError

    if case.call is not None:
        with pytest.raises(InputError) as err:
            case.call(built)
        return str(err.value)
    out = tmp_path / "out"
    fill = {"INPUT": str(built), "SCAN": str(tmp_path / "scan.nii.gz")}
    argv = [fill.get(a, a.replace("OUT", str(out))) for a in case.command]
    assert main(argv) == case.status
    lines = [line for line in capsys.readouterr().err.splitlines() if "error:" in line or line.startswith("failed ")]
    assert len(lines) == 1, lines
    assert produced(out) == []
    return lines[0]


# -- metrics by hand ------------------------------------------------------------------------------------------

def feature_auroc_by_hand(values, probabilities, truth: list[str]) -> float | None:
    """A feature's zero-shot AUROC without the package: P(present) for a present/absent feature, else each
    occurring class's one-vs-rest AUROC of its own probability column, weighted by the class counts. `values`
    name the probability columns, `truth` holds each case's value ("" or None: unknown, left out)."""
    from sklearn.metrics import roc_auc_score

    values = list(values)
    known = [i for i, v in enumerate(truth) if v]
    y, p = np.array([truth[i] for i in known]), np.asarray(probabilities)[known]
    if len(set(y)) < 2:
        return None
    if set(values) == {"present", "absent"}:
        return float(roc_auc_score(y == "present", p[:, values.index("present")]))
    return float(sum((y == c).sum() * roc_auc_score(y == c, p[:, values.index(c)]) for c in set(y)) / len(y))


def delong_p(labels, a, b) -> float:
    """DeLong's two-sided p for equal AUROCs of two scores of the same cases (labels 1/0), from placement values."""
    from scipy import stats

    labels, a, b = np.asarray(labels), np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    pos, neg = labels == 1, labels == 0

    def placements(s):
        psi = (s[pos][:, None] > s[neg][None, :]) + 0.5 * (s[pos][:, None] == s[neg][None, :])
        return psi.mean(axis=1), psi.mean(axis=0), psi.mean()

    (xa, ya, auc_a), (xb, yb, auc_b) = placements(a), placements(b)
    cov = np.cov(np.vstack([xa, xb])) / pos.sum() + np.cov(np.vstack([ya, yb])) / neg.sum()
    return float(2 * stats.norm.sf(abs(auc_a - auc_b) / np.sqrt(cov[0, 0] + cov[1, 1] - 2 * cov[0, 1])))


def write_sphere_scans(root: Path) -> Path:
    """A manifest of four nodules in two flat -800 HU scans (0.7 x 0.7 x 1.25 mm and 1 x 1 x 2.5 mm) with a 5 mm
    sphere of 50 HU at the origin: one nodule there, one beside it, in each scan (NIfTI, int16)."""
    rows = ["patient_id,nodule_id,image,coord_x,coord_y,coord_z,label"]
    for p, spacing in enumerate([(0.7, 0.7, 1.25), (1.0, 1.0, 2.5)]):
        volume = Volume(np.full((60, 90, 90), -800.0, dtype=np.float32), origin=(-30.0, -30.0, -60.0),
                        spacing=spacing)
        add_sphere(volume, (0.0, 0.0, 0.0), 5.0, hu=50.0)
        image = sitk.GetImageFromArray(volume.array.astype(np.int16))
        image.SetSpacing(spacing)
        image.SetOrigin(tuple(volume.origin))
        sitk.WriteImage(image, str(root / f"p{p}.nii.gz"))
        rows += [f"P{p},P{p}-a,p{p}.nii.gz,0,0,0,1", f"P{p},P{p}-b,p{p}.nii.gz,5,3,-2,0"]
    (root / "m.csv").write_text("\n".join(rows) + "\n")
    return root / "m.csv"


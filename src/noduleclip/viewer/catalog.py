"""What the viewer may open: the CT series and image files under its root folder, and the nodules manifests mark.

Only paths under the root are served: a name given by the browser is refused when it is absolute, holds `..`,
or resolves (through a symbolic link) outside the root. A DICOM folder is read only when every file in it lies
under the root, and an MHD/NHDR header only when its data file does. DICOM series are found with
`noduleclip.io.dicom.scan_dicom_folder`, the scan `read_volume` uses; image files by their suffix.

A manifest is any CSV under the root with `patient_id, nodule_id, image` columns (`NoduleManifest`); its rows
whose `image` is an open scan (and `series_uid`, where given, its series) are marked on their slices.
"""

from __future__ import annotations

import csv
import os
import re
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from noduleclip.data.manifest import REQUIRED, NoduleManifest, NoduleRecord
from noduleclip.errors import InputError, NoduleClipError
from noduleclip.io.dicom import scan_dicom_folder

IMAGE_SUFFIXES = (".nii.gz", ".nii", ".mha", ".mhd", ".nrrd", ".nhdr")
DICOM_SUFFIXES = (".dcm", ".dicom", ".ima")
SKIPPED_SUFFIXES = IMAGE_SUFFIXES + (".raw", ".zraw", ".csv", ".json", ".txt", ".md", ".png", ".jpg", ".html",
                                     ".xml", ".gz", ".zip", ".tar", ".npz", ".npy", ".safetensors", ".py")


class Refused(InputError):
    """A path the viewer will not open: outside its root, absolute, or through `..`."""

    status = 403


class NotFound(InputError):
    """A scan, series or nodule that is not there."""

    status = 404


def image_suffix(name: str) -> str | None:
    lower = name.lower()
    return next((s for s in IMAGE_SUFFIXES if lower.endswith(s)), None)


def _inside(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


def safe_path(root: Path, name: str) -> Path:
    """`name` (relative, with / separators) under `root`, resolved; Refused when it could lead outside."""
    if not isinstance(name, str) or not name.strip():
        raise Refused("no scan named; give the scan's path relative to the viewer's root folder")
    if "\x00" in name or "\\" in name:
        raise Refused(f"the path {name!r} holds a character paths under the root do not use; give the path as listed")
    pure = PurePosixPath(name)
    if pure.is_absolute() or re.match(r"^[A-Za-z]:", name):
        raise Refused(f"the path {name!r} is absolute; the viewer opens only paths relative to its root folder")
    if ".." in pure.parts:
        raise Refused(f"the path {name!r} climbs out with '..'; the viewer opens only files under its root folder")
    path = (root / pure).resolve()
    if not _inside(path, root):
        raise Refused(f"the path {name!r} leads outside the viewer's root folder (through a symbolic link); "
                      "only files under the root can be opened")
    if not path.exists():
        raise NotFound(f"{name} does not exist under the viewer's root folder; pick a scan from the list")
    return path


def _header_data_file(header: Path) -> str | None:
    """The data file an MHD (ElementDataFile) or NHDR (data file) header names, or None when the data is inline."""
    try:
        text = header.read_bytes()[:65536].decode("latin-1")
    except OSError:
        return None
    pattern = r"^\s*ElementDataFile\s*=\s*(.+?)\s*$" if header.suffix.lower() == ".mhd" \
        else r"^\s*data\s?file\s*:\s*(.+?)\s*$"
    match = re.search(pattern, text, re.MULTILINE | re.IGNORECASE)
    if match is None or match.group(1).upper() == "LOCAL":
        return None
    return match.group(1)


def check_contained(root: Path, path: Path, name: str) -> None:
    """Refuse a scan whose files (a DICOM folder's slices, a header's data file) lie outside the root."""
    if path.is_dir():
        for folder, dirs, files in os.walk(path):
            dirs[:] = [d for d in dirs if not d.startswith(".")]
            for item in files:
                if not _inside((Path(folder) / item).resolve(), root):
                    raise Refused(f"{name} holds {Path(folder, item).relative_to(path)}, a link to a file outside the "
                                  "viewer's root folder; only files under the root can be opened")
    elif path.suffix.lower() in (".mhd", ".nhdr"):
        data = _header_data_file(path)
        if data is not None:
            if "%" in data or data.upper().startswith("LIST"):
                raise Refused(f"{name} names its data files by a pattern or a list ({data}); the viewer opens only a "
                              "header whose one data file it can check")
            if not _inside((path.parent / data).resolve(), root):
                raise Refused(f"{name} reads its voxels from {data}, outside the viewer's root folder; only files "
                              "under the root can be opened")


@dataclass
class ScanEntry:
    """One openable scan: an image file or one CT series of a DICOM folder."""

    path: str  # relative to the root, / separators
    series_uid: str | None
    kind: str  # dicom, nii.gz, nii, mha, mhd, nrrd, nhdr
    label: str
    files: int = 1
    nodules: int = 0  # marked by a manifest

    @property
    def key(self) -> tuple[str, str]:
        return self.path, self.series_uid or ""

    def to_dict(self) -> dict:
        return {"path": self.path, "series_uid": self.series_uid, "kind": self.kind, "label": self.label,
                "files": self.files, "nodules": self.nodules}


@dataclass
class MarkedNodule:
    """A nodule a manifest gives for a scan: its id, the manifest and its row (the centre, or the mask whose
    centroid is taken when the scan is opened)."""

    manifest: str
    record: NoduleRecord

    @property
    def nodule_id(self) -> str:
        return self.record.nodule_id

    @property
    def label(self) -> int | None:
        return self.record.label


@dataclass
class Catalog:
    """The scans and manifests found under the root, and what could not be listed (with the reason)."""

    root: Path
    scans: list[ScanEntry] = field(default_factory=list)
    problems: list[dict] = field(default_factory=list)
    manifests: list[Path] = field(default_factory=list)

    def find(self, path: str, series_uid: str | None) -> ScanEntry | None:
        """The listed scan at `path` (of series `series_uid`; without one, the folder's only CT series)."""
        here = [s for s in self.scans if s.path == path]
        if series_uid:
            return next((s for s in here if s.series_uid == series_uid), None)
        return here[0] if len(here) == 1 else None


def _looks_dicom(path: Path) -> bool:
    if path.suffix.lower() in DICOM_SUFFIXES:
        return True
    if image_suffix(path.name) or path.suffix.lower() in SKIPPED_SUFFIXES:
        return False
    try:
        with open(path, "rb") as handle:
            head = handle.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:] == b"DICM"


def _is_manifest(path: Path) -> bool:
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            header = next(csv.reader(handle), [])
    except (OSError, UnicodeDecodeError, csv.Error):
        return False
    return all(column in [h.strip() for h in header] for column in REQUIRED)


def _series_label(series, relative: str) -> str:
    import pydicom  # imported on first use: loading pydicom takes a quarter second

    try:
        ds = pydicom.dcmread(series.objects[0].path, stop_before_pixels=True,
                             specific_tags=["SeriesDescription", "PatientID", "SeriesNumber"])
        words = [str(ds.get("PatientID", "")), str(ds.get("SeriesDescription", ""))]
    except Exception:
        words = []
    detail = " ".join(w for w in words if w) or f"series {series.uid[-12:]}"
    return f"{relative or '.'}  ({detail}, {len(series.objects)} slices)"


def scan_root(root: Path) -> Catalog:
    """Every CT series and image file under `root` (symbolic links leading outside are left out), and the
    manifests there."""
    catalog = Catalog(root)
    seen_series: set[str] = set()
    for folder, dirs, files in os.walk(root):
        here = Path(folder)
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and _inside((here / d).resolve(), root))
        relative_folder = here.relative_to(root).as_posix()
        relative_folder = "" if relative_folder == "." else relative_folder
        dicom = False
        for name in sorted(files):
            path = here / name
            if name.startswith(".") or not _inside(path.resolve(), root):
                continue
            relative = f"{relative_folder}/{name}" if relative_folder else name
            suffix = image_suffix(name)
            if suffix is not None:
                catalog.scans.append(ScanEntry(relative, None, suffix.lstrip("."), relative))
            elif name.lower().endswith(".csv"):
                if _is_manifest(path):
                    catalog.manifests.append(path)
            elif not dicom and _looks_dicom(path):
                dicom = True
        if not dicom:
            continue
        try:
            check_contained(root, here, relative_folder or ".")  # no header outside the root is read
            found = scan_dicom_folder(here)
        except NoduleClipError as exc:
            catalog.problems.append({"path": relative_folder or ".", "error": str(exc)})
            continue
        for series in found:
            if not series.is_ct_image or series.uid in seen_series:
                continue
            seen_series.add(series.uid)
            catalog.scans.append(ScanEntry(relative_folder, series.uid, "dicom",
                                           _series_label(series, relative_folder), files=len(series.objects)))
    catalog.scans.sort(key=lambda s: (s.path, s.series_uid or ""))
    for entry in catalog.scans:
        entry.nodules = len(marked_nodules(catalog, entry))
    return catalog


def marked_nodules(catalog: Catalog, entry: ScanEntry) -> list[MarkedNodule]:
    """The nodules the root's manifests give for this scan (manifests that fail to read are noted as problems)."""
    target = (catalog.root / entry.path).resolve()
    out: list[MarkedNodule] = []
    for manifest_path in catalog.manifests:
        try:
            manifest = NoduleManifest.read(manifest_path)
        except NoduleClipError as exc:
            problem = {"path": manifest_path.relative_to(catalog.root).as_posix(), "error": str(exc)}
            if problem not in catalog.problems:
                catalog.problems.append(problem)
            continue
        name = manifest_path.relative_to(catalog.root).as_posix()
        for record in manifest:
            if record.image.resolve() != target:
                continue
            uid = record.columns.get("series_uid", "").strip()
            if entry.series_uid and uid and uid != entry.series_uid:
                continue
            mask = record.mask.resolve() if record.mask is not None else None
            if record.coord is None and (mask is None or not _inside(mask, catalog.root)):
                continue  # a crop without a centre, or a mask outside the root: nothing to mark
            out.append(MarkedNodule(name, record))
    return out

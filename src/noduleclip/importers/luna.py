"""A LUNA16-style nodule list + a folder of scans -> a nodule manifest.

The list has `seriesuid, coordX, coordY, coordZ` (world mm, LPS, as LUNA16's annotations.csv) and
optionally `diameter_mm` and `class` or `label`. Scans are found under the images folder (searched
recursively) as `<seriesuid>.mhd/.mha/.nii/.nii.gz/.nrrd` files or as DICOM series folders named
`<seriesuid>`. `patient_id` is the DICOM PatientID when the scan is a DICOM folder, else the seriesuid.
`label` comes from a `label` column, else from `class`; for a LUNA16 candidates list
(`candidates=True`) `class` means nodule (1) or not (0): only nodules are kept and the label is unknown.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from noduleclip.data.manifest import NoduleManifest
from noduleclip.errors import InputError
from noduleclip.importers.crops import parse_label, path_for_manifest, read_table
from noduleclip.semantics.schema import is_blank

IMAGE_SUFFIXES = (".nii.gz", ".nii", ".mhd", ".mha", ".nrrd")
LUNA_COLUMNS = {"seriesuid": ("seriesuid", "series_uid", "seriesinstanceuid"),
                "coord_x": ("coordx", "coord_x"), "coord_y": ("coordy", "coord_y"), "coord_z": ("coordz", "coord_z"),
                "diameter_mm": ("diameter_mm", "diameter")}


@dataclass
class LunaReport:
    nodules: int = 0
    scans: int = 0
    missing: dict[str, int] = field(default_factory=dict)  # seriesuid -> rows left out
    not_nodules: int = 0
    labels: Counter = field(default_factory=Counter)

    def summary(self) -> str:
        missing = sum(self.missing.values())
        firsts = ", ".join(list(self.missing)[:3])
        text = (f"{self.nodules} nodules from {self.scans} scans ({self.labels[1]} malignant, {self.labels[0]} benign, "
                f"{self.labels[None]} unknown)")
        if self.not_nodules:
            text += f"; {self.not_nodules} non-nodule candidates left out"
        if missing:
            more = ", ..." if len(self.missing) > 3 else ""
            text += f"; {missing} rows of {len(self.missing)} series without a scan left out ({firsts}{more})"
        return text


def index_scans(folder: Path) -> dict[str, Path]:
    """Scans under `folder` by series UID: image files by name (suffix removed) and folders by name."""
    found: dict[str, Path] = {}
    for root, dirs, files in os.walk(folder):
        dirs.sort()
        for name in sorted(files):
            suffix = next((s for s in IMAGE_SUFFIXES if name.lower().endswith(s)), None)
            if suffix:
                found.setdefault(name[: -len(suffix)], Path(root) / name)
        for name in dirs:
            found.setdefault(name, Path(root) / name)
    return found


def _dicom_patient_id(folder: Path) -> str | None:
    """PatientID of the first readable DICOM file in a folder, if any."""
    import pydicom  # imported on first use: loading pydicom takes a quarter second

    for root, _, files in os.walk(folder):
        for name in sorted(files):
            try:
                ds = pydicom.dcmread(Path(root) / name, stop_before_pixels=True, specific_tags=["PatientID"])
            except Exception:
                continue
            if str(ds.get("PatientID", "")).strip():
                return str(ds.PatientID).strip()
    return None


def import_luna(annotations, images, out, candidates: bool = False) -> LunaReport:
    """Write a manifest for a LUNA16-style list; rows whose scan is missing are left out and reported."""
    path, header, rows = read_table(annotations, "annotation list")
    images = Path(images).expanduser()
    if not images.is_dir():
        raise InputError(f"images folder {images} is not a folder; pass the folder that holds the scans")
    columns = {name: next((a for a in aliases if a in header), None) for name, aliases in LUNA_COLUMNS.items()}
    missing = [name for name in ("seriesuid", "coord_x", "coord_y", "coord_z") if columns[name] is None]
    if missing:
        raise InputError(f"annotation list {path} lacks {', '.join(missing)}; it needs seriesuid,coordX,coordY,coordZ "
                         f"(found {', '.join(header)})")
    label_column = "label" if "label" in header else ("class" if "class" in header and not candidates else None)
    if candidates and "class" not in header:
        raise InputError(f"annotation list {path} has no class column, which a candidates list needs; "
                         "drop --candidates")
    scans, patients = index_scans(images), {}
    report, out_rows, per_series = LunaReport(), [], Counter()
    for n, row in enumerate(rows, start=2):
        where = f"{path.name} row {n}"
        uid = row[columns["seriesuid"]]
        if is_blank(uid):
            raise InputError(f"{where}, column {columns['seriesuid']!r}: the series UID is empty")
        coords = {}
        for name in ("coord_x", "coord_y", "coord_z", "diameter_mm"):
            if columns[name] is None or (name == "diameter_mm" and is_blank(row[columns[name]])):
                continue
            try:
                coords[name] = float(row[columns[name]])
            except ValueError:
                raise InputError(f"{where}, column {columns[name]!r}: {row[columns[name]]!r} is not a number "
                                 "(mm)") from None
        if candidates and parse_label(row["class"], where, "class") != 1:
            report.not_nodules += 1
            continue
        label = parse_label(row[label_column], where, label_column) if label_column else None
        if uid not in scans:
            report.missing[uid] = report.missing.get(uid, 0) + 1
            continue
        if uid not in patients:
            patients[uid] = (_dicom_patient_id(scans[uid]) if scans[uid].is_dir() else None) or uid
        per_series[uid] += 1
        out_rows.append({"patient_id": patients[uid], "nodule_id": f"{uid}_N{per_series[uid]:02d}",
                         "image": path_for_manifest(scans[uid], out), "label": label, "series_uid": uid} | coords)
        report.labels[label] += 1
    if not out_rows and not report.missing:
        raise InputError(f"none of the {len(rows)} rows of {path} is a nodule (class 1); check the list or drop "
                         "--candidates")
    if not out_rows:
        raise InputError(f"none of the {len(rows)} rows of {path} has a scan under {images} "
                         f"(looked for <seriesuid>{{{','.join(IMAGE_SUFFIXES)}}} files or <seriesuid> folders)")
    report.nodules, report.scans = len(out_rows), len(per_series)
    NoduleManifest.write(out, out_rows)
    return report

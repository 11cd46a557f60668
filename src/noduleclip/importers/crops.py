"""A folder of nodule crops with a CSV (LIDC or schema columns) -> a nodule manifest.

Each row names one crop (NIfTI/MHA/NRRD; relative paths resolve against the CSV's folder) and its
patient. Given coordinates are kept (they must fall inside the crop); without them, or with
`crop_centre=True`, the centre of the crop (or the centroid of its mask) is the nodule centre. LIDC
integer columns and schema feature columns are checked and kept; `label` comes from a label column,
else from the LIDC malignancy grade by the same thresholds as the LIDC importer, else is unknown.
"""

from __future__ import annotations

import csv
import os
from collections import Counter
from pathlib import Path

from noduleclip.data.manifest import COORDS, NoduleManifest
from noduleclip.errors import InputError
from noduleclip.importers.lidc_xml import LidcConfig, label_from_malignancy
from noduleclip.semantics.lidc import parse_lidc_grade
from noduleclip.semantics.parse import parse_features
from noduleclip.semantics.schema import is_blank

ALIASES = {
    "patient_id": ("patient_id", "pid", "patient", "patientid"),
    "nodule_id": ("nodule_id", "noduleid", "nodule"),
    "image": ("image", "crop", "image_path", "path", "file"),
    "coord_x": ("coord_x", "coordx"), "coord_y": ("coord_y", "coordy"), "coord_z": ("coord_z", "coordz"),
}
LABEL_WORDS = {"1": 1, "1.0": 1, "malignant": 1, "0": 0, "0.0": 0, "benign": 0}


def path_for_manifest(path: str | os.PathLike, manifest: str | os.PathLike) -> str:
    """`path` relative to the manifest's folder when it lies inside that folder, else absolute (POSIX)."""
    path = Path(os.path.abspath(Path(path).expanduser()))
    base = Path(os.path.abspath(Path(manifest).expanduser())).parent
    try:
        return path.relative_to(base).as_posix()
    except ValueError:
        return path.as_posix()


def read_table(path: str | os.PathLike, what: str) -> tuple[Path, list[str], list[dict[str, str]]]:
    """A CSV's path, lower-cased header and rows (cells stripped); InputError when it cannot be used."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise InputError(f"{what} {path} does not exist or is not a file; give the path of the CSV")
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            header = [(h or "").strip().lower() for h in reader.fieldnames or []]
            rows = [{(k or "").strip().lower(): (v or "").strip() for k, v in r.items() if k is not None}
                    for r in reader]
    except (UnicodeDecodeError, csv.Error) as exc:
        raise InputError(f"{what} {path} is not a readable CSV file ({exc}); save it as UTF-8 CSV") from None
    if not rows:
        raise InputError(f"{what} {path} has no rows; it needs a header and one row per nodule")
    return path, header, rows


def find_column(header: list[str], name: str, aliases: dict = ALIASES) -> str | None:
    return next((c for c in aliases.get(name, (name,)) if c in header), None)


def parse_label(raw: str, where: str, column: str = "label") -> int | None:
    if is_blank(raw):
        return None
    if raw.strip().lower() not in LABEL_WORDS:
        raise InputError(f"{where}, column {column!r}: {raw!r} is not 1 (malignant), 0 (benign) or empty (unknown)")
    return LABEL_WORDS[raw.strip().lower()]


def existing_file(raw: str, base: Path, where: str, column: str) -> Path:
    path = Path(raw).expanduser()
    path = path if path.is_absolute() else base / path
    if not path.exists():
        raise InputError(f"{where}, column {column!r}: {path} does not exist; fix the path (relative paths start at "
                         "the CSV's folder)")
    return path


def _coordinates(values: list[str], columns: list[str], where: str) -> dict[str, float]:
    """The three coordinates of a row (all or none), as floats."""
    if all(is_blank(v) for v in values):
        return {}
    for value, column in zip(values, columns, strict=True):
        try:
            float(value)
        except ValueError:
            raise InputError(f"{where}, column {column!r}: {value!r} is not a number (world mm, LPS); "
                             "give all three coordinates or none") from None
    return dict(zip(COORDS, (float(v) for v in values), strict=True))


def import_crops(csv_path, out, config: LidcConfig | None = None, crop_centre: bool = False) -> Counter:
    """Write a manifest for a crop CSV; returns the label counts. Any bad row raises InputError naming it."""
    config = config or LidcConfig()
    path, header, rows = read_table(csv_path, "crop table")
    columns = {name: find_column(header, name) for name in ALIASES}
    if columns["patient_id"] is None or columns["image"] is None:
        raise InputError(f"crop table {path} needs a patient_id and an image column (found {', '.join(header)})")
    coord_columns = [columns[c] for c in COORDS]
    if any(coord_columns) and not all(coord_columns):
        raise InputError(f"crop table {path} has only some of coord_x, coord_y, coord_z; give all three or none")
    used = {c for c in columns.values() if c}
    out_rows, seen, labels = [], {}, Counter()
    for n, row in enumerate(rows, start=2):
        where = f"{path.name} row {n}"
        if is_blank(row[columns["patient_id"]]):
            raise InputError(f"{where}, column {columns['patient_id']!r}: the patient id is empty")
        if is_blank(row[columns["image"]]):
            raise InputError(f"{where}, column {columns['image']!r}: the crop path is empty")
        image = existing_file(row[columns["image"]], path.parent, where, columns["image"])
        nodule_id = row[columns["nodule_id"]] if columns["nodule_id"] else image.name.split(".")[0]
        if is_blank(nodule_id):
            raise InputError(f"{where}, column {columns['nodule_id']!r}: the nodule id is empty")
        if nodule_id in seen:
            raise InputError(f"{where}: nodule id {nodule_id!r} repeats row {seen[nodule_id]}; "
                             "nodule ids must be unique")
        seen[nodule_id] = n
        out_row = {"patient_id": row[columns["patient_id"]], "nodule_id": nodule_id,
                   "image": path_for_manifest(image, out)}
        if all(coord_columns) and not crop_centre:
            out_row.update(_coordinates([row[c] for c in coord_columns], coord_columns, where))
        if not is_blank(row.get("mask")):
            out_row["mask"] = path_for_manifest(existing_file(row["mask"], path.parent, where, "mask"), out)
        extra = {k: v for k, v in row.items() if k not in used and k not in ("mask", "label")}
        parse_features(extra, where)  # schema and LIDC columns: one sentence naming the row and column
        malignancy = (None if is_blank(row.get("malignancy"))
                      else parse_lidc_grade("malignancy", row["malignancy"], where))
        if "label" in row:
            label = parse_label(row["label"], where)
        else:
            label = label_from_malignancy(malignancy, config)
        out_row["label"] = label
        labels[label] += 1
        out_rows.append(out_row | extra)
    NoduleManifest.write(out, out_rows)
    return labels

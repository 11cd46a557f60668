"""Where the nodules are: coordinates, a nodule table (CSV) or a mask, checked against the scan.

    volume = read_image("scan/")                                  # read once, checked to look like CT
    sites = locate_nodules(volume, coords=[(-87.6, 45.2, -120.0)])
    sites = locate_nodules(volume, nodules="nodules.csv")         # nodule_id, coord_x, coord_y, coord_z[, mask]
    sites = locate_nodules(volume, mask="nodule-seg.nii.gz")      # one nodule at the mask's centroid

Every centre is in world millimetres (LPS) and must lie inside the scan; otherwise the error names the
scan's extent and whether the numbers look like voxel indices or RAS coordinates.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from noduleclip.atomic import number_cell, plain_cell
from noduleclip.errors import InputError
from noduleclip.io import Volume, check_looks_like_ct, read_mask, read_volume
from noduleclip.preprocess.pipeline import check_inside, crop_center
from noduleclip.preprocess.views import mask_centroid

COORD_COLUMNS = ("coord_x", "coord_y", "coord_z")


@dataclass
class NoduleSite:
    """One nodule to predict: its id, its centre (LPS mm) and where it was given (for messages)."""

    nodule_id: str
    center_lps: np.ndarray
    where: str


def read_image(image: str | os.PathLike | Volume, series_uid: str | None = None) -> Volume:
    """The CT as a Volume (read from a DICOM folder, its series `series_uid` if given, or a NIfTI/MHA/NRRD file),
    refused if it does not look like CT."""
    volume = image if isinstance(image, Volume) else read_volume(image, series_uid)
    check_looks_like_ct(volume)
    return volume


def is_dicom(volume: Volume) -> bool:
    """Whether the volume was read from a DICOM series (and so can be referenced by a DICOM SR)."""
    return volume.metadata.get("format") == "dicom" and bool(volume.metadata.get("series_uid"))


def _mask_center(mask: str | os.PathLike, volume: Volume, where: str) -> np.ndarray:
    try:
        return mask_centroid(read_mask(mask, reference=volume))
    except ValueError:
        raise InputError(f"{where}: the mask {mask} is empty; give a mask that contains the nodule") from None


def _sites_from_coords(coords) -> list[NoduleSite]:
    try:
        points = np.asarray(coords, dtype=np.float64)
    except (TypeError, ValueError):
        raise InputError(f"coords {coords!r} are not numbers; give [(x, y, z), ...] in world millimetres "
                         "(LPS)") from None
    points = points.reshape(1, 3) if points.shape == (3,) else points
    if points.ndim != 2 or points.shape[1] != 3 or len(points) == 0:
        raise InputError(f"coords of shape {points.shape} are not a list of (x, y, z) points; "
                         "give [(x, y, z), ...] in world millimetres (LPS)")
    if not np.all(np.isfinite(points)):
        raise InputError("coords hold a NaN or infinite value; give finite (x, y, z) in world millimetres (LPS)")
    return [NoduleSite(f"n{i + 1}", p, f"nodule n{i + 1} (coordinate {i + 1})") for i, p in enumerate(points)]


def read_nodule_table(path: str | os.PathLike, volume: Volume) -> list[NoduleSite]:
    """Nodules from a CSV: `coord_x, coord_y, coord_z` (LPS mm) or `mask` per row (neither: the centre of a nodule
    crop), optional `nodule_id`."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"nodule table {path} does not exist or is not a file; give a CSV with coord_x, coord_y, "
                         "coord_z")
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            header = [h.strip() for h in reader.fieldnames or []]
            rows = [{(k or "").strip(): plain_cell((v or "").strip()) for k, v in raw.items()} for raw in reader]
    except (UnicodeDecodeError, csv.Error) as exc:
        raise InputError(f"nodule table {path} is not a readable CSV file ({exc}); save it as UTF-8 CSV") from None
    has_coords = all(c in header for c in COORD_COLUMNS)
    if not has_coords and "mask" not in header:
        raise InputError(f"nodule table {path} has neither coord_x, coord_y, coord_z nor mask columns "
                         f"(it has {', '.join(header) or 'no header'}); add them")
    if not rows:
        raise InputError(f"nodule table {path} has a header but no nodules; add one row per nodule")
    sites, seen = [], {}
    for n, row in enumerate(rows, start=2):
        where = f"{path.name} row {n}"
        nodule_id = row.get("nodule_id") or f"n{n - 1}"
        if nodule_id in seen:
            raise InputError(f"{where}: nodule_id {nodule_id!r} repeats row {seen[nodule_id]}; "
                             "give each nodule its own id")
        seen[nodule_id] = n
        given = has_coords and any(row.get(c) for c in COORD_COLUMNS)
        if given:
            center = np.array([number_cell(row.get(c), f"{where}: {c}", "give the centre in world millimetres (LPS)")
                               for c in COORD_COLUMNS])
        elif row.get("mask"):
            mask = Path(row["mask"]).expanduser()
            center = _mask_center(mask if mask.is_absolute() else path.resolve().parent / mask, volume, where)
        else:
            center = crop_center(volume, f"{where} (nodule {nodule_id!r})")
        sites.append(NoduleSite(nodule_id, center, f"{where} (nodule {nodule_id!r})"))
    return sites


def locate_nodules(volume: Volume, coords=None, nodules: str | os.PathLike | None = None,
                   mask: str | os.PathLike | None = None) -> list[NoduleSite]:
    """The nodules given one way (coordinates, a CSV table or a mask), each checked to lie inside the scan."""
    given = [name for name, value in (("coords", coords), ("nodules", nodules), ("mask", mask)) if value is not None]
    if len(given) != 1:
        got = f" (got {' and '.join(given)})" if given else ""
        raise InputError(f"give the nodules one way{got}: coords=[(x, y, z), ...], nodules=CSV or mask=SEGMENTATION")
    if coords is not None:
        sites = _sites_from_coords(coords)
    elif nodules is not None:
        sites = read_nodule_table(nodules, volume)
    else:
        sites = [NoduleSite("mask", _mask_center(mask, volume, f"mask {mask}"), f"mask {mask} (its centroid)")]
    for site in sites:
        check_inside(volume, site.center_lps, site.where)
    return sites

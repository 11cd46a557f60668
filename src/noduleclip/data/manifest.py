"""The nodule manifest: one CSV row per nodule, the one input format every stage shares.

Columns (docs/architecture.md): `patient_id`, `nodule_id`, `image` (required); `coord_x, coord_y, coord_z`
(nodule centre, world mm, LPS; may be empty with a `mask` or for a crop image); `mask`; `label`
(1, 0 or empty = unknown); semantic feature columns; `report`; `split`. Relative paths resolve
against the manifest's own folder.
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from noduleclip.atomic import plain_cell, write_csv
from noduleclip.errors import InputError
from noduleclip.semantics.parse import parse_features

REQUIRED = ("patient_id", "nodule_id", "image")
COORDS = ("coord_x", "coord_y", "coord_z")
CORE = REQUIRED + COORDS + ("mask", "label", "report", "split")
LABELS = {"1": 1, "1.0": 1, "0": 0, "0.0": 0, "": None, "nan": None}  # 1.0, 0.0, nan: how a float column is written


@dataclass
class NoduleRecord:
    """One nodule of a manifest. `coord` is LPS mm or None; `label` is 1, 0 or None (unknown)."""

    patient_id: str
    nodule_id: str
    image: Path
    coord: np.ndarray | None = None
    mask: Path | None = None
    label: int | None = None
    report: str | None = None
    split: str | None = None
    columns: dict[str, str] = field(default_factory=dict)
    features: dict = field(default_factory=dict)
    row: int = 0
    source: str = ""

    @property
    def series_uid(self) -> str | None:
        """The manifest's series_uid for an image that is a DICOM folder (a file holds one series: None)."""
        uid = self.columns.get("series_uid", "")
        return uid if uid and not _blank(uid) and self.image.is_dir() else None

    @property
    def where(self) -> str:
        prefix = f"{self.source} " if self.source else ""
        return f"{prefix}row {self.row} (nodule {self.nodule_id!r})"


def _blank(value: str | None) -> bool:
    return value is None or value.strip() == "" or value.strip().lower() in {"nan", "na", "none"}


def _parse_label(value: str | None, where: str) -> int | None:
    """1, 0 or None (unknown: an empty cell) from a `label` cell; any other spelling is refused, never guessed."""
    text = (value or "").strip().lower()
    if text in LABELS:
        return LABELS[text]
    raise InputError(f"{where}: label {value!r} is not 1 (malignant), 0 (benign) or empty (unknown); "
                     f"write 1 or 0 in the 'label' column, or leave the cell empty")


def _parse_coord(row: dict, where: str) -> np.ndarray | None:
    values = [row.get(c) for c in COORDS]
    if all(_blank(v) for v in values):
        return None
    if any(_blank(v) for v in values):
        raise InputError(f"{where}: give all three of coord_x, coord_y, coord_z or none of them")
    try:
        coord = np.array([float(v) for v in values])
    except ValueError:
        raise InputError(f"{where}: coordinates {values} are not numbers (world millimetres, LPS)") from None
    if not np.all(np.isfinite(coord)):
        raise InputError(f"{where}: coordinates {values} are not finite numbers")
    return coord


class NoduleManifest:
    """A validated list of `NoduleRecord`s read from (or written to) a manifest CSV."""

    def __init__(self, records: list[NoduleRecord], path: Path | None = None, fieldnames: list[str] | None = None):
        self.records = records
        self.path = path
        self.fieldnames = fieldnames or list(CORE)

    def __len__(self) -> int:
        return len(self.records)

    def __iter__(self) -> Iterator[NoduleRecord]:
        return iter(self.records)

    def __getitem__(self, i: int) -> NoduleRecord:
        return self.records[i]

    @property
    def feature_columns(self) -> list[str]:
        return [c for c in self.fieldnames if c not in CORE]

    def by_id(self) -> dict[str, NoduleRecord]:
        return {r.nodule_id: r for r in self.records}

    @classmethod
    def read(cls, path: str | os.PathLike) -> NoduleManifest:
        """Read and validate a manifest; errors name the file, row and column."""
        path = Path(path)
        if not path.exists():
            raise InputError(f"manifest {path} does not exist; give the path of a nodule CSV (see README)")
        if path.is_dir():
            raise InputError(f"manifest {path} is a folder; give the path of a nodule CSV file")
        try:
            with open(path, newline="", encoding="utf-8-sig") as fh:
                reader = csv.DictReader(fh)
                fieldnames = [f.strip() for f in (reader.fieldnames or [])]
                rows = list(reader)
        except (UnicodeDecodeError, csv.Error) as exc:
            raise InputError(f"manifest {path} is not a readable CSV file ({exc})") from None
        missing = [c for c in REQUIRED if c not in fieldnames]
        if missing:
            raise InputError(
                f"manifest {path} lacks the column(s) {', '.join(missing)}; "
                f"a manifest needs {', '.join(REQUIRED)} (and coord_x/y/z or mask)"
            )
        if not rows:
            raise InputError(f"manifest {path} has a header but no nodules")
        base = path.resolve().parent
        records, seen = [], {}
        for n, raw in enumerate(rows, start=2):
            row = {(k or "").strip(): plain_cell((v or "").strip()) for k, v in raw.items() if k is not None}
            where = f"{path.name} row {n}"
            for col in REQUIRED:
                if _blank(row.get(col)):
                    raise InputError(f"{where}: column {col!r} is empty")
            nid = row["nodule_id"]
            if nid in seen:
                raise InputError(f"{where}: nodule_id {nid!r} repeats row {seen[nid]}; nodule ids must be unique")
            seen[nid] = n
            image = Path(row["image"]).expanduser()
            mask = None if _blank(row.get("mask")) else Path(row["mask"]).expanduser()
            records.append(
                NoduleRecord(
                    patient_id=row["patient_id"],
                    nodule_id=nid,
                    image=image if image.is_absolute() else base / image,
                    coord=_parse_coord(row, where),
                    mask=None if mask is None else (mask if mask.is_absolute() else base / mask),
                    label=_parse_label(row.get("label"), where),
                    report=None if _blank(row.get("report")) else row["report"],
                    split=None if _blank(row.get("split")) else row["split"].lower(),
                    columns={k: v for k, v in row.items() if k not in CORE},
                    row=n,
                    source=path.name,
                )
            )
            records[-1].features = parse_features(records[-1].columns, records[-1].where)
        return cls(records, path=path, fieldnames=fieldnames)

    @staticmethod
    def write(path: str | os.PathLike, rows: Iterable[dict], fieldnames: list[str] | None = None) -> Path:
        """Write manifest rows (dicts of column -> value) atomically; core columns come first."""
        rows = list(rows)
        if fieldnames is None:
            extra: list[str] = []
            for r in rows:
                extra += [k for k in r if k not in CORE and k not in extra]
            present = {k for r in rows for k in r}
            fieldnames = [c for c in CORE if c in present or c in REQUIRED + COORDS + ("label",)] + extra
        path = Path(path)
        return write_csv(path, fieldnames, [[_cell(r.get(k)) for k in fieldnames] for r in rows], float_format=_fmt)


def _cell(value):
    """A manifest value as written: a float stays a number (for `_fmt`), anything else becomes its text."""
    return value if isinstance(value, float) else _fmt(value)


def _fmt(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.6g}" if abs(value) < 1e5 else repr(value)
    if isinstance(value, Path):
        return value.as_posix()
    return str(value)


def _label_value(value: Any) -> float:
    if value is None or (isinstance(value, str) and value.strip() == "") or str(value) == "<NA>":
        return np.nan  # None, an empty CSV cell, pandas' NA
    try:
        return float(value)
    except (TypeError, ValueError):
        raise InputError(f"label {value!r} is not 1 (malignant), 0 (benign) or unknown (NaN, None, -1)") from None


def label_array(y_true: ArrayLike) -> np.ndarray:
    """Labels as floats: 1.0, 0.0, or NaN for unknown (NaN, None, -1, empty); anything else is an InputError."""
    y = np.array([_label_value(v) for v in np.ravel(np.asarray(y_true, dtype=object))], dtype=float)
    y[y == -1] = np.nan
    bad = ~np.isnan(y) & (y != 0) & (y != 1)
    if bad.any():
        raise InputError(
            f"label {y[bad][0]:g} at position {int(np.flatnonzero(bad)[0])} is not 1 (malignant), "
            "0 (benign) or unknown (NaN, None, -1)"
        )
    return y


def record_labels(records: Iterable[NoduleRecord]) -> np.ndarray:
    """The records' labels as floats in their order: 1.0 malignant, 0.0 benign, NaN unknown."""
    return np.array([np.nan if r.label is None else float(r.label) for r in records], dtype=float)

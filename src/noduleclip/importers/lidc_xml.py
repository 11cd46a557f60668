"""LIDC-IDRI XML reads: parse them, group the readers' marks into nodules, agree on their ratings.

Reading. A source is an `.xml` file, a folder searched recursively, or a tarball read member by
member (never unpacked). `LidcReadMessage` files are CT reads; `IdriReadMessage` files are chest
radiograph reads and are skipped (counted). Each `readingSession` is one reader; several files for
the same series are merged and sessions with identical content kept once. `unblindedReadNodule`
entries are marks; `nonNodule` entries are not nodules and are only counted.

Marks. A mark is contoured when it has an inclusion contour of at least 3 points (readers contour
nodules >= 3 mm and rate them; smaller nodules are one point and are left out). Its voxels are, per
slice, the pixels inside or on its inclusion contours minus those strictly inside its exclusion
contours. Its centroid is the mean position of its voxels (mm); its diameter is the largest distance
between two contour points on one slice (in-plane, mm, between pixel centres).

Nodules. Marks of different readers are linked when their voxels overlap or their centroids lie
within max(`link_fraction` x the larger diameter, `link_floor_mm`). Linked pairs are merged in order
of increasing distance (complete linkage: every pair across two groups must be linked, and a group
holds at most one mark per reader). A nodule's consensus: the median of each ordinal rating, a .5
median rounded toward the middle grade of its scale (3.5 -> 3, 2.5 -> 3, 4.5 -> 4, 1.5 -> 2); the
mode of the categorical ones (calcification, internal structure), ties to the smaller code; the
median diameter; the mean of the marks' centroids; `readers` = number of marks. Ratings outside
their scale (a few files hold 0) count as missing. Label: median malignancy >= `malignant_at` -> 1,
<= `benign_at` -> 0, else unknown.
"""

from __future__ import annotations

import hashlib
import os
import re
import tarfile
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy.spatial.distance import pdist

from noduleclip.errors import InputError
from noduleclip.progress import progress_bar
from noduleclip.semantics.lidc import LIDC_SCALES

RATING_TAGS = {
    "subtlety": "subtlety", "internalStructure": "internal_structure", "calcification": "calcification",
    "sphericity": "sphericity", "margin": "margin", "lobulation": "lobulation", "spiculation": "spiculation",
    "texture": "texture", "malignancy": "malignancy",
}
RATING_COLUMNS = tuple(RATING_TAGS.values())
CATEGORICAL = ("internal_structure", "calcification")
KEY_BITS = 20  # a voxel key packs (slice, row, column) into one int64
SERIES_UID_TAG = re.compile(rb"<(?:[\w.-]+:)?SeriesInstanceUid>\s*([0-9.]+)\s*<")


@dataclass
class LidcConfig:
    """How marks become nodules and nodules get labels (defaults: the usual LIDC protocol)."""

    malignant_at: int = 4  # median malignancy at or above: label 1
    benign_at: int = 2  # at or below: label 0; in between: unknown
    min_diameter_mm: float = 3.0  # nodules with a smaller consensus diameter are left out
    link_fraction: float = 0.5  # marks link when centroids are within this fraction of the larger diameter...
    link_floor_mm: float = 4.0  # ...or within this many mm, whichever is larger (or when they overlap)
    mask_agreement: float = 0.5  # consensus mask: voxels inside at least this fraction of the readers' contours
    nominal_pixel_mm: float = 0.7  # pixel size assumed when there are no images


@dataclass
class Roi:
    z: float
    sop_uid: str
    inclusion: bool
    points: np.ndarray  # (n, 2) integer pixels: x = column, y = row


@dataclass
class ReaderNodule:
    reader: int
    xml_id: str
    ratings: dict[str, int]
    rois: list[Roi]

    @property
    def contoured(self) -> bool:
        return any(r.inclusion and len(r.points) >= 3 for r in self.rois)


@dataclass
class SeriesReads:
    """Every reader's marks on one CT series, from one or more XML files."""

    series_uid: str
    study_uid: str
    sources: list[str] = field(default_factory=list)
    readers: list[list[ReaderNodule]] = field(default_factory=list)
    non_nodules: int = 0
    fingerprints: set = field(default_factory=set)

    def nodules(self) -> list[ReaderNodule]:
        return [n for marks in self.readers for n in marks]


@dataclass
class XmlReport:
    files: int = 0
    read: int = 0
    skipped_radiograph: int = 0
    duplicate_sessions: int = 0
    invalid_ratings: int = 0
    bad: list[tuple[str, str]] = field(default_factory=list)
    not_wanted: dict[str, str] = field(default_factory=dict)  # series UID -> file, reads of series not asked for

    def summary(self) -> str:
        other = f"reads of {len(self.not_wanted)} other series not needed, " if self.not_wanted else ""
        return (f"{self.files} XML files: {self.read} CT reads used, {other}{self.skipped_radiograph} chest-radiograph "
                f"reads skipped, {len(self.bad)} unreadable, {self.duplicate_sessions} duplicate reading sessions "
                "dropped")


def iter_xml_files(source: str | os.PathLike) -> Iterator[tuple[str, bytes]]:
    """(name, bytes) of every .xml file in a file, a folder (recursively) or a tar archive."""
    path = Path(source).expanduser()
    if not path.exists():
        raise InputError(f"LIDC XML source {path} does not exist; pass an .xml file, a folder of them or the .tar.gz")
    if path.is_dir():
        for file in sorted(p for p in path.rglob("*") if p.suffix.lower() == ".xml" and p.is_file()):
            yield str(file), file.read_bytes()
    elif path.suffix.lower() == ".xml":
        yield str(path), path.read_bytes()
    elif tarfile.is_tarfile(path):
        with tarfile.open(path, "r:*") as archive:
            for member in archive:
                if member.isfile() and member.name.lower().endswith(".xml"):
                    yield f"{path.name}:{member.name}", archive.extractfile(member).read()
    else:
        raise InputError(f"LIDC XML source {path} is neither an .xml file, a folder nor a tar archive")


def _points(roi, q) -> np.ndarray:
    pts = [(int(e.findtext(q("xCoord"))), int(e.findtext(q("yCoord")))) for e in roi.iter(q("edgeMap"))]
    points = np.array(pts, dtype=np.int64).reshape(-1, 2)
    if np.any(points < 0) or np.any(points >= 1 << KEY_BITS):
        raise ValueError(f"contour pixel coordinates out of range ({points.min()}..{points.max()})")
    return points


def parse_read_message(data: bytes, name: str, report: XmlReport) -> SeriesReads | None:
    """The readers' marks in one CT read message; None for a chest-radiograph read; ValueError if malformed."""
    root = ET.fromstring(data)
    prefix = root.tag[: root.tag.index("}") + 1] if root.tag.startswith("{") else ""
    q = lambda tag: prefix + tag  # noqa: E731
    kind = root.tag[len(prefix):]
    if kind == "IdriReadMessage":
        return None
    if kind != "LidcReadMessage":
        raise ValueError(f"root element {kind!r} is not an LIDC read message")
    header = root.find(q("ResponseHeader"))
    series_uid = (header.findtext(q("SeriesInstanceUid")) or "").strip() if header is not None else ""
    if not series_uid:
        raise ValueError("no ResponseHeader/SeriesInstanceUid")
    message = SeriesReads(series_uid, (header.findtext(q("StudyInstanceUID")) or "").strip(), [name])
    for session in root.iter(q("readingSession")):
        marks = []
        for el in session.findall(q("unblindedReadNodule")):
            ratings = {}
            characteristics = el.find(q("characteristics"))
            for child in characteristics if characteristics is not None else ():
                column = RATING_TAGS.get(child.tag[len(prefix):])
                if column is None or not (child.text or "").strip():
                    continue
                value = int(float(child.text))
                if value in LIDC_SCALES[column]:
                    ratings[column] = value
                else:
                    report.invalid_ratings += 1
            rois = [Roi(float(r.findtext(q("imageZposition"))), (r.findtext(q("imageSOP_UID")) or "").strip(),
                        (r.findtext(q("inclusion")) or "TRUE").strip().upper() == "TRUE", _points(r, q))
                    for r in el.findall(q("roi"))]
            marks.append(ReaderNodule(len(message.readers), (el.findtext(q("noduleID")) or "").strip(), ratings, rois))
        message.non_nodules += len(session.findall(q("nonNodule")))
        message.readers.append(marks)
    return message


def _fingerprint(marks: list[ReaderNodule]) -> str:
    digest = hashlib.sha1()
    for m in marks:
        digest.update(repr(sorted(m.ratings.items())).encode())
        for r in m.rois:
            digest.update(f"{r.z:.3f}{r.sop_uid}{r.inclusion}".encode() + r.points.tobytes())
    return digest.hexdigest()


def read_series_reads(source, report: XmlReport | None = None, progress: bool = True,
                      wanted: set[str] | None = None) -> dict[str, SeriesReads]:
    """Every CT series' reads in `source` (only those in `wanted`, if given) by SeriesInstanceUID.

    A bad file is reported in `report`, never fatal. Files of series not wanted are not parsed.
    """
    report = report if report is not None else XmlReport()
    out: dict[str, SeriesReads] = {}
    for name, data in progress_bar(iter_xml_files(source), desc="LIDC XML", unit="file", disable=not progress):
        report.files += 1
        found = SERIES_UID_TAG.search(data) if wanted is not None else None
        if found and found.group(1).decode() not in wanted:
            report.not_wanted.setdefault(found.group(1).decode(), name)
            continue
        try:
            message = parse_read_message(data, name, report)
        except (ET.ParseError, ValueError, TypeError, AttributeError) as exc:
            report.bad.append((name, f"{type(exc).__name__}: {exc}"))
            continue
        if message is None:
            report.skipped_radiograph += 1
            continue
        report.read += 1
        reads = out.setdefault(message.series_uid, SeriesReads(message.series_uid, message.study_uid))
        reads.sources += message.sources
        reads.non_nodules += message.non_nodules
        keys = [_fingerprint(marks) for marks in message.readers]
        for key, marks in zip(keys, message.readers, strict=True):
            if marks and key in reads.fingerprints:  # the same session already read from another file
                report.duplicate_sessions += 1
                continue
            for m in marks:
                m.reader = len(reads.readers)
            reads.readers.append(marks)
        reads.fingerprints.update(keys)
    return out


def fill_contour(points: np.ndarray, include_edge: bool = True) -> np.ndarray:
    """Pixels (x, y) inside the closed contour through `points`, with or without the contour's own pixels."""
    from matplotlib.path import Path as PolygonPath  # imported on first use: matplotlib loads slowly

    lo = points.min(axis=0)
    width, height = points.max(axis=0) - lo + 1
    rows, cols = np.mgrid[0:height, 0:width]
    grid = np.column_stack([cols.ravel(), rows.ravel()]) + lo
    inside = np.zeros(len(grid), dtype=bool)
    if len(points) >= 3:
        inside = PolygonPath(np.vstack([points, points[:1]]), closed=True).contains_points(grid)
    inside = inside.reshape(height, width)
    inside[points[:, 1] - lo[1], points[:, 0] - lo[0]] = include_edge
    rows, cols = np.nonzero(inside)
    return np.column_stack([cols + lo[0], rows + lo[1]])


def voxel_keys(x: np.ndarray, y: np.ndarray, k: np.ndarray) -> np.ndarray:
    return (np.asarray(k, np.int64) << (2 * KEY_BITS)) | (np.asarray(y, np.int64) << KEY_BITS) | np.asarray(x, np.int64)


def key_voxels(keys: np.ndarray) -> np.ndarray:
    """(n, 3) integer (x, y, k) = (i, j, k) indices of packed voxel keys."""
    low = (1 << KEY_BITS) - 1
    return np.stack([keys & low, (keys >> KEY_BITS) & low, keys >> (2 * KEY_BITS)], axis=1)


@dataclass
class Mark:
    """One reader's contoured nodule, placed: voxel keys, centroid (mm) and diameter (mm)."""

    reader: int
    ratings: dict[str, int]
    keys: np.ndarray
    centroid: np.ndarray
    diameter: float


def place_mark(nodule: ReaderNodule, slice_of: Callable[[Roi], int | None],
               to_mm: Callable[[np.ndarray], np.ndarray]) -> Mark | None:
    """A contoured mark on a grid: `slice_of` gives a roi's slice index, `to_mm` maps (x, y, k) to mm."""
    included, excluded, diameter = [], [], 0.0
    by_slice: dict[int, list[np.ndarray]] = {}
    for roi in nodule.rois:
        k = slice_of(roi)
        if k is None or len(roi.points) == 0:
            continue
        pixels = fill_contour(roi.points, include_edge=roi.inclusion)
        (included if roi.inclusion else excluded).append(voxel_keys(pixels[:, 0], pixels[:, 1],
                                                                    np.full(len(pixels), k)))
        if roi.inclusion:
            by_slice.setdefault(k, []).append(roi.points)
    for k, contours in by_slice.items():
        pts = np.vstack(contours)
        if len(pts) >= 2:
            mm = to_mm(np.column_stack([pts, np.full(len(pts), k)]))
            diameter = max(diameter, float(pdist(mm).max()))
    if not included:
        return None
    keys = np.unique(np.concatenate(included))
    if excluded:
        keys = np.setdiff1d(keys, np.concatenate(excluded), assume_unique=False)
    if len(keys) == 0:
        return None
    centroid = to_mm(key_voxels(keys)).mean(axis=0)
    return Mark(nodule.reader, dict(nodule.ratings), keys, centroid, diameter)


def cluster_marks(marks: list[Mark], config: LidcConfig | None = None) -> list[list[Mark]]:
    """Group marks into nodules (complete linkage, at most one mark per reader; see the module docstring)."""
    config = config or LidcConfig()
    n = len(marks)
    linked = np.zeros((n, n), dtype=bool)
    pairs = []
    for a in range(n):
        for b in range(a + 1, n):
            if marks[a].reader == marks[b].reader:
                continue
            distance = float(np.linalg.norm(marks[a].centroid - marks[b].centroid))
            reach = max(config.link_fraction * max(marks[a].diameter, marks[b].diameter), config.link_floor_mm)
            close = distance <= reach
            if not close and distance <= marks[a].diameter + marks[b].diameter + config.link_floor_mm:
                close = len(np.intersect1d(marks[a].keys, marks[b].keys, assume_unique=True)) > 0
            if close:
                linked[a, b] = linked[b, a] = True
                pairs.append((distance, a, b))
    group_of = list(range(n))
    groups = {i: [i] for i in range(n)}
    for _, a, b in sorted(pairs):
        ga, gb = group_of[a], group_of[b]
        if ga == gb:
            continue
        if {marks[i].reader for i in groups[ga]} & {marks[i].reader for i in groups[gb]}:
            continue
        if not linked[np.ix_(groups[ga], groups[gb])].all():
            continue
        for i in groups[gb]:
            group_of[i] = ga
        groups[ga] += groups.pop(gb)
    return [[marks[i] for i in sorted(g)] for g in groups.values()]


def median_grade(values: list[int], column: str) -> int:
    """The median of ordinal grades; a .5 median is rounded toward the middle grade of the scale."""
    median = float(np.median(values))
    if median.is_integer():
        return int(median)
    grades = sorted(LIDC_SCALES[column])
    middle = (grades[0] + grades[-1]) / 2
    return int(np.floor(median)) if median > middle else int(np.ceil(median))


def mode_grade(values: list[int]) -> int:
    """The most frequent categorical grade; ties go to the smaller code."""
    counts = Counter(values)
    best = max(counts.values())
    return min(v for v, c in counts.items() if c == best)


def label_from_malignancy(malignancy: int | None, config: LidcConfig | None = None) -> int | None:
    config = config or LidcConfig()
    if malignancy is None:
        return None
    if malignancy >= config.malignant_at:
        return 1
    return 0 if malignancy <= config.benign_at else None


def consensus(marks: list[Mark], config: LidcConfig | None = None) -> dict:
    """A nodule's consensus: ratings, diameter_mm, centroid (mm), readers and label."""
    config = config or LidcConfig()
    row: dict = {}
    for column in RATING_COLUMNS:
        values = [m.ratings[column] for m in marks if column in m.ratings]
        row[column] = (None if not values else mode_grade(values) if column in CATEGORICAL
                       else median_grade(values, column))
    row["diameter_mm"] = round(float(np.median([m.diameter for m in marks])), 2)
    row["centroid"] = np.mean([m.centroid for m in marks], axis=0)
    row["readers"] = len(marks)
    row["label"] = label_from_malignancy(row["malignancy"], config)
    return row

"""Patient-level splits: a held-out test set of patients, then k cross-validation folds on the rest.

Both steps are stratified by the patient label (max over the patient's known nodule labels;
patients with no known label form their own stratum, so they spread too) and keep every nodule
of a patient on one side. Rows whose `split` says "test" force their whole patient into the test
set. A plan is written to and read from splits.csv (patient_id, nodule_id, role, fold).
"""

from __future__ import annotations

import csv
import math
import os
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from sklearn.model_selection import StratifiedKFold

from noduleclip.atomic import plain_cell, write_csv
from noduleclip.data.manifest import label_array
from noduleclip.errors import InputError

SPLIT_COLUMNS = ("patient_id", "nodule_id", "role", "fold")
ORDINARY_SPLIT_VALUES = {"", "train", "val", "validation"}
UNKNOWN = -1  # stratum of patients with no known label


class SplitRow(NamedTuple):
    patient_id: str
    nodule_id: str
    role: str  # "test" or "train"
    fold: int  # validation fold of a train row, -1 for a test row


@dataclass
class SplitPlan:
    """Which nodules are held-out test and which cross-validation fold every other nodule validates in."""

    rows: list[SplitRow]
    n_folds: int
    labels: dict[str, int | None] = field(default_factory=dict)  # nodule_id -> label, when known

    def to_rows(self) -> list[SplitRow]:
        return list(self.rows)

    def test_ids(self) -> list[str]:
        """Nodule ids of the held-out test set."""
        return [r.nodule_id for r in self.rows if r.role == "test"]

    def fold(self, k: int) -> tuple[list[str], list[str]]:
        """(train nodule ids, validation nodule ids) of fold k; test nodules are in neither."""
        if not 0 <= k < self.n_folds:
            raise InputError(f"fold {k} does not exist; this plan has folds 0 to {self.n_folds - 1}")
        train = [r.nodule_id for r in self.rows if r.role == "train" and r.fold != k]
        val = [r.nodule_id for r in self.rows if r.role == "train" and r.fold == k]
        return train, val

    def check_disjoint(self) -> None:
        """Raise InputError if a nodule is listed twice or a patient lies on two sides (test/train or two folds)."""
        side: dict[str, tuple[str, int]] = {}
        seen: set[str] = set()
        for r in self.rows:
            if r.nodule_id in seen:
                raise InputError(f"splits: nodule {r.nodule_id!r} is listed twice; each nodule needs exactly one row")
            seen.add(r.nodule_id)
            where = (r.role, r.fold)
            if side.setdefault(r.patient_id, where) != where:
                a, b = side[r.patient_id], where
                raise InputError(
                    f"splits: patient {r.patient_id!r} is in {_side_name(*a)} and in {_side_name(*b)}, which leaks "
                    "between sets; put all of a patient's nodules on one side (or remake the splits)"
                )

    def check_matches(self, nodule_ids: Iterable[str]) -> None:
        """Raise InputError unless the plan assigns exactly these nodules (e.g. a manifest's)."""
        wanted, have = set(nodule_ids), {r.nodule_id for r in self.rows}
        missing, extra = sorted(wanted - have), sorted(have - wanted)
        if missing or extra:
            parts = [f"lacks {len(missing)} nodule(s) such as {missing[0]!r}"] if missing else []
            parts += [f"names {len(extra)} unknown nodule(s) such as {extra[0]!r}"] if extra else []
            raise InputError(f"splits {' and '.join(parts)}; remake the splits for this manifest")

    def summary(self) -> dict[str, Any]:
        """Patients, nodules and malignant patients per part ('test', 'fold0', ...), for logs and reports."""
        parts: dict[str, dict[str, set]] = {}
        for r in self.rows:
            name = "test" if r.role == "test" else f"fold{r.fold}"
            part = parts.setdefault(name, {"patients": set(), "nodules": set(), "malignant_patients": set()})
            part["patients"].add(r.patient_id)
            part["nodules"].add(r.nodule_id)
            if self.labels.get(r.nodule_id) == 1:
                part["malignant_patients"].add(r.patient_id)
        return {name: {k: len(v) for k, v in part.items()} for name, part in sorted(parts.items())}

    def write_csv(self, path: str | os.PathLike) -> Path:
        """Write splits.csv atomically."""
        return write_csv(path, SPLIT_COLUMNS, self.rows)

    @classmethod
    def read_csv(cls, path: str | os.PathLike, check: bool = True) -> SplitPlan:
        """Read splits.csv; with `check` (default) also refuse leakage (see `check_disjoint`)."""
        path = Path(path)
        if not path.is_file():
            raise InputError(f"splits file {path} does not exist; make it with make_splits or give its path")
        with open(path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            missing = [c for c in SPLIT_COLUMNS if c not in (reader.fieldnames or [])]
            if missing:
                raise InputError(f"splits file {path} lacks the column(s) {', '.join(missing)}")
            rows = [_parse_row(raw, f"{path.name} row {n}") for n, raw in enumerate(reader, start=2)]
        if not rows:
            raise InputError(f"splits file {path} has no rows")
        folds = sorted({r.fold for r in rows if r.role == "train"})
        if folds != list(range(len(folds))) or len(folds) < 2:
            raise InputError(f"splits file {path}: train folds are {folds}; they must be 0, 1, ... with at least two")
        plan = cls(rows, n_folds=len(folds))
        if check:
            plan.check_disjoint()
        return plan


def _side_name(role: str, fold: int) -> str:
    return "the test set" if role == "test" else f"training fold {fold}"


def _parse_row(raw: dict, where: str) -> SplitRow:
    pid, nid, role = (plain_cell((raw.get(c) or "").strip()) for c in ("patient_id", "nodule_id", "role"))
    if not pid or not nid:
        raise InputError(f"{where}: patient_id and nodule_id must not be empty")
    if role not in ("test", "train"):
        raise InputError(f"{where}: role {role!r} is not 'test' or 'train'")
    try:
        fold = int(raw.get("fold") or "")
    except ValueError:
        raise InputError(f"{where}: fold {raw.get('fold')!r} is not a whole number") from None
    if (role == "test") != (fold == -1) or fold < -1:
        raise InputError(f"{where}: a test row needs fold -1 and a train row a fold of 0 or more (got {role}, {fold})")
    return SplitRow(pid, nid, role, fold)


def _columns(records, patient_id, nodule_id, label, split) -> tuple[list[str], list[str], np.ndarray, list[str]]:
    """Records (objects or dicts with patient_id, nodule_id, label, split) or arrays -> four columns."""
    if records is not None:
        def get(r, name):
            return r.get(name) if isinstance(r, dict) else getattr(r, name, None)
        records = list(records)
        patient_id = [get(r, "patient_id") for r in records]
        nodule_id = [get(r, "nodule_id") for r in records]
        label = [get(r, "label") for r in records]
        split = [get(r, "split") for r in records]
    if patient_id is None or nodule_id is None:
        raise InputError("make_splits needs records, or patient_id and nodule_id columns")
    n = len(patient_id)
    label = [None] * n if label is None else label
    split = [None] * n if split is None else split
    if not len(nodule_id) == len(label) == len(split) == n:
        raise InputError("patient_id, nodule_id, label and split must have one entry per nodule")
    pids, nids = [str(p) for p in patient_id], [str(x) for x in nodule_id]
    splits = ["" if s is None or (isinstance(s, float) and math.isnan(s)) else str(s).strip().lower() for s in split]
    return pids, nids, label_array(label), splits


def _apportion(total: int, sizes: dict[int, int]) -> dict[int, int]:
    """Split `total` over strata in proportion to their sizes (largest remainder)."""
    n = sum(sizes.values())
    quota = {s: total * k / n for s, k in sizes.items()}
    share = {s: math.floor(q) for s, q in quota.items()}
    for s in sorted(quota, key=lambda s: (share[s] - quota[s], s))[: total - sum(share.values())]:
        share[s] += 1
    return share


def make_splits(
    records: Iterable | None = None,
    *,
    patient_id: Sequence | None = None,
    nodule_id: Sequence | None = None,
    label: Sequence | None = None,
    split: Sequence | None = None,
    test_fraction: float = 0.2,
    folds: int = 5,
    seed: int = 0,
) -> SplitPlan:
    """Hold out ~`test_fraction` of the patients (forced "test" rows included), then `folds`
    stratified folds on the rest; deterministic for a seed and independent of row order.

    `records`: NoduleRecords, a NoduleManifest or dicts with patient_id, nodule_id, label, split;
    or give the columns as sequences. Labels: 1, 0, unknown (None/NaN/-1). `split`: "test"
    forces the patient into the test set; "", "train", "val", "validation" are ordinary rows.
    """
    if not 0 <= test_fraction < 1:
        raise InputError(f"test_fraction={test_fraction} is not in [0, 1); use e.g. 0.2, or 0 for no test set")
    if int(folds) != folds or folds < 2:
        raise InputError(f"folds={folds}: cross-validation needs a whole number of at least 2 folds")
    pids, nids, labels, splits = _columns(records, patient_id, nodule_id, label, split)
    if not pids:
        raise InputError("make_splits got no nodules")
    if len(set(nids)) != len(nids):
        dup = next(x for x in nids if nids.count(x) > 1)
        raise InputError(f"nodule_id {dup!r} appears twice; nodule ids must be unique")
    odd = sorted({s for s in splits if s not in ORDINARY_SPLIT_VALUES | {"test"}})
    if odd:
        raise InputError(
            f"split value {odd[0]!r} is not understood; use 'test' to force a row into the test set, or leave it empty"
        )

    stratum: dict[str, int] = {}
    for pid, lab in zip(pids, labels, strict=True):
        stratum[pid] = max(stratum.get(pid, UNKNOWN), UNKNOWN if np.isnan(lab) else int(lab))
    patients = sorted(stratum)
    forced = {pid for pid, s in zip(pids, splits, strict=True) if s == "test"}

    test = set(forced)
    if test_fraction > 0:
        sizes: dict[int, int] = {}
        for p in patients:
            sizes[stratum[p]] = sizes.get(stratum[p], 0) + 1
        want = _apportion(max(1, round(test_fraction * len(patients))), sizes)
        for cls in (0, 1):  # a test set needs both classes when the data can spare one of each
            if want.get(cls) == 0 and sizes[cls] > folds:
                want[max(want, key=lambda s: (want[s], s))] -= 1
                want[cls] = 1
        rng = np.random.default_rng(seed)
        for s in sorted(sizes):
            free = [p for p in patients if stratum[p] == s and p not in forced]
            extra = min(len(free), max(0, want[s] - sum(1 for p in forced if stratum[p] == s)))
            test.update(rng.choice(free, size=extra, replace=False).tolist() if extra else [])

    pool = [p for p in patients if p not in test]
    _check_pool(pool, stratum, folds)
    fold_of: dict[str, int] = {}
    y_pool = np.array([stratum[p] for p in pool])
    with warnings.catch_warnings():  # a stratum (e.g. unknown labels) smaller than `folds` is fine
        warnings.simplefilter("ignore", UserWarning)
        cv = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
        for k, (_, val) in enumerate(cv.split(np.zeros(len(pool)), y_pool)):
            fold_of.update({pool[i]: k for i in val})

    rows = [
        SplitRow(pid, nid, "test", -1) if pid in test else SplitRow(pid, nid, "train", fold_of[pid])
        for pid, nid in zip(pids, nids, strict=True)
    ]
    plan = SplitPlan(rows, n_folds=folds,
                     labels={n: (None if np.isnan(y) else int(y)) for n, y in zip(nids, labels, strict=True)})
    plan.check_disjoint()
    return plan


def _check_pool(pool: list[str], stratum: dict[str, int], folds: int) -> None:
    """Refuse splits whose folds could not each hold a patient (and, with labels, both classes)."""
    if len(pool) < folds:
        raise InputError(
            f"only {len(pool)} patients remain for training after the test set; {folds} folds need at least "
            f"{folds}; lower folds or test_fraction, or add patients"
        )
    labelled = [stratum[p] for p in pool if stratum[p] != UNKNOWN]
    if not labelled:
        return  # no labels at all: folds for label-free training are still possible
    for cls, name in ((1, "malignant"), (0, "benign")):
        count = labelled.count(cls)
        if count < folds:
            raise InputError(
                f"the {len(pool)} training patients include only {count} {name}; {folds} folds need at least "
                f"{folds} (one per validation fold); lower folds or test_fraction, or add {name} patients"
            )

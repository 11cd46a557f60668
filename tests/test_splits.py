"""Patient-level splits: no patient on two sides, stratified, forced test rows, deterministic."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from noduleclip.data.manifest import NoduleRecord
from noduleclip.errors import InputError
from noduleclip.train.splits import SplitPlan, make_splits


def cohort(n_malignant=20, n_benign=30, n_unknown=10, seed=0):
    """Rows of (patient_id, nodule_id, label): 1-4 nodules a patient; a malignant patient has at least one 1."""
    rng = np.random.default_rng(seed)
    rows = []
    kinds = [1] * n_malignant + [0] * n_benign + [None] * n_unknown
    for p, kind in enumerate(kinds):
        for j in range(int(rng.integers(1, 5))):
            if kind == 1:
                lab = 1 if j == 0 else [0, 1, None][int(rng.integers(3))]
            elif kind == 0:
                lab = [0, None][int(rng.integers(2))] if j else 0
            else:
                lab = None
            rows.append({"patient_id": f"P{p:03d}", "nodule_id": f"P{p:03d}-n{j}", "label": lab})
    return rows


def patient_label(rows):
    out = {}
    for r in rows:
        if r["label"] is not None:
            out[r["patient_id"]] = max(out.get(r["patient_id"], 0), r["label"])
        else:
            out.setdefault(r["patient_id"], None)
    return out


def sides(plan):
    by_patient = {}
    for r in plan.to_rows():
        by_patient.setdefault(r.patient_id, set()).add((r.role, r.fold))
    return by_patient


def test_patients_never_straddle_sets_and_every_nodule_is_assigned_once():
    rows = cohort()
    plan = make_splits(rows, test_fraction=0.2, folds=4, seed=1)
    out = plan.to_rows()
    assert sorted(r.nodule_id for r in out) == sorted(r["nodule_id"] for r in rows)
    assert all(len(s) == 1 for s in sides(plan).values())  # one (role, fold) per patient
    test_patients = {r.patient_id for r in out if r.role == "test"}
    assert all(r.fold == -1 for r in out if r.role == "test")
    for k in range(4):
        train, val = plan.fold(k)
        assert not set(train) & set(val) and not (set(train) | set(val)) & set(plan.test_ids())
        assert len(train) + len(val) + len(plan.test_ids()) == len(rows)
        val_patients = {r.patient_id for r in out if r.nodule_id in set(val)}
        train_patients = {r.patient_id for r in out if r.nodule_id in set(train)}
        assert not val_patients & train_patients and not val_patients & test_patients


def test_test_set_and_folds_are_stratified_by_patient_label():
    rows = cohort()
    plan = make_splits(rows, test_fraction=0.2, folds=4, seed=1)
    label = patient_label(rows)
    count = {}
    for pid, side in sides(plan).items():
        role, fold = next(iter(side))
        key = "test" if role == "test" else fold
        count.setdefault(key, {1: 0, 0: 0, None: 0})[label[pid]] += 1
    assert count["test"] == {1: 4, 0: 6, None: 2}  # 20% of 20 / 30 / 10 patients
    for k in range(4):  # the remaining 16 / 24 / 8 spread evenly
        assert count[k] == {1: 4, 0: 6, None: 2}
    summary = plan.summary()
    assert summary["test"]["patients"] == 12 and summary["test"]["malignant_patients"] == 4
    assert sum(part["nodules"] for part in summary.values()) == len(rows)


def test_forced_test_rows_take_their_whole_patient():
    rows = cohort()
    multi = [pid for pid in {r["patient_id"] for r in rows} if sum(r["patient_id"] == pid for r in rows) >= 3]
    forced_pid = sorted(multi)[0]
    for r in rows:
        r["split"] = "test" if r["nodule_id"] == f"{forced_pid}-n1" else ("train" if r["patient_id"] == "P001" else "")
    plan = make_splits(rows, test_fraction=0.2, folds=4, seed=3)
    assert sides(plan)[forced_pid] == {("test", -1)}
    assert len({r.patient_id for r in plan.to_rows() if r.role == "test"}) == 12  # forced counts towards the 20%
    none = make_splits(rows, test_fraction=0.0, folds=4, seed=3)
    assert {r.patient_id for r in none.to_rows() if r.role == "test"} == {forced_pid}
    plain = make_splits([{**r, "split": None} for r in rows], test_fraction=0.0, folds=4)
    assert plain.test_ids() == []


def test_splits_are_deterministic_and_ignore_row_order():
    rows = cohort()
    a = make_splits(rows, seed=5)
    b = make_splits(list(reversed(rows)), seed=5)
    assert sorted(a.to_rows()) == sorted(b.to_rows())
    assert sorted(make_splits(rows, seed=6).to_rows()) != sorted(a.to_rows())


def test_records_arrays_and_manifest_records_give_the_same_plan():
    rows = cohort(n_malignant=8, n_benign=8, n_unknown=0)
    from_dicts = make_splits(rows, folds=3, seed=2)
    from_arrays = make_splits(
        patient_id=[r["patient_id"] for r in rows], nodule_id=[r["nodule_id"] for r in rows],
        label=[np.nan if r["label"] is None else r["label"] for r in rows], folds=3, seed=2,
    )
    records = [NoduleRecord(r["patient_id"], r["nodule_id"], image=None, label=r["label"]) for r in rows]
    from_records = make_splits(records, folds=3, seed=2)
    assert from_dicts.to_rows() == from_arrays.to_rows() == from_records.to_rows()


def test_csv_round_trip(tmp_path):
    plan = make_splits(cohort(), folds=5, seed=0)
    path = plan.write_csv(tmp_path / "splits.csv")
    back = SplitPlan.read_csv(path)
    assert back.to_rows() == plan.to_rows() and back.n_folds == 5
    assert back.fold(2) == plan.fold(2)
    with open(path) as fh:
        assert fh.readline().strip() == "patient_id,nodule_id,role,fold"
    back.check_matches(r["nodule_id"] for r in cohort())
    with pytest.raises(InputError, match="lacks 1 nodule"):
        back.check_matches([r["nodule_id"] for r in cohort()] + ["extra"])


def _tamper(path, patient, role, fold):
    """Move one nodule of `patient` to another side in a splits.csv."""
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    moved = next(r for r in rows if r["patient_id"] == patient)
    moved["role"], moved["fold"] = role, str(fold)
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["patient_id", "nodule_id", "role", "fold"])
        writer.writeheader()
        writer.writerows(rows)


def test_a_tampered_splits_file_is_caught_as_leakage(tmp_path):
    plan = make_splits(cohort(), folds=4, seed=0)
    per_patient = {}
    for r in plan.to_rows():
        per_patient.setdefault(r.patient_id, []).append(r)
    train_pid = next(p for p, rs in per_patient.items() if len(rs) >= 2 and rs[0].role == "train")
    test_pid = next(p for p, rs in per_patient.items() if len(rs) >= 2 and rs[0].role == "test")
    path = plan.write_csv(tmp_path / "splits.csv")

    _tamper(path, train_pid, "test", -1)  # one nodule of a training patient moved to test
    with pytest.raises(InputError, match=f"patient '{train_pid}' is in .*test set.*leaks"):
        SplitPlan.read_csv(path)
    plan.write_csv(path)
    other = (per_patient[train_pid][0].fold + 1) % 4
    _tamper(path, train_pid, "train", other)  # ... or to another fold
    with pytest.raises(InputError, match=f"patient '{train_pid}' is in training fold"):
        SplitPlan.read_csv(path)
    plan.write_csv(path)
    _tamper(path, test_pid, "train", 0)
    with pytest.raises(InputError, match=f"patient '{test_pid}'"):
        SplitPlan.read_csv(path)
    assert SplitPlan.read_csv(path, check=False).n_folds == 4  # reading without the check still works


def test_too_few_patients_or_positives_for_the_folds():
    with pytest.raises(InputError, match="only 3 malignant; 5 folds need at least 5"):
        make_splits(cohort(n_malignant=3, n_benign=30), test_fraction=0.0, folds=5)
    with pytest.raises(InputError, match="only 4 patients remain"):
        make_splits(patient_id=list("ABCDE"), nodule_id=list("abcde"), test_fraction=0.2, folds=5)
    with pytest.raises(InputError, match="at least 2 folds"):
        make_splits(cohort(), folds=1)
    with pytest.raises(InputError, match="test_fraction"):
        make_splits(cohort(), test_fraction=1.0)
    with pytest.raises(InputError, match="appears twice"):
        make_splits(patient_id=["A", "B"], nodule_id=["x", "x"], folds=2)
    with pytest.raises(InputError, match="'tset' is not understood"):
        make_splits(patient_id=list("ABCD"), nodule_id=list("abcd"), split=["tset", "", "", ""], folds=2)
    unlabelled = make_splits(patient_id=list("ABCDEF"), nodule_id=list("abcdef"), test_fraction=0.0, folds=3)
    assert sorted(r.fold for r in unlabelled.to_rows()) == [0, 0, 1, 1, 2, 2]

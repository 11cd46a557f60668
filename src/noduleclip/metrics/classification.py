"""Malignancy metrics: AUROC and AUPRC with bootstrap CIs, operating points at fixed recall,
Brier score, patient-level aggregation and reliability bins. Every result is JSON-safe.

Labels are 1 (malignant), 0 (benign) or unknown (NaN, None or -1); unknown cases are left out
of every metric and counted in `n_unknown`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import ArrayLike
from sklearn.calibration import calibration_curve as _sk_calibration_curve
from sklearn.metrics import average_precision_score, brier_score_loss, roc_auc_score, roc_curve

from noduleclip.atomic import jsonable
from noduleclip.data.manifest import label_array
from noduleclip.errors import InputError

_BOOTSTRAP_CELLS = 2_000_000  # resamples x cases held in memory at once


def known_cases(y_true: ArrayLike, y_score: ArrayLike) -> tuple[np.ndarray, np.ndarray, int]:
    """(labels as int 0/1, scores, number of unknown labels left out), after checking shapes and scores."""
    y = label_array(y_true)
    s = np.asarray(y_score, dtype=float).ravel()
    if y.shape != s.shape:
        raise InputError(f"{len(y)} labels but {len(s)} scores; give one score per case")
    known = ~np.isnan(y)
    if not np.all(np.isfinite(s[known])):
        bad = int(np.flatnonzero(known & ~np.isfinite(s))[0])
        raise InputError(f"score at position {bad} is {s[bad]}; every labelled case needs a finite score")
    return y[known].astype(int), s[known], int((~known).sum())


def single_class_reason(n_pos: int, n_neg: int, n_unknown: int, unit: str = "nodules") -> str:
    """The sentence that explains why AUROC/AUPRC cannot be computed on this set."""
    have = f"only {n_neg} benign" if n_neg else (f"only {n_pos} malignant" if n_pos else "no labelled")
    return (
        f"AUROC needs both malignant and benign {unit}; this set has {have} {unit} "
        f"({n_unknown} with unknown labels left out)"
    )


def bootstrap_auroc_auprc(
    y: np.ndarray, s: np.ndarray, n_bootstrap: int, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """AUROC and average precision of `n_bootstrap` case resamples (single-class resamples dropped).

    Vectorised: each resample is a vector of case counts, and both metrics are computed from
    per-distinct-score sums of those counts; equal to sklearn's roc_auc_score /
    average_precision_score on the resampled cases (tests check this).
    """
    y = np.asarray(y, dtype=float)
    order = np.argsort(-np.asarray(s, dtype=float), kind="mergesort")
    ys, ss = y[order], np.asarray(s, dtype=float)[order]
    starts = np.flatnonzero(np.r_[True, ss[1:] != ss[:-1]])
    n = len(y)
    rng = np.random.default_rng(seed)
    aucs, aps = [], []
    batch = max(1, _BOOTSTRAP_CELLS // max(n, 1))
    for first in range(0, n_bootstrap, batch):
        b = min(batch, n_bootstrap - first)
        idx = rng.integers(0, n, size=(b, n))
        counts = np.bincount((idx + n * np.arange(b)[:, None]).ravel(), minlength=b * n).reshape(b, n)
        w = counts[:, order].astype(float)
        pos = np.add.reduceat(w * ys, starts, axis=1)  # malignant weight at each distinct score
        neg = np.add.reduceat(w * (1.0 - ys), starts, axis=1)
        n_pos, n_neg = pos.sum(1), neg.sum(1)
        ok = (n_pos > 0) & (n_neg > 0)
        pos, neg, n_pos, n_neg = pos[ok], neg[ok], n_pos[ok], n_neg[ok]
        cum_pos, cum_neg = np.cumsum(pos, 1), np.cumsum(neg, 1)
        aucs.append((neg * (cum_pos - pos + pos / 2)).sum(1) / (n_pos * n_neg))
        called = cum_pos + cum_neg
        precision = np.divide(cum_pos, called, out=np.zeros_like(cum_pos), where=called > 0)
        aps.append((pos * precision).sum(1) / n_pos)
    return np.concatenate(aucs), np.concatenate(aps)


def operating_points(y: np.ndarray, s: np.ndarray, recalls: Sequence[float]) -> dict[str, dict]:
    """FPR and precision at each target recall; see `classification_metrics` for the definition."""
    fpr, tpr, thresholds = roc_curve(y, s, drop_intermediate=False)
    n_pos, n_neg = int(y.sum()), int(len(y) - y.sum())
    tp, fp = np.rint(tpr * n_pos), np.rint(fpr * n_neg)
    points = {}
    for target in recalls:
        if not 0 < target <= 1:
            raise InputError(f"target recall {target} is not in (0, 1]; give recalls such as 0.6, 0.7, 0.8, 0.9")
        i = int(np.argmax(tp >= target * n_pos - 1e-9))  # first = highest threshold reaching the target
        points[f"{target:g}"] = {
            "threshold": float(thresholds[i]),
            "recall": tp[i] / n_pos,
            "fpr": fp[i] / n_neg,
            "precision": tp[i] / (tp[i] + fp[i]),
            "tp": int(tp[i]),
            "fp": int(fp[i]),
        }
    return points


def classification_metrics(
    y_true: ArrayLike,
    y_score: ArrayLike,
    recalls: Sequence[float] = (0.6, 0.7, 0.8, 0.9),
    n_bootstrap: int = 1000,
    seed: int = 0,
    ci: float = 0.95,
    allow_single_class: bool = False,
    unit: str = "nodules",
) -> dict:
    """AUROC, AUPRC (average precision) with bootstrap percentile CIs, FPR/precision at fixed recall,
    Brier score, n, n_pos, n_neg, n_unknown, prevalence; a JSON-safe dict.

    Operating point at recall r: a case is called malignant when score >= threshold; among all
    thresholds (the distinct scores) whose recall is >= r, the HIGHEST is taken, i.e. the fewest
    cases called malignant. Tied scores are called together, so the achieved recall (reported as
    `recall`) can exceed r. FPR = FP / benign, precision = TP / (TP + FP) at that threshold.
    CIs resample cases with replacement (`n_bootstrap` times, resamples with one class skipped;
    `n_bootstrap=0` gives no CI). Brier is None when scores are not probabilities in [0, 1].
    A set without both classes raises InputError unless `allow_single_class`, which returns None
    metrics and the `reason`. `unit` ("nodules", "patients") only words the messages.
    """
    if not 0 < ci < 1:
        raise InputError(f"ci={ci} is not a confidence level in (0, 1); use e.g. 0.95")
    y, s, n_unknown = known_cases(y_true, y_score)
    n, n_pos = len(y), int(y.sum())
    result: dict[str, Any] = {
        "n": n, "n_pos": n_pos, "n_neg": n - n_pos, "n_unknown": n_unknown,
        "prevalence": n_pos / n if n else None, "unit": unit,
        "auroc": None, "auroc_ci": None, "auprc": None, "auprc_ci": None, "ci_level": ci,
        "n_bootstrap": int(n_bootstrap), "n_bootstrap_used": 0, "seed": seed,
        "brier": None, "at_recall": {f"{r:g}": None for r in recalls}, "reason": None,
    }
    if n_pos == 0 or n_pos == n:
        reason = single_class_reason(n_pos, n - n_pos, n_unknown, unit)
        if not allow_single_class:
            raise InputError(f"{reason}; evaluate on a set with both classes or pass allow_single_class=True")
        result["reason"] = reason
        return jsonable(result)
    result["auroc"] = roc_auc_score(y, s)
    result["auprc"] = average_precision_score(y, s)
    result["at_recall"] = operating_points(y, s, recalls)
    if s.min() >= 0 and s.max() <= 1:
        result["brier"] = brier_score_loss(y, s)
    if n_bootstrap > 0:
        aucs, aps = bootstrap_auroc_auprc(y, s, n_bootstrap, seed)
        result["n_bootstrap_used"] = len(aucs)
        if len(aucs):
            q = [100 * (1 - ci) / 2, 100 * (1 + ci) / 2]
            result["auroc_ci"] = np.percentile(aucs, q)
            result["auprc_ci"] = np.percentile(aps, q)
    return jsonable(result)


def patient_level(
    nodule_ids: Sequence, patient_ids: Sequence, y_true: ArrayLike, y_score: ArrayLike
) -> tuple[list, np.ndarray, np.ndarray]:
    """(patient ids in order of first appearance, patient labels, patient risks).

    Risk = max score over the patient's nodules; label = max over its known nodule labels,
    NaN (unknown) when none is known.
    """
    nodule_ids, patient_ids = list(nodule_ids), list(patient_ids)
    y = label_array(y_true)
    s = np.asarray(y_score, dtype=float).ravel()
    if not len(nodule_ids) == len(patient_ids) == len(y) == len(s):
        raise InputError(
            f"got {len(nodule_ids)} nodule ids, {len(patient_ids)} patient ids, {len(y)} labels and "
            f"{len(s)} scores; give one of each per nodule"
        )
    seen: set = set()
    for nid in nodule_ids:
        if nid in seen:
            raise InputError(f"nodule {nid!r} appears twice; give each nodule once before aggregating to patients")
        seen.add(nid)
    if not np.all(np.isfinite(s)):
        bad = int(np.flatnonzero(~np.isfinite(s))[0])
        raise InputError(f"nodule {nodule_ids[bad]!r} has score {s[bad]}; every nodule needs a finite score")
    risk: dict = {}
    label: dict = {}
    for pid, lab, score in zip(patient_ids, y, s, strict=True):
        risk[pid] = max(risk.get(pid, -np.inf), score)
        label[pid] = np.fmax(label.get(pid, np.nan), lab)  # fmax ignores NaN (unknown)
    pids = list(risk)
    return pids, np.array([label[p] for p in pids], dtype=float), np.array([risk[p] for p in pids], dtype=float)


def calibration_curve(y_true: ArrayLike, y_prob: ArrayLike, n_bins: int = 10, strategy: str = "uniform") -> dict:
    """Reliability bins (sklearn's calibration_curve) with the count of cases per non-empty bin; JSON-safe.

    Also `ece`, the expected calibration error (sum over bins of count / n x |observed - mean predicted|),
    and `brier`, the Brier score of the same cases.
    """
    y, p, n_unknown = known_cases(y_true, y_prob)
    if len(y) == 0:
        raise InputError("calibration needs labelled cases; every label here is unknown")
    if p.min() < 0 or p.max() > 1:
        raise InputError("calibration needs probabilities in [0, 1]; apply a sigmoid/softmax to the scores first")
    if strategy not in ("uniform", "quantile"):
        raise InputError(f"calibration strategy {strategy!r} is not 'uniform' or 'quantile'")
    prob_true, prob_pred = _sk_calibration_curve(y, p, n_bins=n_bins, strategy=strategy)
    # the same edges and bin assignment as sklearn, to report how many cases each bin holds
    if strategy == "quantile":
        edges = np.percentile(p, np.linspace(0, 100, n_bins + 1))
    else:
        edges = np.linspace(0.0, 1.0, n_bins + 1)
    counts = np.bincount(np.searchsorted(edges[1:-1], p), minlength=n_bins)
    filled = counts[counts > 0]
    ece = float(np.sum(filled / len(y) * np.abs(prob_true - prob_pred))) if len(filled) == len(prob_true) else None
    return jsonable({
        "prob_true": prob_true, "prob_pred": prob_pred, "count": filled,
        "edges": edges, "n_bins": n_bins, "strategy": strategy, "n": len(y), "n_unknown": n_unknown,
        "ece": ece, "brier": brier_score(y, p),
    })


def brier_score(y_true: ArrayLike, y_prob: ArrayLike) -> float:
    """Mean squared difference between probability and label over the labelled cases (unknown labels left out)."""
    y, p, _ = known_cases(y_true, y_prob)
    if len(y) == 0:
        raise InputError("the Brier score needs labelled cases; every label here is unknown")
    if p.min() < 0 or p.max() > 1:
        raise InputError("the Brier score needs probabilities in [0, 1]; apply a sigmoid/softmax to the scores first")
    return float(np.mean((p - y) ** 2))

"""Significance tests for comparing models: DeLong's test for two correlated AUROCs on the same
cases, Friedman + Nemenyi across several models over folds or data sets (Demsar 2006), and the
Wilcoxon signed-rank test for two models over folds or data sets.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import pandas as pd
import scikit_posthocs
from scipy import stats

from noduleclip.atomic import jsonable
from noduleclip.errors import InputError
from noduleclip.metrics.classification import known_cases, single_class_reason


class DelongResult(NamedTuple):
    auc_a: float
    auc_b: float
    z: float
    p: float


def delong_covariance(y_true: Sequence, *scores: Sequence) -> tuple[np.ndarray, np.ndarray]:
    """(AUROC of each score, DeLong covariance matrix of those AUROCs) on the same labelled cases.

    Fast midrank algorithm of Sun & Xu (2014, IEEE Signal Process. Lett. 21:1389); ties count 1/2.
    Unknown labels (NaN, None, -1) are left out.
    """
    if not scores:
        raise InputError("give at least one score vector to compare")
    y, first, n_unknown = known_cases(y_true, scores[0])
    rows = [first] + [known_cases(y_true, s)[1] for s in scores[1:]]
    m, n = int(y.sum()), int(len(y) - y.sum())
    if m == 0 or n == 0:
        raise InputError(f"{single_class_reason(m, n, n_unknown)}; compare models on a set with both classes")
    x = np.stack(rows)  # (k, cases)
    pos, neg = x[:, y == 1], x[:, y == 0]
    rank_pos = stats.rankdata(pos, axis=1)  # midranks within the malignant cases
    rank_neg = stats.rankdata(neg, axis=1)
    rank_all = stats.rankdata(np.concatenate([pos, neg], axis=1), axis=1)
    aucs = rank_all[:, :m].sum(1) / (m * n) - (m + 1) / (2 * n)
    v_pos = (rank_all[:, :m] - rank_pos) / n  # structural components of the malignant cases
    v_neg = 1.0 - (rank_all[:, m:] - rank_neg) / m  # ... and of the benign cases
    cov = np.atleast_2d(np.cov(v_pos)) / m + np.atleast_2d(np.cov(v_neg)) / n
    return aucs, cov


def delong_test(y_true: Sequence, score_a: Sequence, score_b: Sequence) -> DelongResult:
    """DeLong's two-sided test that two models scoring the same cases have equal AUROC: (auc_a, auc_b, z, p)."""
    aucs, cov = delong_covariance(y_true, score_a, score_b)
    diff = aucs[0] - aucs[1]
    var = cov[0, 0] + cov[1, 1] - 2 * cov[0, 1]
    if var <= 1e-300:  # identical rankings (or both perfect): no evidence of a difference
        z = 0.0 if abs(diff) < 1e-15 else float(np.sign(diff) * np.inf)
    else:
        z = float(diff / np.sqrt(var))
    p = float(2 * stats.norm.sf(abs(z)))
    return DelongResult(float(aucs[0]), float(aucs[1]), z, p)


@dataclass
class FriedmanResult:
    """Friedman test over models x blocks (folds or data sets) with Nemenyi pairwise p-values."""

    models: list[str]
    n_blocks: int
    statistic: float  # chi-square with the tie correction (scipy, as R's friedman.test)
    p: float
    average_ranks: dict[str, float]  # 1 = best (highest score), ties share the mean rank
    pairwise_p: pd.DataFrame  # Nemenyi p-values, models x models

    def to_dict(self) -> dict:
        """JSON-safe form: the pairwise table as {model: {model: p}}."""
        return jsonable({
            "models": self.models, "n_blocks": self.n_blocks, "statistic": self.statistic, "p": self.p,
            "average_ranks": self.average_ranks,
            "pairwise_p": {a: {b: self.pairwise_p.loc[a, b] for b in self.models} for a in self.models},
        })


def friedman_nemenyi(scores: Mapping[str, Sequence[float]]) -> FriedmanResult:
    """Friedman test and Nemenyi post-hoc p-values for models scored on the same blocks.

    `scores` maps model name -> its score on each block (e.g. AUROC per fold), in the same block
    order for every model; higher is better (only the reported ranks depend on that).
    """
    models = [str(k) for k in scores]
    if len(models) < 3:
        raise InputError(f"the Friedman test needs at least 3 models, got {len(models)}; use wilcoxon() for two")
    lengths = {len(v) for v in scores.values()}
    if len(lengths) != 1:
        raise InputError(f"every model needs a score on the same blocks; got block counts {sorted(lengths)}")
    table = np.array([np.asarray(v, dtype=float) for v in scores.values()]).T  # (blocks, models)
    if table.shape[0] < 2:
        raise InputError("the Friedman test needs at least 2 blocks (folds or data sets) per model")
    if not np.all(np.isfinite(table)):
        raise InputError("every score must be a finite number; drop blocks where a model has no score")
    statistic, p = stats.friedmanchisquare(*table.T)
    ranks = stats.rankdata(-table, axis=1).mean(axis=0)
    pairwise = scikit_posthocs.posthoc_nemenyi_friedman(table)
    pairwise.index, pairwise.columns = models, models
    return FriedmanResult(
        models=models, n_blocks=int(table.shape[0]), statistic=float(statistic), p=float(p),
        average_ranks={m: float(r) for m, r in zip(models, ranks, strict=True)}, pairwise_p=pairwise,
    )


class WilcoxonResult(NamedTuple):
    statistic: float  # min(R+, R-), the two-sided signed-rank statistic
    p: float
    n: int


def wilcoxon(a: Sequence[float], b: Sequence[float], zero_method: str = "zsplit") -> WilcoxonResult:
    """Wilcoxon signed-rank test (two-sided) for two models scored on the same blocks (scipy).

    Zero differences are split between the two rank sums by default, as Demsar (2006) recommends.
    Differences are rounded to 12 decimals first so that equal decimal differences (0.768-0.763
    and 0.936-0.931) tie instead of being ranked by floating-point noise.
    """
    x, y = np.asarray(a, dtype=float).ravel(), np.asarray(b, dtype=float).ravel()
    if x.shape != y.shape:
        raise InputError(f"the two models have {len(x)} and {len(y)} scores; give both a score on the same blocks")
    if len(x) < 2 or not (np.all(np.isfinite(x)) and np.all(np.isfinite(y))):
        raise InputError("the Wilcoxon test needs at least 2 pairs of finite scores")
    diff = np.round(x - y, 12)
    if not np.any(diff):
        return WilcoxonResult(0.0, 1.0, len(diff))
    res = stats.wilcoxon(diff, zero_method=zero_method)
    return WilcoxonResult(float(res.statistic), float(res.pvalue), len(diff))

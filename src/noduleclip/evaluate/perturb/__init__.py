"""Robustness to acquisition: the fold ensemble's scores of views cut from re-rendered CTs, and their metrics.

    risk = perturbed_risk(ensemble, records, parse_perturbations(["noise=30,smooth=1.5"]))
    rows = robustness_rows(labels, ensemble_risk, risk)

The perturbations themselves (their language, the pure transforms and the re-cutting in processes) live in
`noduleclip.preprocess.acquisition`, which training's acquisition augmentation shares.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from noduleclip.ensemble import RunEnsemble
from noduleclip.evaluate.stats import delong_test
from noduleclip.metrics.classification import classification_metrics
from noduleclip.preprocess.acquisition import Perturbation, perturbed_views

__all__ = ["perturbed_risk", "robustness_rows"]


def robustness_rows(labels: np.ndarray, risk: np.ndarray, perturbed_risk: dict[str, np.ndarray]) -> list[dict]:
    """Per perturbation: nodule-level AUROC, AUPRC, Brier and their change from the unperturbed scores, DeLong's p
    for the AUROC change, and the per-nodule score shift |delta risk| (median, 95th percentile, maximum)."""
    def scores(s):
        m = classification_metrics(labels, s, n_bootstrap=0, allow_single_class=True)
        return {k: m[k] for k in ("auroc", "auprc", "brier")}, m["reason"]

    base, reason = scores(risk)
    rows = [{"perturbation": "none", **base, **{f"delta_{k}": None for k in base}, "delong_p": None,
             "shift_median": 0.0, "shift_p95": 0.0, "shift_max": 0.0, "reason": reason}]
    for name, other in perturbed_risk.items():
        metrics, _ = scores(other)
        shift = np.abs(np.asarray(other, dtype=float) - risk)
        p = delong_test(labels, risk, other).p if base["auroc"] is not None else None
        rows.append({"perturbation": name, **metrics,
                     **{f"delta_{k}": None if base[k] is None or metrics[k] is None else metrics[k] - base[k]
                        for k in base},
                     "delong_p": p, "shift_median": float(np.median(shift)),
                     "shift_p95": float(np.percentile(shift, 95)), "shift_max": float(shift.max()), "reason": reason})
    return rows


def perturbed_risk(ensemble: RunEnsemble, records: Sequence, perturbations: Sequence[Perturbation], seed: int = 0,
                   workers: int = 1) -> dict[str, np.ndarray]:
    """{perturbation name: the fold ensemble's malignancy probability (N,)} of the records under each perturbation,
    their views cut as the run cuts them."""
    views = perturbed_views(records, perturbations, ensemble.settings.views, seed, workers)
    return {name: ensemble.score(v).risk for name, v in views.items()}

"""Robustness to acquisition: re-render the CT as another scanner protocol would, before the views are cut.

Perturbations, all in physical units (mm, HU), whatever the voxel spacing:
- noise=SIGMA[:CORR]  added Gaussian noise of SIGMA HU (as at a lower dose); with CORR mm, the noise is
                      first blurred by a Gaussian of CORR mm (correlated, as CT noise is) and rescaled
                      so that its standard deviation is still SIGMA HU.
- thick=T             slices T mm thick: each voxel becomes the mean over T mm along the slice axis (a box
                      profile with fractional end weights), on the original grid. T <= slice spacing: no change.
- smooth=SIGMA        a smoother reconstruction kernel: Gaussian blur of SIGMA mm.
- sharp=AMOUNT        a sharper kernel: unsharp mask, v + AMOUNT * (v - blur(v)), blur of 1 mm.
A perturbation is one `kind=strength` or several joined by '+' (applied in the order written), e.g.
"noise=20", "thick=3+noise=10". Noise is seeded by (seed, nodule id): the same seed gives the same views.

Each nodule's perturbation runs on a crop of its scan that holds every point its nine views sample, plus
the filters' reach, so an identity perturbation gives exactly the cached views (tests check this).

The package, by job: `spec` (the language: Step, Perturbation, parse_perturbations), `transforms` (pure
functions on a volume), `pool` (re-cutting the views of perturbed scans in worker processes), and here
the fold ensemble's scores of those views (`perturbed_risk`) and their metrics (`robustness_rows`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from noduleclip.ensemble import RunEnsemble
from noduleclip.evaluate.perturb.pool import perturbed_views
from noduleclip.evaluate.perturb.spec import (
    KINDS,
    TRUNCATE,
    UNSHARP_SIGMA_MM,
    Perturbation,
    Step,
    parse_perturbations,
    parse_step,
)
from noduleclip.evaluate.perturb.transforms import (
    add_noise,
    crop_for_views,
    perturb_volume,
    sharpen,
    slab_weights,
    smooth,
    thicken,
)
from noduleclip.evaluate.stats import delong_test
from noduleclip.metrics.classification import classification_metrics

__all__ = [
    "KINDS", "TRUNCATE", "UNSHARP_SIGMA_MM", "Perturbation", "Step", "parse_perturbations", "parse_step",
    "add_noise", "crop_for_views", "perturb_volume", "sharpen", "slab_weights", "smooth", "thicken",
    "perturbed_views", "perturbed_risk", "robustness_rows",
]


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

"""Scores of malignancy predictions: classification metrics with bootstrap intervals, and calibration.

- `classification`: AUROC and AUPRC with bootstrap intervals, operating points at fixed recall, the Brier
  score, patient-level aggregation (a patient's risk is the max over its nodules) and reliability bins.
- `calibration`: the monotone map (isotonic or Platt) from the fold ensemble's probability to a calibrated
  one, fitted on a run's out-of-fold predictions and stored as the run's calibrator.json.

Both are plain numpy/scikit-learn on arrays, below training and evaluation, so that both can use them.
"""

import importlib

_EXPORTS = {
    **dict.fromkeys(("CALIBRATOR_FILE", "CalibrationSettings", "Calibrator", "calibrate_run", "fit_calibrator",
                     "load_calibrator", "read_validation_predictions"), "calibration"),
    **dict.fromkeys(("bootstrap_auroc_auprc", "brier_score", "calibration_curve", "classification_metrics",
                     "known_cases", "operating_points", "patient_level", "single_class_reason"), "classification"),
}
__all__ = list(_EXPORTS)


def __getattr__(name: str):
    """Names are imported on first use: applying a calibrator (predict) should not load scikit-learn."""
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"noduleclip.metrics.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'noduleclip.metrics' has no attribute {name!r}")

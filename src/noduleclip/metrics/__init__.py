"""Scores of malignancy predictions: classification metrics with bootstrap intervals, and calibration.

- `classification`: AUROC and AUPRC with bootstrap intervals, operating points at fixed recall, the Brier
  score, patient-level aggregation (a patient's risk is the max over its nodules) and reliability bins.
- `calibration`: the monotone map (isotonic or Platt) from the fold ensemble's probability to a calibrated
  one, fitted on a run's out-of-fold predictions and stored as the run's calibrator.json.

Both are plain numpy/scikit-learn on arrays, below training and evaluation, so that both can use them.
"""

from noduleclip.metrics.calibration import (
    CALIBRATOR_FILE,
    CalibrationSettings,
    Calibrator,
    calibrate_run,
    fit_calibrator,
    load_calibrator,
    read_validation_predictions,
)
from noduleclip.metrics.classification import (
    bootstrap_auroc_auprc,
    brier_score,
    calibration_curve,
    classification_metrics,
    known_cases,
    operating_points,
    patient_level,
    single_class_reason,
)

__all__ = [
    "CALIBRATOR_FILE", "CalibrationSettings", "Calibrator", "calibrate_run", "fit_calibrator", "load_calibrator",
    "read_validation_predictions", "bootstrap_auroc_auprc", "brier_score", "calibration_curve",
    "classification_metrics", "known_cases", "operating_points", "patient_level", "single_class_reason",
]

"""Prediction with a trained run: risk, calibration, zero-shot semantic profile, panels and DICOM SR.

    from noduleclip.predict import NoduleClip
    model = NoduleClip.load("runs/demo")
    predictions = model.predict("scan/", coords=[(-87.6, 45.2, -120.0)])

Names are imported on first use, so that `noduleclip.predict.calibrate` stays light (training imports it).
"""

import importlib

_EXPORTS = {
    "NoduleClip": "api", "NodulePrediction": "api", "FoldEnsemble": "api", "check_run": "api",
    "Calibrator": "calibrate", "CalibrationSettings": "calibrate", "fit_calibrator": "calibrate",
    "calibrate_run": "calibrate", "load_calibrator": "calibrate",
    "NoduleSite": "sites", "locate_nodules": "sites", "read_image": "sites", "read_nodule_table": "sites",
    "write_outputs": "outputs", "draw_panel": "panel", "build_structured_report": "sr",
}
__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"noduleclip.predict.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'noduleclip.predict' has no attribute {name!r}")

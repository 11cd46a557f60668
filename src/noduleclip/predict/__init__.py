"""Prediction with a trained run: risk, calibration, zero-shot semantic profile, panels and DICOM SR.

    from noduleclip.predict import NoduleClip
    model = NoduleClip.load("runs/demo")
    predictions = model.predict("scan/", coords=[(-87.6, 45.2, -120.0)])

Names are imported on first use, so that `import noduleclip.predict` stays light. The calibrator lives in
`noduleclip.metrics` (training fits it); its names are offered here too, where users look for them.
"""

import importlib

_EXPORTS = {
    "NoduleClip": "api", "NodulePrediction": "api",
    "Calibrator": "metrics", "CalibrationSettings": "metrics", "fit_calibrator": "metrics",
    "calibrate_run": "metrics", "load_calibrator": "metrics",
    "NoduleSite": "sites", "locate_nodules": "sites", "read_image": "sites", "read_nodule_table": "sites",
    "write_outputs": "outputs", "draw_panel": "panel", "build_structured_report": "sr",
}
__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        home = "noduleclip.metrics" if _EXPORTS[name] == "metrics" else f"noduleclip.predict.{_EXPORTS[name]}"
        return getattr(importlib.import_module(home), name)
    raise AttributeError(f"module 'noduleclip.predict' has no attribute {name!r}")

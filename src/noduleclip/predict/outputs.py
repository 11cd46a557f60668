"""The files of a prediction, written all or nothing into one folder.

    write_outputs("out/", predictions, volume, model, dicom_sr=True)

predictions.json (the run, the image, calibration, notes and every nodule's fields), predictions.csv (one
row per nodule: centre, risk, uncalibrated risk, each fold model, the most likely value and probability
of each semantic feature), one panel PNG per nodule (nodule_<id>.png) and, when asked for a DICOM
source, structured_report.dcm (TID 1500). Everything is computed before the first file is written, and
the files appear in the folder only when all of them were written; a folder this call created is removed
again on failure.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from pathlib import Path

from noduleclip.atomic import staged_dir, write_csv
from noduleclip.errors import InputError
from noduleclip.io import Volume
from noduleclip.predict import panel as panel_module  # panel_module.draw_panel: looked up at each call
from noduleclip.predict.sr import build_structured_report
from noduleclip.version import __version__

PREDICTIONS_FORMAT = "noduleclip-predictions"
SR_FILE = "structured_report.dcm"


def panel_name(nodule_id: str, taken: set[str]) -> str:
    """A file name for a nodule's panel that is safe on every file system and unique in the folder."""
    stem = "nodule_" + (re.sub(r"[^A-Za-z0-9._-]+", "_", nodule_id).strip("._") or "unnamed")
    name, n = f"{stem}.png", 2
    while name in taken:
        name, n = f"{stem}_{n}.png", n + 1
    taken.add(name)
    return name


def predictions_document(predictions: Sequence, volume: Volume, model, panels: Sequence[str]) -> dict:
    """The content of predictions.json."""
    calibrator = model.calibrator
    return {
        "format": PREDICTIONS_FORMAT, "format_version": 1, "package_version": __version__,
        "run": str(Path(model.run).resolve()), "image": volume.source, "image_format": volume.metadata.get("format"),
        "series_uid": volume.metadata.get("series_uid"),
        "calibration": None if model.calibration is None else {
            "method": calibrator.method, "reason": calibrator.reason, "n_cases": calibrator.n_cases},
        "notes": list(model.notes),
        "nodules": [{**p.to_dict(), "panel": panel} for p, panel in zip(predictions, panels, strict=True)],
    }


def _csv_rows(predictions: Sequence) -> tuple[list[str], list[list]]:
    folds = len(predictions[0].fold_risks)
    features = list(predictions[0].semantics)
    header = (["nodule_id", "center_x", "center_y", "center_z", "risk", "risk_uncalibrated", "calibration"]
              + [f"fold_{k}" for k in range(folds)] + [c for f in features for c in (f, f"{f}_probability")])
    rows = []
    for p in predictions:
        semantic = [c for f in features for c in p.semantics[f]]
        rows.append([p.nodule_id, *p.center_lps, p.risk, p.risk_uncalibrated, p.calibration or "none",
                     *p.fold_risks, *semantic])
    return header, rows


def _readable(folder: Path) -> None:
    """Give the staged files the permissions of a plain new file (atomic writes start them private)."""
    umask = os.umask(0)
    os.umask(umask)
    for path in folder.iterdir():
        path.chmod(0o666 & ~umask)


def write_outputs(out: str | os.PathLike, predictions: Sequence, volume: Volume, model,
                  dicom_sr: bool = False) -> list[Path]:
    """Write predictions.json, predictions.csv, the panels (and the SR) into `out`; return the files written."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out} is a file; give a folder for the predictions")
    report = None
    if dicom_sr:
        parameters = [f"run folder {Path(model.run).resolve().name}", f"backbone {model.config.backbone}",
                      f"tuning {model.config.tuning}", f"fold models {len(predictions[0].fold_risks)}",
                      f"calibration {model.calibration or 'none'}"]
        report = build_structured_report(volume, predictions, model.views, parameters)
    taken: set[str] = set()
    panels = [panel_name(p.nodule_id, taken) for p in predictions]
    document = predictions_document(predictions, volume, model, panels)
    created = not out.exists()
    try:
        with staged_dir(out) as stage:
            (stage / "predictions.json").write_text(json.dumps(document, indent=2) + "\n")
            write_csv(stage / "predictions.csv", *_csv_rows(predictions))
            for prediction, panel in zip(predictions, panels, strict=True):
                panel_module.draw_panel(prediction, stage / panel, title=Path(volume.source).name)
            if report is not None:
                report.save_as(stage / SR_FILE, enforce_file_format=True)
            _readable(stage)
    except BaseException:
        if created and out.is_dir() and not any(out.iterdir()):
            out.rmdir()
        raise
    names = ["predictions.json", "predictions.csv", *panels] + ([SR_FILE] if report is not None else [])
    return [out / name for name in names]

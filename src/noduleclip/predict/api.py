"""Predict with a trained run: CT + nodule locations -> calibrated malignancy risk with a semantic profile.

    from noduleclip import NoduleClip
    model = NoduleClip.load("runs/demo")
    for nodule in model.predict("scan/", coords=[(-87.6, 45.2, -120.0)]):
        print(nodule.risk, nodule.semantics["margins"])

The risk is the mean of the fold models' image-head probabilities, mapped through the run's calibrator
(calibrator.json, fitted on the out-of-fold predictions at the end of training); a run without one
predicts uncalibrated and says so. The semantic profile is zero-shot: the paper's prompts ("This nodule
margins is spiculated.", "There is cavitation." vs "No findings.") through each fold model's text tower,
softmax within a feature, averaged over the folds; it lists the features that the training texts gave two
or more values (a feature the run never saw vary would carry no information). The fold models are applied by
`noduleclip.ensemble`, as training and `evaluate` apply them, so all three give the same numbers.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

import numpy as np

from noduleclip.ensemble import RunEnsemble
from noduleclip.errors import InputError
from noduleclip.io import Volume
from noduleclip.predict.sites import NoduleSite, locate_nodules, read_image
from noduleclip.preprocess.views import PLANE_NAMES, sample_planes
from noduleclip.semantics.prompts import PAPER, build_prompts


@dataclass
class NodulePrediction:
    """One nodule's prediction: risk (calibrated fold ensemble), semantic profile, view attention, views."""

    nodule_id: str
    center_lps: tuple[float, float, float]  # world mm
    risk: float  # calibrated ensemble probability (the ensemble itself when uncalibrated)
    risk_uncalibrated: float  # mean of the fold models' probabilities
    fold_risks: list[float]
    calibration: str | None  # "isotonic", "platt" or None (uncalibrated)
    semantics: dict[str, tuple[str, float]]  # feature -> (most likely value, its probability)
    semantic_distribution: dict[str, dict[str, float]]  # feature -> {value: probability}
    view_attention: dict[str, float]  # plane name -> MIL attention weight (the nine sum to 1)
    views: np.ndarray = field(repr=False)  # (9, S, S) in [0, 1], for plotting
    notes: list[str] = field(default_factory=list)
    field_of_view: int | None = None  # the central N x N pixels (mm) of each view that the model reads; None: all

    def to_dict(self) -> dict:
        """JSON-ready fields (without the views)."""
        return {
            "nodule_id": self.nodule_id, "center_lps": list(self.center_lps), "risk": self.risk,
            "risk_uncalibrated": self.risk_uncalibrated, "fold_risks": list(self.fold_risks),
            "calibration": self.calibration,
            "semantics": {f: {"value": v, "probability": p} for f, (v, p) in self.semantics.items()},
            "semantic_distribution": self.semantic_distribution, "view_attention": self.view_attention,
            "field_of_view_mm": self.field_of_view, "notes": list(self.notes),
        }


class NoduleClip:
    """A trained run ready to predict: its fold ensemble, calibrator and zero-shot prompts."""

    def __init__(self, ensemble: RunEnsemble):
        if ensemble.run is None or ensemble.settings is None:
            raise InputError("NoduleClip needs a run's ensemble; load one with NoduleClip.load(RUN)")
        self.ensemble, self.run, settings = ensemble, ensemble.run, ensemble.settings
        self.views = settings.views  # how this run cuts a nodule's nine views
        self.config = ensemble.network.config  # the fold models' ModelConfig (backbone, tuning, sizes)
        self.calibrator = ensemble.calibrator
        # the features the training texts described with two or more values (all of them for older runs)
        trained = settings.text_features
        self.prompts = build_prompts(PAPER, features=trained) if ensemble.has_text and trained != [] else None
        self.timings: dict[str, float] = {}  # seconds per stage of the last prediction
        self.notes = []
        if self.calibrator is None:
            self.notes.append(f"uncalibrated: run {self.run} has no calibrator.json; fit one with "
                              "noduleclip.metrics.calibrate_run(RUN)")
        elif not self.calibrator.fitted:
            self.notes.append(f"uncalibrated: {self.calibrator.reason}")
        if not ensemble.has_text:
            self.notes.append("no semantic profile: this run is vision-only (it has no text tower)")
        elif self.prompts is None:
            self.notes.append("no semantic profile: no semantic feature had two or more values in the training "
                              "manifest")
        if settings.random_init:
            self.notes.append("RANDOM TOWER WEIGHTS: this run's towers are not pretrained; for tests and timing only")

    @classmethod
    def load(cls, run: str | os.PathLike, device: str = "cpu") -> NoduleClip:
        """Load a finished run folder of `noduleclip train` (its fold models, best epoch each, and calibrator).

        The text tower is left out while the run's stored prompt embeddings fit its fold models (see
        `noduleclip.ensemble`): the semantic profile is the same, the load faster."""
        return cls(RunEnsemble.load(run, device, text=False))

    @property
    def calibration(self) -> str | None:
        """The calibration method applied to the risk, or None when the risk is uncalibrated."""
        return self.calibrator.method if self.calibrator is not None and self.calibrator.fitted else None

    def predict(self, image: str | os.PathLike | Volume, coords=None, nodules: str | os.PathLike | None = None,
                mask: str | os.PathLike | None = None) -> list[NodulePrediction]:
        """Predict every nodule of one CT, given as coords [(x, y, z), ...] (LPS mm), a CSV table or a mask."""
        started = time.perf_counter()
        volume = read_image(image)
        sites = locate_nodules(volume, coords=coords, nodules=nodules, mask=mask)
        read_seconds = time.perf_counter() - started
        predictions = self.predict_sites(volume, sites)
        self.timings = {"read": read_seconds, **self.timings}
        return predictions

    def predict_sites(self, volume: Volume, sites: list[NoduleSite]) -> list[NodulePrediction]:
        """Predict nodules already located in a volume (see `locate_nodules`); the scan is not read again."""
        if not sites:
            raise InputError("there are no nodules to predict; give at least one nodule location")
        started = time.perf_counter()
        views = np.stack([sample_planes(volume, site.center_lps, self.views) for site in sites])
        self.timings = {"views": time.perf_counter() - started}
        return self.predict_views(views, sites)

    def predict_views(self, views: np.ndarray, sites: list[NoduleSite]) -> list[NodulePrediction]:
        """Predict from the nodules' nine views (N, 9, S, S) in [0, 1], cut with the run's view settings."""
        scores = self.ensemble.score(np.asarray(views, np.float32))
        self.timings["model"] = self.ensemble.timings["model"]
        profile = self.ensemble.zero_shot(scores, self.prompts) if self.prompts is not None else {}
        self.timings["zero_shot"] = self.ensemble.timings.get("zero_shot", 0.0) if profile else 0.0
        ensemble, attention = scores.risk, scores.attention
        risk = self.ensemble.calibrated(ensemble)
        predictions = []
        for i, site in enumerate(sites):
            distribution = {feature: {value: float(p) for value, p in zip(values, probabilities[i], strict=True)}
                            for feature, (values, probabilities) in profile.items()}
            semantics = {f: max(d.items(), key=lambda item: item[1]) for f, d in distribution.items()}
            predictions.append(NodulePrediction(
                nodule_id=site.nodule_id, center_lps=tuple(float(c) for c in site.center_lps), risk=float(risk[i]),
                risk_uncalibrated=float(ensemble[i]), fold_risks=[float(r) for r in scores.fold_risk[:, i]],
                calibration=self.calibration, semantics=semantics, semantic_distribution=distribution,
                view_attention={name: float(w) for name, w in zip(PLANE_NAMES, attention[i], strict=True)},
                views=np.asarray(views[i]), notes=list(self.notes), field_of_view=self.ensemble.field_of_view))
        return predictions

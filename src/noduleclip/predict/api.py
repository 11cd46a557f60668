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
or more values (a feature the run never saw vary would carry no information). The fold models share their towers' architecture, so
the towers are built once and each fold's trained weights (adapters, MIL, heads) are swapped in turn.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from noduleclip.errors import InputError
from noduleclip.io import Volume
from noduleclip.predict.calibrate import Calibrator, load_calibrator
from noduleclip.predict.sites import NoduleSite, locate_nodules, read_image
from noduleclip.preprocess.views import PLANE_NAMES, sample_planes
from noduleclip.run_folder import read_run_document, train_settings_where
from noduleclip.semantics.prompts import PAPER, PromptSet, build_prompts


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


def check_run(run: str | os.PathLike) -> dict:
    """A run folder's config.json document, after checking (cheaply) that the run and its fold models are there."""
    from noduleclip.train.config import TrainConfig

    run = Path(run)
    document = read_run_document(run)
    for k in range(TrainConfig.from_dict(document["train"], train_settings_where(run)).folds):
        for part in ("done.json", "best/model.json", "best/model.safetensors"):
            if not (run / f"fold_{k}" / part).is_file():
                raise InputError(f"run {run} is incomplete: fold_{k}/{part} is missing; finish it with `noduleclip "
                                 "train` (same options) or give another run")
    return document


class FoldEnsemble:
    """The run's fold models: one network, built once, with each fold's trained weights loaded in turn."""

    def __init__(self, run: Path, folds: int, device: str = "cpu"):
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        from noduleclip.model import load_model, read_model_config
        from noduleclip.model.checkpoint import WEIGHTS_FILE

        first = run / "fold_0" / "best"
        self.model = load_model(first, device=device)
        base, base_document = read_model_config(first)
        expected = {name: tensor.shape for name, tensor in self.model.saved_state_dict().items()}
        self.states = []
        for k in range(folds):
            folder = run / f"fold_{k}" / "best"
            config, document = read_model_config(folder)
            same = [getattr(config, n) == getattr(base, n) for n in ("backbone", "tuning", "image_size", "field_of_view", "tower_fingerprint")]
            if not all(same) or document.get("towers_saved") != base_document.get("towers_saved"):
                raise InputError(f"{folder} holds another kind of model than fold_0 (backbone, tuning or towers differ); "
                                 "the run folder mixes runs, so train it again")
            try:
                state = load_file(str(folder / WEIGHTS_FILE), device=device)
            except (SafetensorError, OSError) as error:
                raise InputError(f"cannot read {folder / WEIGHTS_FILE} ({error}); the run folder is damaged") from None
            if {name: tensor.shape for name, tensor in state.items()} != expected:
                raise InputError(f"{folder / WEIGHTS_FILE} does not fit the run's model; the run folder is damaged")
            self.states.append(state)

    @property
    def has_text(self) -> bool:
        return self.model.text is not None

    def run(self, views: torch.Tensor, prompts: PromptSet | None, timings: dict) -> tuple[np.ndarray, np.ndarray, list]:
        """Per fold: risks (folds, N), attention (folds, N, V) and {feature: (values, N x V probabilities)}."""
        risks, attention, profiles = [], [], []
        timings.update(model=0.0, zero_shot=0.0)
        if prompts is not None:  # the binary features share "No findings.": embed each distinct text once
            started = time.perf_counter()
            texts = list(dict.fromkeys(prompts.texts))
            tokens, rows = self.model.tokenize(texts), [texts.index(t) for t in prompts.texts]
            timings["zero_shot"] += time.perf_counter() - started
        for state in self.states:
            started = time.perf_counter()
            self.model.load_state_dict(state, strict=False)
            output = self.model.predict(views)
            risks.append(output.risk.double().cpu().numpy())
            attention.append(output.view_attention.double().cpu().numpy())
            timings["model"] += time.perf_counter() - started
            if prompts is not None:
                started = time.perf_counter()
                with torch.inference_mode():
                    prompt_embeds = self.model.encode_text(tokens)[rows]
                    similarity = output.image_embeds.to(prompt_embeds) @ prompt_embeds.t()
                scale = float(self.model.scale().detach())
                profiles.append(prompts.probabilities(similarity, scale))
                timings["zero_shot"] += time.perf_counter() - started
        return np.stack(risks), np.stack(attention), profiles


class NoduleClip:
    """A trained run ready to predict: its fold ensemble, calibrator and zero-shot prompts."""

    def __init__(self, run: Path, document: dict, ensemble: FoldEnsemble, calibrator: Calibrator | None):
        from noduleclip.train.config import TrainConfig

        self.run, self.document, self.ensemble, self.calibrator = run, document, ensemble, calibrator
        self.config = TrainConfig.from_dict(document["train"], train_settings_where(run))
        # the features the training texts described with two or more values (all of them for older runs)
        trained = document["manifest"].get("text_features")
        self.prompts = build_prompts(PAPER, features=trained) if ensemble.has_text and trained != [] else None
        self.timings: dict[str, float] = {}  # seconds per stage of the last prediction
        self.notes = []
        if calibrator is None:
            self.notes.append(f"uncalibrated: run {run} has no calibrator.json; fit one with "
                              "noduleclip.predict.calibrate_run(RUN)")
        elif not calibrator.fitted:
            self.notes.append(f"uncalibrated: {calibrator.reason}")
        if not ensemble.has_text:
            self.notes.append("no semantic profile: this run is vision-only (it has no text tower)")
        elif self.prompts is None:
            self.notes.append("no semantic profile: no semantic feature had two or more values in the training manifest")
        if document.get("model", {}).get("random_init"):
            self.notes.append("RANDOM TOWER WEIGHTS: this run's towers are not pretrained; for tests and timing only")

    @classmethod
    def load(cls, run: str | os.PathLike, device: str = "cpu") -> "NoduleClip":
        """Load a finished run folder of `noduleclip train` (its fold models, best epoch each, and calibrator)."""
        from noduleclip.train.config import TrainConfig

        run = Path(run)
        if str(device).startswith("cuda") and not torch.cuda.is_available():
            raise InputError(f"device {device!r} needs a CUDA GPU, and none is available here; use device 'cpu'")
        document = check_run(run)
        calibrator = load_calibrator(run)
        return cls(run, document, FoldEnsemble(run, TrainConfig.from_dict(document["train"], train_settings_where(run)).folds, device), calibrator)

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
        views = np.stack([sample_planes(volume, site.center_lps, self.config.views) for site in sites])
        self.timings = {"views": time.perf_counter() - started}
        return self.predict_views(views, sites)

    def predict_views(self, views: np.ndarray, sites: list[NoduleSite]) -> list[NodulePrediction]:
        """Predict from the nodules' nine views (N, 9, S, S) in [0, 1], cut with the run's view settings."""
        fold_risk, attention, profiles = self.ensemble.run(torch.from_numpy(np.asarray(views, np.float32)),
                                                           self.prompts, self.timings)
        ensemble = fold_risk.mean(axis=0)
        risk = self.calibrator.apply(ensemble) if self.calibration else ensemble
        attention = attention.mean(axis=0)
        predictions = []
        for i, site in enumerate(sites):
            distribution = {}
            for feature in (self.prompts.features if profiles else ()):
                values = self.prompts.values(feature)
                mean = np.mean([profile[feature][1][i] for profile in profiles], axis=0)
                distribution[feature] = {value: float(p) for value, p in zip(values, mean)}
            semantics = {f: max(d.items(), key=lambda item: item[1]) for f, d in distribution.items()}
            predictions.append(NodulePrediction(
                nodule_id=site.nodule_id, center_lps=tuple(float(c) for c in site.center_lps), risk=float(risk[i]),
                risk_uncalibrated=float(ensemble[i]), fold_risks=[float(r) for r in fold_risk[:, i]],
                calibration=self.calibration, semantics=semantics, semantic_distribution=distribution,
                view_attention={name: float(w) for name, w in zip(PLANE_NAMES, attention[i])},
                views=np.asarray(views[i]), notes=list(self.notes), field_of_view=self.config.field_of_view))
        return predictions

"""Apply a finished run: the fold models' risks, image embeddings, view attention and zero-shot probabilities.

    ensemble = RunEnsemble.load("runs/a")                  # refuses an unfinished or damaged run in one sentence
    scores = ensemble.score(views)                         # views: (N, 9, 50, 50) in [0, 1], cut as the run cut them
    scores.risk, scores.fold_risk, scores.attention        # (N,) mean of the folds, (folds, N), (N, 9)
    profile = ensemble.zero_shot(scores, build_prompts(PAPER, features=["margins"]))

This is the one place that turns a run into numbers: training scores its test set here, `evaluate` its
cohort (zero-shot features, perturbations and gallery included) and `predict` a new CT, so the three
give the same numbers for the same nodule. The fold models share their towers, so the network is built
once and each fold's trained tensors (adapters, MIL, projections, heads; whole towers when fine-tuned)
are swapped in turn. Where the bottom image blocks are frozen (probing, LoRA on the top blocks only)
they are the same for every fold: their output is computed once per batch and each fold finishes it.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from noduleclip.errors import InputError
from noduleclip.metrics.calibration import Calibrator, load_calibrator
from noduleclip.model import NoduleClipModel, load_model, read_model_config
from noduleclip.model.checkpoint import WEIGHTS_FILE
from noduleclip.model.symmetry import SQUARE_SYMMETRIES, dihedral_views
from noduleclip.run_folder import RunSettings, check_run_complete, fold_model_folder
from noduleclip.semantics.prompts import PromptSet

Probabilities = dict[str, tuple[tuple[str, ...], np.ndarray]]  # feature -> (class values, N x V)
_SAME_KIND = ("backbone", "tuning", "image_size", "field_of_view", "tower_fingerprint")


@dataclass
class EnsembleScores:
    """Image-only outputs of the fold models for N nodules, as float64 numpy arrays."""

    fold_risk: np.ndarray  # (folds, N) each fold model's malignancy probability (image head)
    fold_embeds: np.ndarray  # (folds, N, D) unit-norm image embeddings
    fold_attention: np.ndarray  # (folds, N, V) MIL attention over the views (each row sums to 1)
    folds: tuple[int, ...]  # which of the run's folds produced the rows

    @property
    def risk(self) -> np.ndarray:
        """(N,) the ensemble's malignancy probability: the mean of the fold models' (uncalibrated)."""
        return self.fold_risk.mean(axis=0)

    @property
    def attention(self) -> np.ndarray:
        """(N, V) the fold models' mean view attention."""
        return self.fold_attention.mean(axis=0)


class RunEnsemble:
    """The fold models of a run: one network with each fold's trained tensors swapped in on demand."""

    def __init__(self, network: NoduleClipModel, states: Sequence[dict[str, torch.Tensor]],
                 settings: RunSettings | None = None, calibrator: Calibrator | None = None, run: Path | None = None):
        if not states:
            raise InputError("an ensemble needs at least one fold model")
        self.network, self.states = network.eval(), list(states)
        self.settings, self.calibrator, self.run = settings, calibrator, run
        self._loaded: int | None = None
        self._prompts: dict[tuple, torch.Tensor] = {}  # (fold, prompt texts) -> prompt embeddings
        self.timings: dict[str, float] = {}  # seconds spent in each part of the last `score` / `zero_shot`

    # -- loading -----------------------------------------------------------------------------------------
    @classmethod
    def load(cls, run: str | os.PathLike, device: str = "cpu") -> RunEnsemble:
        """A finished run folder of `noduleclip train`: its fold models (each fold's best epoch) and calibrator."""
        run = Path(run)
        if str(device).startswith("cuda") and not torch.cuda.is_available():
            raise InputError(f"device {device!r} needs a CUDA GPU, and none is available here; use device 'cpu'")
        _, settings = check_run_complete(run)
        folders = [fold_model_folder(run, k) for k in range(settings.folds)]
        ensemble = cls.from_folders(folders, device)
        ensemble.settings, ensemble.calibrator, ensemble.run = settings, load_calibrator(run), run
        return ensemble

    @classmethod
    def from_folders(cls, folders: Sequence[str | os.PathLike], device: str = "cpu") -> RunEnsemble:
        """The models saved in `folders` (one per fold, all of one kind), with no run around them."""
        folders = [Path(f) for f in folders]
        network = load_model(folders[0], device=device)
        base, base_document = read_model_config(folders[0])
        expected = {name: tensor.shape for name, tensor in network.saved_state_dict().items()}
        states = []
        for folder in folders:
            config, document = read_model_config(folder)
            if any(getattr(config, n) != getattr(base, n) for n in _SAME_KIND) or \
                    document.get("towers_saved") != base_document.get("towers_saved"):
                raise InputError(f"{folder} holds another kind of model than {folders[0]} (backbone, tuning or towers "
                                 "differ); the run folder mixes runs, so train it again")
            states.append(_read_state(folder, expected, device))
        return cls(network, states)

    # -- properties --------------------------------------------------------------------------------------
    @property
    def folds(self) -> int:
        return len(self.states)

    @property
    def has_text(self) -> bool:
        """Whether the models have a text tower (a vision-only run has none: no zero-shot prediction)."""
        return self.network.text is not None

    @property
    def field_of_view(self) -> int | None:
        """The central N x N pixels (mm) of each view that the models read (None: all of it)."""
        return self.network.config.field_of_view

    @property
    def batch_size(self) -> int:
        return self.settings.batch_size if self.settings is not None else 32

    def calibrated(self, risk: np.ndarray) -> np.ndarray:
        """`risk` through the run's calibrator; unchanged when the run has none (or it could not fit one)."""
        if self.calibrator is None or not self.calibrator.fitted:
            return np.asarray(risk, dtype=np.float64)
        return self.calibrator.apply(risk)

    def _use_fold(self, k: int) -> None:
        if self._loaded != k:
            self.network.load_state_dict(self.states[k], strict=False)
            self._loaded = k

    # -- image path --------------------------------------------------------------------------------------
    def score(self, views, batch_size: int | None = None, folds: Sequence[int] | None = None,
              prefixed: bool = False, tta: bool = False) -> EnsembleScores:
        """Risk, embeddings and attention of each fold model (or of `folds`) for views (N, 9, S, S) in [0, 1].

        `prefixed`: `views` holds the views' `image_prefix` (the frozen image blocks' output, as training keeps it).
        `tta`: test-time augmentation: each fold model's mean risk and attention over the eight symmetries of a
        square (every plane of a nodule turned and mirrored alike), and its mean embedding, re-normalised.
        """
        if tta:
            if prefixed:
                raise InputError("test-time augmentation turns the views themselves; give views, not their prefix")
            started = time.perf_counter()
            turned = [self.score(dihedral_views(torch.as_tensor(np.asarray(views), dtype=torch.float32),
                                                torch.full(np.shape(views)[:2], code, dtype=torch.long)),
                                 batch_size, folds) for code in range(SQUARE_SYMMETRIES)]
            embeds = np.mean([t.fold_embeds for t in turned], axis=0)
            embeds /= np.linalg.norm(embeds, axis=-1, keepdims=True)
            self.timings = {"model": time.perf_counter() - started}
            return EnsembleScores(np.mean([t.fold_risk for t in turned], axis=0), embeds,
                                  np.mean([t.fold_attention for t in turned], axis=0), folds=turned[0].folds)
        views = torch.as_tensor(np.asarray(views) if not torch.is_tensor(views) else views, dtype=torch.float32)
        if (views.dim() != 4 and not prefixed) or len(views) == 0:
            raise InputError(f"views must be an array of shape (nodules, 9, height, width), got {tuple(views.shape)}")
        folds = tuple(range(self.folds)) if folds is None else tuple(folds)
        batch_size = batch_size or self.batch_size
        started = time.perf_counter()
        parts: dict[int, list] = {k: [] for k in folds}
        if prefixed:
            for k in folds:
                self._use_fold(k)
                parts[k].append(self.network.predict(None, batch_size, prefix=views))
        elif self.network.frozen_image_blocks > 0 and len(folds) > 1:  # the frozen blocks once for all folds
            for start in range(0, len(views), batch_size):
                prefix = self.network.image_prefix(views[start:start + batch_size], batch_size)
                for k in folds:
                    self._use_fold(k)
                    parts[k].append(self.network.predict(None, batch_size, prefix=prefix))
        else:
            for k in folds:
                self._use_fold(k)
                parts[k].append(self.network.predict(views, batch_size))
        stacked = [[torch.cat([getattr(p, name) for p in parts[k]]).detach().cpu().double().numpy() for k in folds]
                   for name in ("risk", "image_embeds", "view_attention")]
        self.timings = {"model": time.perf_counter() - started}
        return EnsembleScores(*(np.stack(s) for s in stacked), folds=folds)

    # -- text path ---------------------------------------------------------------------------------------
    def prompt_embeddings(self, k: int, texts: Sequence[str]) -> np.ndarray:
        """Fold `k`'s unit-norm embeddings of prompt texts (P, D), computed once per fold and prompt list."""
        if not self.has_text:
            raise InputError("this run is vision-only: its models have no text tower, so there is no zero-shot "
                             "prediction")
        key = (k, tuple(texts))
        if key not in self._prompts:
            self._use_fold(k)
            distinct = list(dict.fromkeys(texts))  # e.g. the binary features share "No findings."
            with torch.inference_mode():
                embeds = self.network.encode_text(distinct)
            rows = [distinct.index(t) for t in texts]
            self._prompts[key] = embeds[rows].detach().cpu().double().numpy()
        return self._prompts[key]

    def clear_prompt_cache(self) -> None:
        """Forget the prompt embeddings kept from earlier `zero_shot` calls (e.g. to time the text tower)."""
        self._prompts.clear()

    def zero_shot(self, scores: EnsembleScores, prompts: PromptSet) -> Probabilities:
        """{feature: (values, N x V)}: each fold model's softmax over a feature's classes (cosine similarity of
        its image embedding with the class prompts, times its own logit scale), averaged over the folds."""
        started = time.perf_counter()
        total: dict[str, np.ndarray] = {}
        for row, k in enumerate(scores.folds):
            prompt_embeds = self.prompt_embeddings(k, prompts.texts)
            self._use_fold(k)
            scale = float(self.network.scale().detach())
            similarity = scores.fold_embeds[row] @ prompt_embeds.T
            for feature, (_, p) in prompts.probabilities(similarity, scale, prompt_embeddings=prompt_embeds).items():
                total[feature] = total.get(feature, 0.0) + p
        self.timings["zero_shot"] = time.perf_counter() - started
        return {f: (prompts.values(f), total[f] / len(scores.folds)) for f in prompts.features}


def _read_state(folder: Path, expected: dict, device: str) -> dict[str, torch.Tensor]:
    """A fold model's saved tensors, checked against the network they are to be loaded into."""
    try:
        state = load_file(str(folder / WEIGHTS_FILE), device=device)
    except (SafetensorError, OSError) as error:
        raise InputError(f"cannot read {folder / WEIGHTS_FILE} ({error}); the run folder is damaged") from None
    if {name: tensor.shape for name, tensor in state.items()} != expected:
        raise InputError(f"{folder / WEIGHTS_FILE} does not fit the run's model; the run folder is damaged")
    return state

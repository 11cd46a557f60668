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

The zero-shot prompts' embeddings depend only on the fold models, so training stores them in the run
(`prompt_embeddings.safetensors`, see `write_prompt_embeddings`). `RunEnsemble.load(run, text=False)`
builds the network without its text tower and reads them there: `predict` saves the text tower's build and
pass. A prompt that the file lacks (or a file written for other fold weights) brings the text tower back.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from noduleclip.atomic import atomic_path, file_sha256
from noduleclip.errors import InputError
from noduleclip.metrics.calibration import Calibrator, load_calibrator
from noduleclip.model import NoduleClipModel, load_model, read_model_config
from noduleclip.model.checkpoint import WEIGHTS_FILE, without_text_path
from noduleclip.model.symmetry import SQUARE_SYMMETRIES, dihedral_views
from noduleclip.run_folder import RunSettings, check_run_complete, fold_model_folder
from noduleclip.semantics.prompts import PAPER, PromptSet, build_prompts

Probabilities = dict[str, tuple[tuple[str, ...], np.ndarray]]  # feature -> (class values, N x V)
_SAME_KIND = ("backbone", "tuning", "image_size", "field_of_view", "tower_fingerprint")
PROMPT_FILE = "prompt_embeddings.safetensors"  # in a run folder: each fold model's embeddings of the paper's prompts


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
                 settings: RunSettings | None = None, calibrator: Calibrator | None = None, run: Path | None = None,
                 folders: Sequence[Path] = ()):
        if not states:
            raise InputError("an ensemble needs at least one fold model")
        self.network, self.states = network.eval(), list(states)
        self.settings, self.calibrator, self.run, self.folders = settings, calibrator, run, list(folders)
        self._loaded: int | None = None
        self._prompts: dict[tuple, torch.Tensor] = {}  # (fold, prompt texts) -> prompt embeddings
        self._stored: list[dict[str, np.ndarray]] | None = None  # per fold: prompt text -> stored embedding
        self.timings: dict[str, float] = {}  # seconds spent in each part of the last `score` / `zero_shot`

    # -- loading -----------------------------------------------------------------------------------------
    @classmethod
    def load(cls, run: str | os.PathLike, device: str = "cpu", text: bool = True) -> RunEnsemble:
        """A finished run folder of `noduleclip train`: its fold models (each fold's best epoch) and calibrator.

        `text=False`: build the network without its text tower while the run's stored prompt embeddings fit its
        fold models; zero-shot reads them (and builds the text tower only for a prompt they lack).
        """
        run = Path(run)
        if str(device).startswith("cuda") and not torch.cuda.is_available():
            raise InputError(f"device {device!r} needs a CUDA GPU, and none is available here; use device 'cpu'")
        _, settings = check_run_complete(run)
        folders = [fold_model_folder(run, k) for k in range(settings.folds)]
        stored = None if text else _read_prompt_file(run, folders)
        ensemble = cls.from_folders(folders, device, image_only=stored is not None)
        ensemble.settings, ensemble.calibrator, ensemble.run, ensemble._stored = (settings, load_calibrator(run), run,
                                                                                  stored)
        return ensemble

    @classmethod
    def from_folders(cls, folders: Sequence[str | os.PathLike], device: str = "cpu",
                     image_only: bool = False) -> RunEnsemble:
        """The models saved in `folders` (one per fold, all of one kind), with no run around them."""
        folders = [Path(f) for f in folders]
        network = load_model(folders[0], device=device, image_only=image_only)
        base, base_document = read_model_config(folders[0])
        expected = {name: tensor.shape for name, tensor in network.saved_state_dict().items()}
        states = []
        for folder in folders:
            config, document = read_model_config(folder)
            if any(getattr(config, n) != getattr(base, n) for n in _SAME_KIND) or \
                    document.get("towers_saved") != base_document.get("towers_saved"):
                raise InputError(f"{folder} holds another kind of model than {folders[0]} (backbone, tuning or towers "
                                 "differ); the run folder mixes runs, so train it again")
            states.append(_read_state(folder, expected, device, network.image_only))
        return cls(network, states, folders=folders)

    def _with_text_tower(self) -> None:
        """Rebuild the network with its text tower (an image-only ensemble asked for a prompt it has not stored)."""
        if not self.network.image_only:
            return
        device = str(self.network.logit_scale.device)
        ensemble = RunEnsemble.from_folders(self.folders, device)
        self.network, self.states, self._loaded = ensemble.network, ensemble.states, None

    # -- properties --------------------------------------------------------------------------------------
    @property
    def folds(self) -> int:
        return len(self.states)

    @property
    def has_text(self) -> bool:
        """Whether the models have a text path (a vision-only run has none: no zero-shot prediction)."""
        return self.network.text is not None or self.network.image_only

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
        if key not in self._prompts and self._stored is not None and all(t in self._stored[k] for t in texts):
            self._prompts[key] = np.stack([self._stored[k][t] for t in texts])
        if key not in self._prompts:
            self._with_text_tower()
            self._use_fold(k)
            distinct = list(dict.fromkeys(texts))  # e.g. the binary features share "No findings."
            with torch.inference_mode():
                embeds = self.network.encode_text(distinct)
            rows = [distinct.index(t) for t in texts]
            self._prompts[key] = embeds[rows].detach().cpu().double().numpy()
        return self._prompts[key]

    def clear_prompt_cache(self) -> None:
        """Forget the prompt embeddings kept from earlier `zero_shot` calls and the run's stored ones (e.g. to time
        the text tower)."""
        self._prompts.clear()
        self._stored = None

    def write_prompt_embeddings(self, texts: Sequence[str] | None = None) -> Path:
        """Store each fold model's embeddings of `texts` (default: all the paper's prompts) in the run folder, with
        the digests of the fold weights they came from, for `load(run, text=False)`."""
        if self.run is None or not self.has_text:
            raise InputError("only a run's ensemble with a text path has prompt embeddings to store")
        texts = list(dict.fromkeys(texts if texts is not None else build_prompts(PAPER).texts))
        tensors = {f"fold_{k}": torch.from_numpy(self.prompt_embeddings(k, texts)).float().contiguous()
                   for k in range(self.folds)}
        metadata = {"texts": json.dumps(texts), "weights": json.dumps(_weight_digests(self.folders))}
        with atomic_path(self.run / PROMPT_FILE) as path:
            save_file(tensors, str(path), metadata=metadata)
        return self.run / PROMPT_FILE

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


def _weight_digests(folders: Sequence[Path]) -> list[str]:
    return [file_sha256(Path(folder) / WEIGHTS_FILE) for folder in folders]


def _read_prompt_file(run: Path, folders: Sequence[Path]) -> list[dict[str, np.ndarray]] | None:
    """Per fold, prompt text -> the embedding stored in the run; None without a file that fits these fold weights."""
    path = run / PROMPT_FILE
    if not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            texts, weights = json.loads(metadata["texts"]), json.loads(metadata["weights"])
            if weights != _weight_digests(folders):
                return None  # written for other fold weights (a fold trained again): the text tower decides
            tables = [handle.get_tensor(f"fold_{k}").double().numpy() for k in range(len(folders))]
    except (SafetensorError, OSError, KeyError, ValueError, TypeError):
        return None  # unreadable: only a shortcut is lost, the text tower gives the same embeddings
    if any(table.shape[0] != len(texts) for table in tables):
        return None
    return [dict(zip(texts, table, strict=True)) for table in tables]


def _read_state(folder: Path, expected: dict, device: str, image_only: bool = False) -> dict[str, torch.Tensor]:
    """A fold model's saved tensors, checked against the network they are to be loaded into (an image-only one takes
    all but the text path's)."""
    try:
        state = load_file(str(folder / WEIGHTS_FILE), device=device)
    except (SafetensorError, OSError) as error:
        raise InputError(f"cannot read {folder / WEIGHTS_FILE} ({error}); the run folder is damaged") from None
    if image_only:
        state = without_text_path(state, expected)
    if {name: tensor.shape for name, tensor in state.items()} != expected:
        raise InputError(f"{folder / WEIGHTS_FILE} does not fit the run's model; the run folder is damaged")
    return state

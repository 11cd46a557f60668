"""What marks a folder as a training run (config.json with the run format and its version), and what applying a
finished run reads from it.

Kept apart from the training code so that reading a run (to predict, say) does not import it.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from noduleclip.errors import InputError
from noduleclip.model.backbones import DEFAULT_BACKBONE, config_from_dict
from noduleclip.preprocess.views import ViewConfig
from noduleclip.typed_json import read_json_object
from noduleclip.version import __version__

RUN_FORMAT = "noduleclip-run"
RUN_FORMAT_VERSION = 1
DONE_FILE = "done.json"  # in fold_<k>/: written when the fold has finished (its best model is final)
FOLD_MODEL = "best"  # in fold_<k>/: the model of the epoch with the best validation AUROC


def read_run_document(run: Path, missing_ok: bool = False) -> dict | None:
    """A run folder's config.json, refusing a damaged, foreign or other-version one in one sentence.

    A folder without config.json is None when `missing_ok` (a run about to start), else an error.
    """
    run = Path(run)
    path = run / "config.json"
    if not path.is_file():
        if missing_ok:
            return None
        if not run.is_dir():
            raise InputError(f"run {run} is not a folder; give the --out folder of `noduleclip train`")
        raise InputError(f"run {run} is not a noduleclip run folder, or an incomplete one: config.json is missing; "
                         "give the folder of a finished `noduleclip train` run")
    document = read_json_object(path, "the run folder is damaged, so train it again")
    if document.get("format") != RUN_FORMAT:
        raise InputError(f"{path} is not a noduleclip run configuration; give the folder of a `noduleclip train` run")
    version = document.get("format_version")
    if version != RUN_FORMAT_VERSION:
        raise InputError(f"run {run} has run format version {version} (written by noduleclip "
                         f"{document.get('package_version', '?')}), but noduleclip {__version__} reads version "
                         f"{RUN_FORMAT_VERSION}; use that noduleclip version or train the run again")
    if not isinstance(document.get("train"), dict):
        raise InputError(f"{path} has no object under the key 'train' (the training settings); the run folder is "
                         "damaged, so train it again")
    return document


def train_settings_where(run: Path) -> str:
    """How messages name a run's training settings: its config.json and the key they sit under."""
    return f"{Path(run) / 'config.json'} (its 'train' settings)"


@dataclass(frozen=True)
class RunSettings:
    """What applying a finished run needs from its config.json."""

    folds: int  # cross-validation folds: one model each
    views: ViewConfig  # how the run cut its views (a new CT must be cut the same way)
    batch_size: int  # nodules per inference batch
    text_features: list[str] | None  # features the training texts gave two or more values (None: older runs)
    random_init: bool  # the towers are not pretrained (tests and timing only)


@dataclass
class _AppliedSettings:
    """The part of config.json's training settings that applying the run reads (TrainConfig's names and defaults)."""

    backbone: str = DEFAULT_BACKBONE
    folds: int = 5
    eval_batch_size: int = 32
    views: ViewConfig = field(default_factory=ViewConfig)


def read_run_settings(run: Path, document: dict) -> RunSettings:
    """The settings of `document` (the run's config.json) that applying the run needs, checked in one sentence each
    (unknown keys among them, wrong types, an unknown backbone, values that cannot work)."""
    where, train = train_settings_where(run), document["train"]
    remedy = "train the run again, or use the noduleclip version that wrote it"
    read = {name: train[name] for name in ("backbone", "folds", "eval_batch_size", "views") if name in train}
    applied = config_from_dict(_AppliedSettings, read, where, remedy)
    checks = ((applied.folds >= 2, f"folds={applied.folds}: cross-validation needs at least 2 folds"),
              (applied.eval_batch_size >= 1, f"eval batch size {applied.eval_batch_size} must be at least 1"))
    for ok, problem in checks:
        if not ok:
            raise InputError(f"{where} has a setting that cannot work ({problem}); {remedy}")
    manifest, model = document.get("manifest"), document.get("model")
    text_features = manifest.get("text_features") if isinstance(manifest, dict) else None
    if text_features is not None and not (isinstance(text_features, list)
                                          and all(isinstance(f, str) for f in text_features)):
        raise InputError(f"{Path(run) / 'config.json'} has 'manifest.text_features' {text_features!r}, not a list of "
                         f"feature names; {remedy}")
    random_init = bool(model.get("random_init")) if isinstance(model, dict) else False
    return RunSettings(applied.folds, applied.views, applied.eval_batch_size, text_features, random_init)


MODEL_CARD_JSON = "model_card.json"  # the fields of MODEL_CARD.md (noduleclip.train.model_card writes both)


def model_card_summary(run: str | os.PathLike) -> str | None:
    """One line about a run from its model_card.json: backbone, tuning, cross-validated AUROC with its interval and
    the training data's size, e.g. "dinov2-s+minilm (lora), cross-validated AUROC 0.867 [0.798, 0.916], trained on
    198 nodules of 120 patients". None for a run without a card (trained before cards) or with an unreadable one:
    the line only informs, so it never stops a prediction."""
    path = Path(run) / MODEL_CARD_JSON
    try:
        card = json.loads(path.read_text())
        model, data = card["model"], card["training_data"]["cross_validation"]
        auroc = card["results"]["cross_validated"]["nodule"]
        line = f"{model['backbone']} ({model['tuning']})"
        if auroc.get("auroc") is not None:
            ci = auroc.get("auroc_ci")
            line += f", cross-validated AUROC {auroc['auroc']:.3f}" + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "")
        else:
            line += ", no cross-validated AUROC"
        return line + f", trained on {data['nodules']} nodules of {data['patients']} patients"
    except (OSError, ValueError, KeyError, TypeError, IndexError):
        return None


def fold_model_folder(run: Path, fold: int) -> Path:
    """The folder of fold `fold`'s final model in a run."""
    return Path(run) / f"fold_{fold}" / FOLD_MODEL


def check_run_complete(run: str | os.PathLike) -> tuple[dict, RunSettings]:
    """A finished run's config.json document and settings, after checking (cheaply) that every fold has finished and
    left its model; otherwise one sentence naming what is missing and what to do."""
    run = Path(run)
    document = read_run_document(run)
    settings = read_run_settings(run, document)
    for k in range(settings.folds):
        for part in (DONE_FILE, f"{FOLD_MODEL}/model.json", f"{FOLD_MODEL}/model.safetensors"):
            if not (run / f"fold_{k}" / part).is_file():
                raise InputError(f"run {run} is incomplete: fold_{k}/{part} is missing; finish it with `noduleclip "
                                 "train` (same options) or give another run")
    return document, settings

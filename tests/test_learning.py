"""Does training learn? A short run on a cohort with a strong signal must end with a falling training loss, a
validation loss clearly below that of predicting the prevalence, and a high out-of-fold AUROC of the last-epoch
models; the same run with a learning rate too small to move the weights must do none of this, which shows that
the thresholds below tell a trained model from an untrained one.

The cohort is helpers.write_cohort (malignant nodules are larger and denser). The `tiny` backbone's random towers
embed every whole 50 mm view almost alike (cosine similarity above 0.99 between the classes), so learning would
take tens of epochs; a 16 mm field of view lets the nodule fill the encoder's input and the model learns in a few.
Within one fold even the untrained model often ranks the nodules perfectly (by size, with a random sign), so the
AUROC is pooled over the folds' validation nodules: that needs the right sign and a common scale in every fold.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from helpers import BASE, read_log, read_rows, write_cohort
from noduleclip.model import load_model
from noduleclip.preprocess.cache import ViewCache
from noduleclip.train import SplitPlan, TrainConfig, train_run

# 24 patients (30 labelled nodules, 2 folds of about 15), 8 epochs without early stopping, plain shuffling
SETTINGS = {**BASE, "epochs": 8, "lr": 1e-3, "field_of_view": 16, "patience": 0, "sampler": "none", "bootstrap": 0,
            "test_fraction": 0.0}
LOSS_DROP = 0.1  # the training malignancy loss falls by more than this in every fold (untrained: ~0.01 at most)
BELOW_CHANCE = 0.05  # the last validation loss is this far below the prevalence's entropy (untrained: not below)
AUROC = 0.85  # pooled out-of-fold AUROC of the last-epoch models (untrained: about 0.5)


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    root = tmp_path_factory.mktemp("learning")
    return write_cohort(root / "data", patients=24), root / "cache"


def entropy(prevalence: float) -> float:
    """The cross-entropy of always predicting the prevalence: what a model that learned nothing can reach."""
    return -(prevalence * math.log(prevalence) + (1 - prevalence) * math.log(1 - prevalence))


def learning_curves(run, manifest, cache, config: TrainConfig) -> list[dict]:
    """Per fold: first and last epoch's training losses and validation loss, the constant predictor's loss on the
    fold's validation nodules, and the last-epoch model's risks and labels of those nodules."""
    labels = {r["nodule_id"]: r["label"] for r in read_rows(manifest)}
    plan = SplitPlan.read_csv(run / "splits.csv")
    views = ViewCache(cache, config.views, create=False)
    epochs = [e for e in read_log(run) if e["event"] == "epoch"]
    folds = []
    for k in range(config.folds):
        logged = [e for e in epochs if e["fold"] == k]
        assert [e["epoch"] for e in logged] == list(range(1, config.epochs + 1))
        ids = [n for n in plan.fold(k)[1] if labels[n] != ""]
        y = np.array([int(labels[n]) for n in ids])
        risk = load_model(run / f"fold_{k}" / "last").predict_risk(torch.from_numpy(views.load_many(ids))).numpy()
        folds.append({"first": logged[0], "last": logged[-1], "chance": entropy(y.mean()), "labels": y, "risk": risk})
    return folds


def test_training_learns_the_labels(cohort, tmp_path):
    manifest, cache = cohort
    config = TrainConfig(**SETTINGS, cache=str(cache))
    result = train_run(manifest, tmp_path / "run", config)
    folds = learning_curves(result.run, manifest, cache, config)
    for k, fold in enumerate(folds):
        first, last = fold["first"], fold["last"]
        assert last["train"]["image"] < first["train"]["image"] - LOSS_DROP, (k, first["train"], last["train"])
        assert last["train"]["total"] < first["train"]["total"] - LOSS_DROP, (k, first["train"], last["train"])
        assert last["val"]["loss"] < fold["chance"] - BELOW_CHANCE, (k, last["val"], fold["chance"])
        # the log's validation loss is that of the last-epoch model saved in fold_k/last
        p = np.clip(fold["risk"], 1e-7, 1 - 1e-7)
        y = fold["labels"]
        assert last["val"]["loss"] == pytest.approx(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)), abs=1e-6)
    pooled = roc_auc_score(np.concatenate([f["labels"] for f in folds]), np.concatenate([f["risk"] for f in folds]))
    assert pooled > AUROC


def test_a_learning_rate_too_small_to_move_the_weights_learns_nothing(cohort, tmp_path):
    """The same run with lr 1e-7: the thresholds of the test above must fail, or they would not show learning."""
    manifest, cache = cohort
    config = TrainConfig(**{**SETTINGS, "lr": 1e-7}, cache=str(cache))
    result = train_run(manifest, tmp_path / "run", config)
    for k, fold in enumerate(learning_curves(result.run, manifest, cache, config)):
        first, last = fold["first"], fold["last"]
        assert last["train"]["image"] > first["train"]["image"] - LOSS_DROP / 3, (k, first["train"], last["train"])
        assert last["val"]["loss"] > fold["chance"] - BELOW_CHANCE / 2, (k, last["val"], fold["chance"])
        assert np.ptp(fold["risk"]) < 0.1  # all but the same risk for every nodule

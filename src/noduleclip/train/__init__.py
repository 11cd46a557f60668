"""Training: patient-level cross-validation, one model per fold, the fold ensemble on the test set, resumable runs.

    from noduleclip.train import TrainConfig, train_run
    result = train_run("manifest.csv", "runs/a", TrainConfig(epochs=20))
    print(result.summary)

A finished run is applied with `noduleclip.ensemble.RunEnsemble.load("runs/a")`.

Names are imported on first use, so that `noduleclip.train.splits` stays light (no torch).
"""

import importlib

_EXPORTS = {
    "TrainConfig": "config",
    "RunResult": "cv", "train_run": "cv",
    "EpochBatches": "dataset", "NoduleDataset": "dataset", "class_weights": "dataset",
    "sampling_weights": "dataset", "semantic_weights": "dataset",
    "SplitPlan": "splits", "make_splits": "splits",
}
__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"noduleclip.train.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'noduleclip.train' has no attribute {name!r}")

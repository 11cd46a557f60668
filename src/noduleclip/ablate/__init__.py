"""Ablations (the paper's Table 4): the tuning methods, a vision-only and a semantic-only model on one
set of splits, and the statistics that compare them.

    from noduleclip.ablate import run_ablation, read_model_scores, ablation_table
    result = run_ablation("manifest.csv", "runs/ablation", TrainConfig(folds=5))
    table = ablation_table([read_model_scores(result.out / m) for m in result.models], reference="lora")

Names are imported on first use, so that the semantic baseline stays light (no torch).
"""

import importlib

_EXPORTS = {
    "MODELS": "runner", "AblationResult": "runner", "run_ablation": "runner", "parse_models": "runner",
    "shared_splits": "runner", "available_models": "runner", "run_semantic": "runner",
    "SemanticConfig": "semantic_baseline", "SemanticBaseline": "semantic_baseline",
    "fit_semantic_baseline": "semantic_baseline", "semantic_cv": "semantic_baseline",
    "semantic_cv_table": "semantic_baseline", "feature_rows": "semantic_baseline",
    "ModelScores": "tables", "model_scores": "tables", "read_model_scores": "tables", "ablation_table": "tables",
    "format_table": "tables", "mean_sd": "tables",
    "write_ablation_report": "ablation_report",
}
__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"noduleclip.ablate.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'noduleclip.ablate' has no attribute {name!r}")

"""scripts/synthetic_feature_weights.py recovers a synthetic cohort's own risk model from its risks."""

import importlib.util
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from noduleclip.synth.features import sample_features
from noduleclip.synth.risk import feature_logit

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "synthetic_feature_weights.py"
spec = importlib.util.spec_from_file_location("synthetic_feature_weights", SCRIPT)
weights_script = importlib.util.module_from_spec(spec)
spec.loader.exec_module(weights_script)


def cohort(count: int = 600, seed: int = 3) -> tuple[pd.DataFrame, np.ndarray]:
    """Manifest columns of sampled nodules and their true log-odds (without the intercept)."""
    rng = np.random.default_rng(seed)
    rows, logits = [], []
    for i in range(count):
        features = sample_features(rng)
        features = replace(features, long_diameter_mm=round(features.long_diameter_mm, 1))  # as the manifest has it
        rows.append({"nodule_id": f"n{i}", **features.columns()})
        logits.append(feature_logit(features))
    return pd.DataFrame(rows).set_index("nodule_id"), np.array(logits)


def test_the_cohorts_own_log_odds_give_back_its_weights():
    manifest, logits = cohort()
    X, truth = weights_script.design(manifest)
    weights, scale, r2, _ = weights_script.feature_weights(pd.Series(0.5 * logits - 1.0, index=X.index), X)
    assert scale == pytest.approx(0.5) and r2 == pytest.approx(1.0)
    assert set(weights) <= set(truth) and len(weights) >= 20
    for name, weight in weights.items():
        assert weight == pytest.approx(truth[name], abs=1e-6), name
    assert truth["margins = spiculated (vs smooth)"] == pytest.approx(4.5)  # margins: every nodule has one


def test_a_model_that_reads_only_size_gets_no_other_weight():
    manifest, _ = cohort()
    X, _ = weights_script.design(manifest)
    noise = np.random.default_rng(0).normal(0.0, 0.01, len(X))
    weights, scale, _, _ = weights_script.feature_weights(pd.Series(2.0 * X["log2 diameter / 10 mm"] + noise), X)
    assert scale == pytest.approx(2.0 / 4.8, rel=1e-2)
    assert all(abs(w) < 0.05 for name, w in weights.items() if not name.startswith("log2"))


def test_a_manifest_without_features_is_refused_in_one_sentence(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    pd.DataFrame({"fold": [0, 0], "patient_id": ["p", "q"], "nodule_id": ["a", "b"], "label": [0, 1],
                  "probability": [0.2, 0.7]}).to_csv(run / "val_predictions.csv", index=False)
    manifest = tmp_path / "manifest.csv"
    table = pd.DataFrame({"patient_id": ["p", "q"], "nodule_id": ["a", "b"], "long_diameter_mm": [5, 9]})
    table.to_csv(manifest, index=False)
    assert weights_script.main([str(run), str(manifest)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "synthetic cohort" in err and "margins" in err


def test_a_model_whose_risk_falls_with_size_is_refused():
    manifest, logits = cohort(200)
    X, _ = weights_script.design(manifest)
    with pytest.raises(ValueError, match="do not rise with the diameter"):
        weights_script.feature_weights(pd.Series(-logits, index=X.index), X)

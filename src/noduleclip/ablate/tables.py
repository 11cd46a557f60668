"""Table 4 of the paper: the ablation models side by side, with the tests that compare them.

    scores = [read_model_scores(out / m) for m in available_models(out)]
    table = ablation_table(scores, reference="lora")
    print(format_table(table["columns"], table["rows"]))

Per model: mean ± SD over the folds (sample SD, ddof = 1) of AUROC and AUPRC on each fold's own
validation set (the fold model at its best epoch, which that same set chose) and of each fold model
on the held-out test set; and the fold ensemble's test AUROC/AUPRC with its bootstrap 95% interval
(nodule level, from the run's metrics.json). Statistics, each at `alpha` (0.05):
- Friedman across the tuning methods (finetune, probe, lora) and across all models, blocks = folds,
  with Nemenyi post-hoc p-values (`evaluate.stats.friedman_nemenyi`);
- Wilcoxon signed-rank over folds, the reference model (lora) against each other model;
- DeLong's test between the reference's and each other model's ensemble AUROC on the test nodules.
A cell is starred and bold when its model differs from the reference at p < alpha (Wilcoxon for
fold scores, DeLong for the ensemble). With few folds these tests cannot reach p < alpha at all;
the table's notes say so, with the smallest p the design allows.
"""

from __future__ import annotations

import csv
import json
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy import stats

from noduleclip.atomic import jsonable
from noduleclip.errors import InputError
from noduleclip.evaluate.stats import delong_test, friedman_nemenyi, wilcoxon

SETS = ("validation", "test")
METRICS = ("auroc", "auprc")
TUNING_METHODS = ("finetune", "probe", "lora")
DISPLAY = {"finetune": "full fine-tune", "probe": "linear probe", "lora": "LoRA",
           "vision-only": "vision only (LoRA, no text)", "semantic": "semantic features only (LR)"}
METRIC_NAME = {"auroc": "AUROC", "auprc": "AUPRC"}


@dataclass
class ModelScores:
    """One model's per-fold scores, its ensemble's test metrics and test predictions (for DeLong)."""

    name: str
    folds: dict[str, dict[str, list]]  # set -> metric -> per-fold value (None: that fold lacks a class)
    ensemble: dict = field(default_factory=dict)  # metrics.json test.nodule ({} without a test set)
    test_predictions: dict[str, tuple[float, float]] = field(default_factory=dict)  # nodule -> (label, risk)


def model_scores(name: str, metrics: dict, predictions: Sequence[dict] = ()) -> ModelScores:
    """Scores of one model from its metrics.json content and its predictions.csv rows."""
    val = sorted(metrics["validation"]["folds"], key=lambda f: f["fold"])
    folds = {"validation": {m: [f.get(m) for f in val] for m in METRICS}}
    test = metrics.get("test")
    on_test = [test["folds"][f"fold_{f['fold']}"] for f in val] if test else [{} for _ in val]
    folds["test"] = {m: [f.get(m) for f in on_test] for m in METRICS}
    ensemble = dict(test["nodule"]) if test else {}
    risk = {r["nodule_id"]: (float(r["label"]) if r["label"] != "" else np.nan, float(r["ensemble"]))
            for r in predictions}
    return ModelScores(name, folds, ensemble, risk)


def read_model_scores(folder: str | Path, name: str | None = None) -> ModelScores:
    """Scores of the finished run (or semantic-baseline) folder `folder`; the name defaults to the folder's."""
    folder = Path(folder)
    path = folder / "metrics.json"
    if not path.is_file():
        raise InputError(f"{folder} has no metrics.json; finish that model's run first")
    rows: list[dict] = []
    if (folder / "predictions.csv").is_file():
        with open(folder / "predictions.csv", newline="") as handle:
            rows = list(csv.DictReader(handle))
    return model_scores(name or folder.name, json.loads(path.read_text()), rows)


def mean_sd(values: Sequence) -> tuple[float | None, float | None, int]:
    """(mean, sample SD, count) of the values that are not None; SD is None below two values."""
    known = np.array([v for v in values if v is not None], dtype=float)
    if not len(known):
        return None, None, 0
    return float(known.mean()), (float(known.std(ddof=1)) if len(known) > 1 else None), len(known)


def _paired(scores: Sequence[ModelScores], set_name: str, metric: str) -> dict[str, list[float]]:
    """Each model's fold scores on the folds where every given model has a score."""
    columns = [s.folds[set_name][metric] for s in scores]
    keep = [k for k in range(min(map(len, columns))) if all(c[k] is not None for c in columns)]
    return {s.name: [float(c[k]) for k in keep] for s, c in zip(scores, columns, strict=True)}


def friedman_comparison(scores: Sequence[ModelScores], set_name: str, metric: str, group: str,
                        alpha: float = 0.05) -> dict:
    """Friedman + Nemenyi for these models on one set and metric; a `note` instead when it cannot run."""
    paired = _paired(scores, set_name, metric)
    k, n = len(paired), len(next(iter(paired.values()), []))
    entry = {"set": set_name, "metric": metric, "group": group, "models": list(paired), "n_folds": n,
             "statistic": None, "p": None, "significant": False, "average_ranks": None, "pairwise_p": None,
             "note": None}
    if k < 3:
        return entry | {"note": f"the Friedman test needs at least 3 models; {group} has {k} here"}
    if n < 2:
        return entry | {"note": f"the Friedman test needs at least 2 folds where every model has a score; got {n}"}
    with warnings.catch_warnings():  # scipy divides by zero when every fold ties all models
        warnings.simplefilter("ignore", RuntimeWarning)
        result = friedman_nemenyi(paired).to_dict()
    smallest = float(stats.chi2.sf(n * (k - 1), k - 1))  # every fold ranking the models the same way
    entry |= {"statistic": result["statistic"], "p": result["p"], "average_ranks": result["average_ranks"],
              "pairwise_p": result["pairwise_p"], "smallest_p": smallest}
    if result["p"] is None:
        return entry | {"note": "every fold scores all models alike, so the Friedman test has nothing to rank"}
    entry["significant"] = result["p"] < alpha
    if smallest >= alpha:
        entry["note"] = (f"with {n} folds and {k} models the Friedman test cannot reach p < {alpha:g} "
                         f"(smallest possible p {smallest:.3f}); use more folds")
    return entry


def wilcoxon_comparison(a: ModelScores, b: ModelScores, set_name: str, metric: str, alpha: float = 0.05) -> dict:
    """Two-sided Wilcoxon signed-rank test of a against b over the folds (zero differences split)."""
    paired = _paired([a, b], set_name, metric)
    x, y = paired[a.name], paired[b.name]
    entry = {"set": set_name, "metric": metric, "a": a.name, "b": b.name, "n_folds": len(x), "statistic": None,
             "p": None, "significant": False, "mean_difference": float(np.mean(np.subtract(x, y))) if x else None,
             "note": None}
    if len(x) < 2:
        return entry | {"note": f"the Wilcoxon test needs at least 2 folds with both scores; got {len(x)}"}
    result = wilcoxon(x, y)
    smallest = 2.0 / 2 ** len(x)  # exact two-sided test, all differences of one sign
    entry |= {"statistic": result.statistic, "p": result.p, "significant": result.p < alpha}
    if smallest >= alpha:
        entry["note"] = (f"with {len(x)} folds the Wilcoxon test cannot reach p < {alpha:g} (smallest possible p "
                         f"{smallest:.3f}); use 6 or more folds")
    return entry


def delong_comparison(a: ModelScores, b: ModelScores, alpha: float = 0.05) -> dict:
    """DeLong's test of the two fold ensembles' AUROCs on the test nodules both scored."""
    common = [n for n in a.test_predictions if n in b.test_predictions]
    entry = {"a": a.name, "b": b.name, "n": len(common), "auc_a": None, "auc_b": None, "z": None, "p": None,
             "significant": False, "note": None}
    if not common:
        return entry | {"note": "no test nodules scored by both models (a run without a test set?)"}
    labels = [a.test_predictions[n][0] for n in common]
    try:
        result = delong_test(labels, [a.test_predictions[n][1] for n in common],
                             [b.test_predictions[n][1] for n in common])
    except InputError as error:
        return entry | {"note": str(error)}
    return entry | {"auc_a": result.auc_a, "auc_b": result.auc_b, "z": result.z, "p": result.p,
                    "significant": result.p < alpha}


def _cell(mean: float | None, sd: float | None) -> str:
    if mean is None:
        return "-"
    return f"{mean:.3f}" + (f" ± {sd:.3f}" if sd is not None else "")


def _p_text(p: float | None) -> str:
    return "-" if p is None else ("<0.001" if p < 0.001 else f"{p:.3f}")


def _ensemble_cell(ensemble: dict, metric: str) -> str:
    value, ci = ensemble.get(metric), ensemble.get(f"{metric}_ci")
    if value is None:
        return "-"
    return f"{value:.3f}" + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "")


def ablation_table(scores: Sequence[ModelScores], reference: str = "lora", alpha: float = 0.05) -> dict:
    """Table 4 (columns, rows, bold cells) and every statistic behind it, JSON-safe."""
    if not scores:
        raise InputError("no finished models to tabulate; run the ablation first")
    by_name = {s.name: s for s in scores}
    if reference not in by_name:
        raise InputError(f"reference model {reference!r} is not among the finished models "
                         f"({', '.join(by_name)}); choose one of them")
    ref = by_name[reference]
    wilcoxons = [wilcoxon_comparison(ref, s, set_name, metric, alpha)
                 for s in scores if s is not ref for set_name in SETS for metric in METRICS]
    delongs = [delong_comparison(ref, s, alpha) for s in scores if s is not ref]
    groups = {"tuning methods": [by_name[m] for m in TUNING_METHODS if m in by_name], "all models": list(scores)}
    if len(groups["tuning methods"]) < 3 or len(groups["all models"]) == len(groups["tuning methods"]):
        groups.pop("tuning methods")  # too few to test (the all-models entry says so), or the same models
    friedmans = [friedman_comparison(members, set_name, metric, group, alpha)
                 for group, members in groups.items() for set_name in SETS for metric in METRICS]

    columns = ["model", *(f"{s} {METRIC_NAME[m]}" for s in SETS for m in METRICS),
               "ensemble test AUROC [95% CI]", "ensemble test AUPRC [95% CI]",
               f"Wilcoxon p vs {reference} (test AUROC)", f"DeLong p vs {reference} (ensemble AUROC)"]
    rows, bold, summary = [], set(), {}
    for r, s in enumerate(scores):
        row = [f"{DISPLAY.get(s.name, s.name)} ({s.name})"]
        summary[s.name] = {"ensemble": s.ensemble}
        for set_name in SETS:
            for metric in METRICS:
                mean, sd, n = mean_sd(s.folds[set_name][metric])
                summary[s.name].setdefault(set_name, {})[metric] = {
                    "folds": s.folds[set_name][metric], "mean": mean, "sd": sd, "n": n}
                test = next((w for w in wilcoxons if w["b"] == s.name and w["set"] == set_name
                             and w["metric"] == metric), None)
                star = test is not None and test["significant"]
                row.append(_cell(mean, sd) + (" *" if star else ""))
                if star:
                    bold.add((r, len(row) - 1))
        delong = next((d for d in delongs if d["b"] == s.name), None)
        row.append(_ensemble_cell(s.ensemble, "auroc") + (" *" if delong and delong["significant"] else ""))
        if delong and delong["significant"]:
            bold.add((r, len(row) - 1))
        row.append(_ensemble_cell(s.ensemble, "auprc"))
        test = next((w for w in wilcoxons if w["b"] == s.name and w["set"] == "test" and w["metric"] == "auroc"), None)
        for result in (test, delong):
            row.append("reference" if s is ref else _p_text(result and result["p"]))
            if result and result["significant"]:
                bold.add((r, len(row) - 1))
        rows.append(row)
    notes = sorted({e["note"] for e in wilcoxons + friedmans + delongs if e["note"]})
    return jsonable({
        "alpha": alpha, "reference": reference, "models": [s.name for s in scores], "columns": columns,
        "rows": rows, "bold": sorted(bold), "scores": summary, "wilcoxon": wilcoxons, "delong": delongs,
        "friedman": friedmans, "notes": notes,
    })


def format_table(columns: Sequence[str], rows: Sequence[Sequence]) -> str:
    """A plain-text table with aligned columns (for the terminal and logs)."""
    cells = [list(map(str, columns))] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells]
    return "\n".join([lines[0], "  ".join("-" * w for w in widths), *lines[1:]])

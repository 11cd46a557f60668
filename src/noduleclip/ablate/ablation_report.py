"""The ablation's report: Table 4, the per-fold AUROC figure and the statistics, as report.html + report.json.

    html, js = write_ablation_report(out, table, settings)     # table: tables.ablation_table(...)
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from noduleclip.ablate.tables import DISPLAY, METRIC_NAME, SETS
from noduleclip.plots import plt, save_figure
from noduleclip.report import Figure, Section, Table, Text, write_report


def plot_fold_auroc(table: dict, path: str | os.PathLike) -> Path:
    """Per-fold AUROC of each model as box and points, validation and test side by side (ensemble as a diamond)."""
    models = table["models"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.4), sharey=True)
    for ax, set_name in zip(axes, SETS, strict=True):
        data = [[v for v in table["scores"][m][set_name]["auroc"]["folds"] if v is not None] for m in models]
        ax.boxplot([d if d else [np.nan] for d in data], positions=range(len(models)), widths=0.5,
                   showfliers=False, medianprops={"color": "black"})
        rng = np.random.default_rng(0)
        for i, values in enumerate(data):
            ax.scatter(i + rng.uniform(-0.12, 0.12, len(values)), values, s=22, alpha=0.8, color="tab:blue",
                       zorder=3, label="fold model" if i == 0 else None)
            ensemble = table["scores"][models[i]]["ensemble"].get("auroc") if set_name == "test" else None
            if ensemble is not None:
                ax.scatter([i], [ensemble], marker="D", s=46, color="tab:orange", zorder=4,
                           label="fold ensemble" if i == 0 else None)
        ax.axhline(0.5, ls="--", lw=1, color="grey")
        ax.set_xticks(range(len(models)), models, rotation=20)
        ax.set_title("each fold on its validation set" if set_name == "validation" else "fold models on the test set")
        ax.grid(axis="y", alpha=0.3)
    axes[0].set_ylabel("AUROC")
    axes[1].legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path)


def _friedman_rows(table: dict) -> tuple[list[list], set]:
    rows, bold = [], set()
    for i, f in enumerate(table["friedman"]):
        ranks = ", ".join(f"{m} {r:.2f}" for m, r in (f["average_ranks"] or {}).items())
        rows.append([f["group"], f"{f['set']} {METRIC_NAME[f['metric']]}", len(f["models"]), f["n_folds"],
                     f["statistic"], f["p"], ranks or "-", f["note"] or ""])
        if f["significant"]:
            bold.add((i, 5))
    return rows, bold


def _nemenyi_tables(table: dict) -> list[Table]:
    alpha, out = table["alpha"], []
    for f in table["friedman"]:
        if not f["pairwise_p"] or f["set"] != "test":
            continue
        models = f["models"]
        rows = [[a, *(f["pairwise_p"][a][b] for b in models)] for a in models]
        bold = {(i, j + 1) for i, a in enumerate(models) for j, b in enumerate(models)
                if a != b and f["pairwise_p"][a][b] is not None and f["pairwise_p"][a][b] < alpha}
        out.append(Table(["Nemenyi p", *models], rows, bold=bold,
                         caption=f"Nemenyi post-hoc p-values, {f['group']}, per-fold test {METRIC_NAME[f['metric']]} "
                                 f"({f['n_folds']} folds; bold: p < {alpha:g})"))
    return out


def _settings_blocks(settings: dict) -> list:
    """The run settings as a two-column table, and the splits (a dict of parts) as a table of their own."""
    splits = settings.get("splits") or {}
    blocks = [Table(["setting", "value"], [[k, str(v)] for k, v in settings.items() if k != "splits"])]
    if splits:
        rows = [[part, c["patients"], c["nodules"], c["malignant_patients"]] for part, c in splits.items()]
        blocks.append(Table(["part", "patients", "nodules", "malignant patients"], rows,
                            caption="The shared splits (splits.csv): test set and validation folds"))
    return blocks


def write_ablation_report(out: str | os.PathLike, table: dict, settings: dict) -> tuple[Path, Path]:
    """Write OUT/fold_auroc.png, OUT/report.html and OUT/report.json (Table 4, statistics, settings)."""
    out = Path(out)
    figure = plot_fold_auroc(table, out / "fold_auroc.png")
    alpha, reference = table["alpha"], table["reference"]
    intro = Text(
        "Each model trained on the same patient-level splits (splits.csv): one model per cross-validation fold, "
        "early-stopped on its validation fold, then every fold model and their mean (the fold ensemble) scored on "
        "the held-out test set. Fold columns give mean ± sample SD over the folds (validation scores come from the "
        "set that chose each fold's best epoch, so they run optimistic); ensemble columns give the nodule-level "
        f"AUROC/AUPRC with bootstrap 95% intervals. * and bold: different from {reference} at p < {alpha:g} "
        "(Wilcoxon signed-rank over folds for fold columns, DeLong for the ensemble AUROC).")
    models_text = Text("Models: " + "; ".join(f"{m} = {DISPLAY.get(m, m)}" for m in table["models"]) + ".")
    table4 = Table(table["columns"], table["rows"], caption="Table 4: ablation", bold=set(map(tuple, table["bold"])))
    main = [intro, table4, models_text] + [Text(f"Note: {n}.") for n in table["notes"]]
    friedman_rows, friedman_bold = _friedman_rows(table)
    wilcoxon_rows = [[w["a"], w["b"], f"{w['set']} {METRIC_NAME[w['metric']]}", w["n_folds"], w["mean_difference"],
                      w["statistic"], w["p"], w["note"] or ""] for w in table["wilcoxon"]]
    delong_rows = [[d["a"], d["b"], d["n"], d["auc_a"], d["auc_b"], d["z"], d["p"], d["note"] or ""]
                   for d in table["delong"]]
    sections = [
        Section("Table 4", main),
        Section("Per-fold AUROC", [Figure(figure, "AUROC of each fold model by model: left on its own validation "
                                                  "fold, right on the test set (diamond: the fold ensemble).")]),
        Section("Friedman and Nemenyi", [
            Text("Friedman test over folds (blocks) and models, tie-corrected chi-square; average rank 1 = best."),
            Table(["models", "score", "k", "folds", "chi-square", "p", "average ranks", "note"], friedman_rows,
                  bold=friedman_bold), *_nemenyi_tables(table)]),
        Section(f"Wilcoxon and DeLong against {reference}", [
            Table(["a", "b", "score", "folds", "mean a - b", "W", "p", "note"], wilcoxon_rows,
                  caption="Wilcoxon signed-rank test over folds (two-sided, zero differences split)",
                  bold={(i, 6) for i, w in enumerate(table["wilcoxon"]) if w["significant"]}),
            Table(["a", "b", "test nodules", "AUROC a", "AUROC b", "z", "p", "note"], delong_rows,
                  caption="DeLong's test of the fold ensembles' AUROCs on the same test nodules",
                  bold={(i, 6) for i, d in enumerate(table["delong"]) if d["significant"]})]),
        Section("Settings", _settings_blocks(settings)),
    ]
    return write_report(out / "report.html", "noduleclip ablation (Table 4)", sections,
                        data={"table4": table, "settings": settings},
                        subtitle=f"{len(table['models'])} models, reference {reference}, alpha {alpha:g}")

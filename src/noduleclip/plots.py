"""Figures a person would rather see than read: the nine views, curves, panels (matplotlib, no screen)."""

from __future__ import annotations

import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402

from noduleclip.atomic import atomic_path  # noqa: E402
from noduleclip.errors import InputError  # noqa: E402
from noduleclip.preprocess.views import PLANE_NAMES  # noqa: E402


def save_figure(fig, path: str | os.PathLike, dpi: int = 120) -> Path:
    """Save a figure atomically (as PNG unless the suffix says otherwise) and close it."""
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi, bbox_inches="tight", format=path.suffix.lstrip(".") or "png")
    plt.close(fig)
    return path


def field_of_view_box(size: int, field_of_view: int) -> tuple[float, float, float]:
    """(x0, y0, side) in imshow coordinates of the central `field_of_view` pixels of a `size`-pixel view: the
    pixels that the model's zoom sends to the encoder (the same crop as the model's view transform)."""
    start = (size - field_of_view) // 2
    return start - 0.5, start - 0.5, float(field_of_view)


def view_image(view: np.ndarray) -> np.ndarray:
    """One view as an RGB image: grey in [0, 1], pure blue where it is marked outside the scan (negative)."""
    view = np.asarray(view, dtype=np.float32)
    rgb = np.repeat(np.clip(view, 0.0, 1.0)[..., None], 3, axis=-1)
    rgb[view < 0] = (0.0, 0.0, 1.0)
    return rgb


def draw_views(axes, views: np.ndarray, attention=None, names=PLANE_NAMES, field_of_view: int | None = None) -> None:
    """Draw nine views into nine axes, titled by plane (and attention weight when given); with `field_of_view`,
    a dashed square marks the part of each view the model reads. Pixels marked outside the scan
    (`ViewConfig.mark_outside`) are drawn blue, as the model sees them."""
    views = np.asarray(views, dtype=np.float32)
    top = None if attention is None else int(np.argmax(attention))
    for p, ax in enumerate(np.ravel(axes)):
        ax.imshow(view_image(views[p]), interpolation="nearest")
        n = views.shape[-1]
        ax.plot([n // 2], [n // 2], marker="+", color="tab:red", markersize=8, alpha=0.6)
        if field_of_view is not None and field_of_view < n:
            x0, y0, side = field_of_view_box(n, field_of_view)
            ax.add_patch(Rectangle((x0, y0), side, side, fill=False, edgecolor="tab:cyan", linestyle="--",
                                   linewidth=1.0, alpha=0.8))
        title = names[p]
        if attention is not None:
            title += f"\nattention {attention[p]:.2f}"
            if p == top:
                for spine in ax.spines.values():
                    spine.set_edgecolor("tab:orange")
                    spine.set_linewidth(3)
        ax.set_title(title, fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])


def plot_views(views: np.ndarray, out: str | os.PathLike, title: str = "", attention=None) -> Path:
    """A 3x3 figure of a nodule's nine views (centre marked), written to `out`."""
    fig, axes = plt.subplots(3, 3, figsize=(7.5, 8.2))
    draw_views(axes, views, attention)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return save_figure(fig, out)


def plot_roc_pr(sets: dict[str, tuple], out: str | os.PathLike, title: str = "") -> Path:
    """ROC and precision-recall curves side by side, one line per named (y_true, y_score) set.

    Unknown labels (NaN) are left out; a set with one class only is skipped with a note in the legend.
    """
    from sklearn.metrics import (  # imported on first use: scikit-learn takes a second, `noduleclip views` needs none
        auc,
        average_precision_score,
        precision_recall_curve,
        roc_curve,
    )

    fig, (roc_ax, pr_ax) = plt.subplots(1, 2, figsize=(10, 4.6))
    for name, (y_true, y_score) in sets.items():
        y = np.asarray(y_true, dtype=float)
        s = np.asarray(y_score, dtype=float)
        known = np.isfinite(y)
        y, s = y[known].astype(int), s[known]
        if len(np.unique(y)) < 2:
            roc_ax.plot([], [], label=f"{name}: one class only, no curve")
            continue
        fpr, tpr, _ = roc_curve(y, s)
        prec, rec, _ = precision_recall_curve(y, s)
        line, = roc_ax.plot(fpr, tpr, lw=2, label=f"{name}: AUROC {auc(fpr, tpr):.3f} (n={len(y)})")
        pr_ax.step(rec, prec, where="post", lw=2, color=line.get_color(),
                   label=f"{name}: AUPRC {average_precision_score(y, s):.3f} (prevalence {y.mean():.2f})")
    roc_ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=1)
    roc_ax.set(xlabel="false positive rate", ylabel="true positive rate (recall)", title="ROC", xlim=(0, 1),
               ylim=(0, 1.01))
    pr_ax.set(xlabel="recall", ylabel="precision", title="precision-recall", xlim=(0, 1), ylim=(0, 1.01))
    for ax in (roc_ax, pr_ax):
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(loc="lower right" if ax is roc_ax else "lower left", fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return save_figure(fig, out)


def plot_calibration(sets: dict[str, tuple], out: str | os.PathLike, n_bins: int = 10, title: str = "") -> Path:
    """Reliability diagram (observed malignant fraction vs mean predicted probability per bin) with a histogram
    of the predictions below, one line per named (y_true, y_prob) set; Brier score and ECE in the legend.

    Sets whose scores are not probabilities in [0, 1], or without labelled cases, are skipped with a note.
    """
    from noduleclip.metrics.classification import calibration_curve  # imported on first use: it loads scikit-learn

    fig, (ax, hist) = plt.subplots(2, 1, figsize=(6.2, 6.6), sharex=True, gridspec_kw=dict(height_ratios=(3, 1)))
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=1, label="perfectly calibrated")
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    for name, (y_true, y_prob) in sets.items():
        try:
            cal = calibration_curve(y_true, y_prob, n_bins=n_bins)
        except InputError:
            ax.plot([], [], label=f"{name}: not probabilities or no labels, not shown")
            continue
        line, = ax.plot(cal["prob_pred"], cal["prob_true"], marker="o", lw=1.5,
                        label=f"{name}: Brier {cal['brier']:.3f}, ECE {cal['ece']:.3f} (n={cal['n']})")
        y = np.asarray(y_true, dtype=float)
        hist.hist(np.asarray(y_prob, dtype=float)[np.isfinite(y)], bins=edges, histtype="step", lw=1.5,
                  color=line.get_color())
    ax.set(ylabel="observed malignant fraction", title=title or "calibration (reliability)", xlim=(0, 1),
           ylim=(-0.02, 1.02))
    hist.set(xlabel="predicted malignancy probability", ylabel="nodules")
    for a in (ax, hist):
        a.grid(alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    return save_figure(fig, out)

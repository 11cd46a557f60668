"""One PNG per nodule, readable at a glance: the nine views with their attention, the risk, the semantic profile.

Left, the nine planes through the nodule centre (red cross), each titled with its MIL attention weight,
the most attended one framed in orange; a dashed square marks what a zoomed model reads (--field-of-view).
Right, the malignancy risk in large type with whether it is calibrated (and how) or not, the fold models'
risks beneath it, then the zero-shot semantic profile: one horizontal bar per feature for its most likely
value, with the probability written at the bar's end.
The image is always PANEL_SIZE_PX pixels (no tight cropping), so that reports can lay panels out.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from matplotlib.patches import Rectangle

from noduleclip.atomic import atomic_path
from noduleclip.plots import draw_views, plt
from noduleclip.semantics.schema import FEATURE_BY_NAME

PANEL_DPI = 100
PANEL_SIZE_IN = (14.0, 7.5)
PANEL_SIZE_PX = (int(PANEL_SIZE_IN[0] * PANEL_DPI), int(PANEL_SIZE_IN[1] * PANEL_DPI))  # (width, height)
RISK_COLOUR, BAR_COLOUR, WARN_COLOUR = "#1f3b73", "#4c72b0", "#b22222"


def percent(p: float) -> str:
    """A probability as a percentage a reader takes in at once: 73%, 4.2%, 0.3%."""
    return f"{100 * p:.0f}%" if 0.1 <= p <= 0.995 else f"{100 * p:.1f}%"


def _draw_risk(ax, prediction) -> None:
    ax.axis("off")
    ax.text(0.0, 0.93, "Malignancy risk", fontsize=15, va="top", transform=ax.transAxes)
    ax.text(0.0, 0.70, percent(prediction.risk), fontsize=48, weight="bold", color=RISK_COLOUR, va="top",
            transform=ax.transAxes)
    if prediction.calibration:
        status = f"calibrated ({prediction.calibration}); uncalibrated {percent(prediction.risk_uncalibrated)}"
        colour = "0.25"
    else:
        status, colour = "UNCALIBRATED: the fold ensemble's raw probability", WARN_COLOUR
    ax.add_patch(Rectangle((0.0, 0.27), 0.9, 0.045, color="0.9", transform=ax.transAxes))
    ax.add_patch(Rectangle((0.0, 0.27), 0.9 * prediction.risk, 0.045, color=RISK_COLOUR, transform=ax.transAxes))
    ax.text(0.0, 0.13, status, fontsize=11, color=colour, transform=ax.transAxes)
    folds = "  ".join(percent(r) for r in prediction.fold_risks)
    ax.text(0.0, 0.0, f"fold models: {folds}", fontsize=9, color="0.35", transform=ax.transAxes)


def _draw_semantics(ax, prediction) -> None:
    if not prediction.semantics:
        ax.axis("off")
        note = next((n for n in prediction.notes if n.startswith("no semantic profile")), "no semantic profile")
        ax.text(0.0, 0.9, note, fontsize=11, color="0.3", va="top", wrap=True, transform=ax.transAxes)
        return
    features = list(prediction.semantics)
    labels = [f"{FEATURE_BY_NAME[f].display if f in FEATURE_BY_NAME else f}: {prediction.semantics[f][0]}"
              for f in features]
    probabilities = np.array([prediction.semantics[f][1] for f in features])
    rows = np.arange(len(features))[::-1]
    ax.barh(rows, np.ones_like(probabilities), color="0.93", height=0.72)
    ax.barh(rows, probabilities, color=BAR_COLOUR, height=0.72)
    for row, p in zip(rows, probabilities, strict=True):
        ax.text(min(p, 0.86) + 0.015, row, percent(p), va="center", fontsize=9)
    ax.set_yticks(rows, labels, fontsize=10)
    ax.set_xlim(0, 1)
    ax.set_xticks([0, 0.5, 1], ["0", "50%", "100%"], fontsize=8)
    ax.tick_params(axis="y", length=0)
    for side in ("top", "right", "left"):
        ax.spines[side].set_visible(False)
    ax.set_title("Semantic profile: most likely value (zero-shot)", fontsize=11, loc="left")


def draw_panel(prediction, out: str | os.PathLike, title: str = "") -> Path:
    """Write the nodule's panel (PNG, PANEL_SIZE_PX) to `out`."""
    fig = plt.figure(figsize=PANEL_SIZE_IN, dpi=PANEL_DPI)
    grid = fig.add_gridspec(3, 5, width_ratios=[1, 1, 1, 1.3, 2.3], left=0.01, right=0.985, top=0.9,
                            bottom=0.05, wspace=0.12, hspace=0.32)
    view_axes = np.array([[fig.add_subplot(grid[r, c]) for c in range(3)] for r in range(3)])
    draw_views(view_axes, prediction.views, attention=np.array(list(prediction.view_attention.values())),
               names=list(prediction.view_attention), field_of_view=prediction.field_of_view)
    right = grid[:, 4].subgridspec(2, 1, height_ratios=[1.0, 2.5], hspace=0.12)
    _draw_risk(fig.add_subplot(right[0]), prediction)
    _draw_semantics(fig.add_subplot(right[1]), prediction)
    centre = ", ".join(f"{c:.1f}" for c in prediction.center_lps)
    heading = f"Nodule {prediction.nodule_id} at ({centre}) mm LPS" + (f"  |  {title}" if title else "")
    fig.suptitle(heading, fontsize=12, x=0.01, ha="left")
    warnings = [n for n in prediction.notes if n.startswith("RANDOM")]
    if warnings:
        fig.text(0.01, 0.012, warnings[0], fontsize=9, color=WARN_COLOUR)
    out = Path(out)
    with atomic_path(out) as tmp:
        fig.savefig(tmp, dpi=PANEL_DPI, format="png")
    plt.close(fig)
    return out

"""Error analysis as the paper's Figure 4: the ensemble's most confident mistakes, with their nine views.

False positives here are the benign nodules (label 0) with the highest malignancy probability, false
negatives the malignant ones (label 1) with the lowest: the mistakes any threshold makes first.
Each tile shows the nine views (axial, coronal, sagittal, then the six 45-degree planes), the nodule
id, its label and risk, and the zero-shot findings the model is most sure of.

Computing only: `gallery_tiles` picks the nodules and `plot_gallery` draws gallery.png; the report's
figure and table are built in `evaluation_report`.
"""

from __future__ import annotations

import os
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from noduleclip.errors import InputError
from noduleclip.plots import draw_views, plt, save_figure


@dataclass
class GalleryTile:
    """One nodule of the gallery: where it is in the evaluation, why it is shown, and its caption lines."""

    index: int
    nodule_id: str
    kind: str  # "false positive" or "false negative"
    label: int
    risk: float
    findings: list[str]


def pick_errors(labels: np.ndarray, risk: np.ndarray, n: int) -> tuple[list[int], list[int]]:
    """Indices of the `n` benign nodules with the highest risk and the `n` malignant ones with the lowest."""
    labels, risk = np.asarray(labels, dtype=float), np.asarray(risk, dtype=float)
    benign, malignant = np.flatnonzero(labels == 0), np.flatnonzero(labels == 1)
    fp = benign[np.argsort(-risk[benign], kind="stable")][:n]
    fn = malignant[np.argsort(risk[malignant], kind="stable")][:n]
    return fp.tolist(), fn.tolist()


def gallery_tiles(ids: Sequence[str], labels: np.ndarray, risk: np.ndarray, n: int,
                  findings: Sequence[list[str]] | None = None) -> list[GalleryTile]:
    """The false positives then the false negatives, most confident first."""
    fp, fn = pick_errors(labels, risk, n)
    return [GalleryTile(i, str(ids[i]), kind, int(labels[i]), float(risk[i]), list(findings[i]) if findings else [])
            for kind, picked in (("false positive", fp), ("false negative", fn)) for i in picked]


def plot_gallery(views: np.ndarray, tiles: Sequence[GalleryTile], out: str | os.PathLike, per_row: int = 4,
                 field_of_view: int | None = None) -> Path:
    """One PNG: a row block of false positives, then of false negatives; each tile a 3x3 grid of views (with
    `field_of_view`, the part a zoomed model reads marked on each)."""
    if not tiles:
        raise InputError("the gallery needs at least one false positive or false negative; the set has no labels")
    kinds = [k for k in ("false positive", "false negative") if any(t.kind == k for t in tiles)]
    rows = [[t for t in tiles if t.kind == k][i:i + per_row] for k in kinds
            for i in range(0, sum(t.kind == k for t in tiles), per_row)]
    columns = max(len(r) for r in rows)
    fig = plt.figure(figsize=(2.7 * columns, 3.5 * len(rows)))
    blocks = fig.subfigures(len(rows), columns, squeeze=False, wspace=0.02, hspace=0.03)
    for r, row in enumerate(rows):
        for c in range(columns):
            sub = blocks[r, c]
            if c >= len(row):
                sub.set_visible(False)
                continue
            tile = row[c]
            axes = sub.subplots(3, 3, gridspec_kw=dict(wspace=0.03, hspace=0.03, top=0.84, bottom=0.22,
                                                        left=0.03, right=0.97))
            draw_views(axes, views[tile.index], names=("",) * 9, field_of_view=field_of_view)
            colour = "tab:red" if tile.kind == "false positive" else "tab:blue"
            sub.suptitle(f"{tile.kind}\n{textwrap.shorten(tile.nodule_id, 28)}: risk {tile.risk:.3f} "
                         f"({'malignant' if tile.label else 'benign'})", fontsize=8.5, color=colour, y=0.97)
            caption = "\n".join(textwrap.shorten(f, 38) for f in tile.findings[:3]) or "no zero-shot findings"
            sub.text(0.5, 0.2, caption, ha="center", va="top", fontsize=7.5, color="0.25",
                     transform=sub.transSubfigure)
    return save_figure(fig, out, dpi=110)

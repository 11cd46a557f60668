"""Figures a person would rather see than read: the nine views, curves, panels (matplotlib, no screen)."""

from __future__ import annotations

import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from noduleclip.atomic import atomic_path  # noqa: E402
from noduleclip.preprocess.views import PLANE_NAMES  # noqa: E402


def save_figure(fig, path: str | os.PathLike, dpi: int = 120) -> Path:
    """Save a figure atomically (as PNG unless the suffix says otherwise) and close it."""
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi, bbox_inches="tight", format=path.suffix.lstrip(".") or "png")
    plt.close(fig)
    return path


def draw_views(axes, views: np.ndarray, attention=None, names=PLANE_NAMES) -> None:
    """Draw nine views into nine axes, titled by plane (and attention weight when given)."""
    views = np.asarray(views, dtype=np.float32)
    top = None if attention is None else int(np.argmax(attention))
    for p, ax in enumerate(np.ravel(axes)):
        ax.imshow(views[p], cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
        n = views.shape[-1]
        ax.plot([n // 2], [n // 2], marker="+", color="tab:red", markersize=8, alpha=0.6)
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

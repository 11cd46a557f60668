"""The eight symmetries of a square applied to a nodule's views: training's image augmentation and test-time
augmentation both turn and mirror the planes with `dihedral_views`."""

from __future__ import annotations

import torch

SQUARE_SYMMETRIES = 8  # four quarter turns, each with and without a left-right mirror


def dihedral_views(views: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
    """Views (..., 9, S, S) with plane j turned by codes[..., j] in 0..7: a quarter turn k = code % 4, then
    a left-right mirror when code >= 4 (the eight symmetries of a square). Code 0 leaves a plane as it is."""
    out = views.clone()
    for code in range(1, 8):
        chosen = codes == code
        if bool(chosen.any()):
            planes = torch.rot90(views[chosen], code % 4, dims=(-2, -1))
            out[chosen] = planes.flip(-1) if code >= 4 else planes
    return out

"""A slow reference for the nine views, done the authors' way: resample, crop, rotate, slice.

Kept for tests and the preprocessing benchmark, not used by the pipeline. The whole scan is
resampled to an isotropic LPS-aligned grid (SimpleITK, linear), a cube is cropped around the
nodule, each rotated cube comes from scipy.ndimage.rotate (linear) and the central slices are taken.
The resampled grid is shifted so that the nodule centre falls on a grid point, as the fast path
assumes, so that the two differ only by their interpolation.
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from noduleclip.io.volume import Volume
from noduleclip.preprocess.views import AIR_HU, PLANES, ViewConfig, window


def resample_isotropic(volume: Volume, center_lps, spacing_mm: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Resample the whole scan to an LPS-aligned grid at `spacing_mm` with a grid point on the centre.

    Returns the (z, y, x) array in HU and the LPS position of its voxel (0, 0, 0).
    """
    center = np.asarray(center_lps, dtype=np.float64)
    lo, hi = volume.world_extent()
    start = center - np.ceil((center - lo) / spacing_mm) * spacing_mm
    size = np.floor((hi - start) / spacing_mm).astype(int) + 1
    resampler = sitk.ResampleImageFilter()
    resampler.SetOutputOrigin(tuple(start))
    resampler.SetOutputSpacing((spacing_mm,) * 3)
    resampler.SetOutputDirection(tuple(np.eye(3).ravel()))
    resampler.SetSize([int(s) for s in size])
    resampler.SetInterpolator(sitk.sitkLinear)
    resampler.SetDefaultPixelValue(AIR_HU)
    resampled = resampler.Execute(sitk.Cast(volume.to_sitk(), sitk.sitkFloat32))
    return sitk.GetArrayFromImage(resampled), start


def reference_planes(volume: Volume, center_lps, config: ViewConfig = ViewConfig()) -> np.ndarray:
    """The nine views by resampling the scan and rotating a cropped cube (two interpolations)."""
    iso, start = resample_isotropic(volume, center_lps, config.spacing_mm)
    c = config.size // 2
    centre_idx = np.rint((np.asarray(center_lps) - start) / config.spacing_mm).astype(int)[::-1]  # (z, y, x)
    # An odd cube so that scipy's rotation centre ((n - 1) / 2) is the nodule centre.
    half = c + 1
    padded = np.pad(iso, half + 1, mode="constant", constant_values=AIR_HU)
    lo = centre_idx + half + 1 - half
    cube = padded[lo[0]:lo[0] + 2 * half + 1, lo[1]:lo[1] + 2 * half + 1, lo[2]:lo[2] + 2 * half + 1]
    cube = window(cube, config)
    views = []
    for pair, along in PLANES:
        rotated = cube if pair is None else ndimage.rotate(cube, config.angle_deg, axes=pair, reshape=False,
                                                           order=1, mode="constant", cval=0.0)
        plane = np.take(rotated, half, axis=along)
        start_px = half - c
        views.append(plane[start_px:start_px + config.size, start_px:start_px + config.size])
    return np.stack(views).astype(np.float32)

"""Pure functions on a CT volume (float32 HU array and its grid), in physical units whatever the spacing.

`add_noise`, `thicken`, `smooth` and `sharpen` change an array; `perturb_volume` applies a Perturbation's
steps in order to a Volume (noise seeded by (seed, key)). The part of a scan that a nodule's views sample,
plus a margin for the filters' reach, is `preprocess.views.crop_for_views`.
"""

from __future__ import annotations

import zlib

import numpy as np
from scipy import ndimage

from noduleclip.io import Volume
from noduleclip.preprocess.acquisition.spec import TRUNCATE, UNSHARP_SIGMA_MM, Perturbation
from noduleclip.preprocess.views import gaussian_blur


def _spacing_zyx(volume: Volume) -> np.ndarray:
    """The voxel spacing (mm) in array axis order (z, y, x)."""
    return volume.spacing[::-1].astype(np.float64)  # array axes (z, y, x) = index axes (k, j, i)


def add_noise(array: np.ndarray, spacing_zyx, sigma_hu: float, rng: np.random.Generator,
              correlation_mm: float = 0.0) -> np.ndarray:
    """`array` plus Gaussian noise of standard deviation `sigma_hu`, optionally correlated over `correlation_mm`."""
    noise = rng.standard_normal(array.shape).astype(np.float32)
    if correlation_mm > 0:
        sigmas = correlation_mm / np.asarray(spacing_zyx, dtype=float)
        noise = ndimage.gaussian_filter(noise, sigmas, truncate=TRUNCATE)
        gain = 1.0
        for s in sigmas:  # variance of filtered unit white noise = product of the kernels' sums of squares
            radius = int(TRUNCATE * s + 0.5)
            delta = np.zeros(2 * radius + 1)
            delta[radius] = 1.0
            gain *= float(np.sum(ndimage.gaussian_filter1d(delta, s, truncate=TRUNCATE, mode="constant") ** 2))
        noise /= np.float32(np.sqrt(gain))
    return array + np.float32(sigma_hu) * noise


def slab_weights(thickness_mm: float, spacing_mm: float) -> np.ndarray:
    """Weights of neighbouring slices in a `thickness_mm` box centred on a slice: each slice's overlap, normalised."""
    half = thickness_mm / 2
    reach = int(np.ceil(half / spacing_mm + 0.5 - 1e-9)) - 1  # slices n with n * spacing - spacing / 2 < half
    offsets = np.arange(-reach, reach + 1) * spacing_mm
    lo = np.maximum(offsets - spacing_mm / 2, -half)
    hi = np.minimum(offsets + spacing_mm / 2, half)
    weights = np.clip(hi - lo, 0.0, None)
    return weights / weights.sum()


def thicken(array: np.ndarray, spacing_zyx, thickness_mm: float) -> np.ndarray:
    """Each voxel the mean over `thickness_mm` along the slice axis (array axis 0), on the same grid."""
    weights = slab_weights(thickness_mm, float(spacing_zyx[0]))
    if len(weights) == 1:
        return array
    return ndimage.convolve1d(array, weights.astype(np.float32), axis=0, mode="nearest")


def smooth(array: np.ndarray, spacing_zyx, sigma_mm: float) -> np.ndarray:
    """Gaussian blur of `sigma_mm` millimetres on every axis (the views' own blur, `gaussian_blur`)."""
    return gaussian_blur(array, spacing_zyx, sigma_mm)


def sharpen(array: np.ndarray, spacing_zyx, amount: float) -> np.ndarray:
    """Unsharp mask: v + amount * (v - Gaussian blur of UNSHARP_SIGMA_MM)."""
    return array + np.float32(amount) * (array - smooth(array, spacing_zyx, UNSHARP_SIGMA_MM))


def perturb_volume(volume: Volume, perturbation: Perturbation, seed: int = 0, key: str = "") -> Volume:
    """A copy of `volume` (float32 HU) re-rendered by the perturbation's steps; noise seeded by (seed, key)."""
    array = np.asarray(volume.array, dtype=np.float32).copy()
    spacing = _spacing_zyx(volume)
    rng = np.random.default_rng([int(seed), zlib.crc32(key.encode())])
    for step in perturbation.steps:
        if step.kind == "noise":
            array = add_noise(array, spacing, step.strength, rng, step.correlation_mm)
        elif step.kind == "thick":
            array = thicken(array, spacing, step.strength)
        elif step.kind == "smooth":
            array = smooth(array, spacing, step.strength)
        else:
            array = sharpen(array, spacing, step.strength)
    return Volume(array, volume.origin, volume.spacing, volume.direction, volume.source, dict(volume.metadata))

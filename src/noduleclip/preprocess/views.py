"""The nine 2.5D views of a nodule, sampled straight from the scan.

The paper (and its authors' code) resamples the whole scan to 1 mm, crops a 50 mm cube around the
nodule, rotates the cube by 45 degrees in each axis pair and takes central slices. We take the same
nine planes with one trilinear interpolation each: every output pixel is mapped through the plane's
rotation and the scan's geometry to a continuous voxel index of the source volume. Same planes, one
interpolation instead of two, and ~2.5% of the voxels instead of a whole resampled scan.

Cube convention: axes (0, 1, 2) = (z, y, x) of the LPS patient frame (x towards the patient's left,
y posterior, z superior), `size` samples per axis at `spacing` mm, the nodule centre at index
size // 2 on every axis, so each plane passes exactly through the centre.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from noduleclip.io.volume import Volume

AIR_HU = -1000.0
BLUR_TRUNCATE = 4.0  # Gaussian kernels reach this many sigma (scipy's default)
MAX_SMOOTH_MM = 5.0  # a blur wider than this would erase the smallest nodules the views are for
OUTSIDE = -1.0  # the value of a view pixel outside the scan when the views mark it (windowed views lie in [0, 1])

# (rotation axes pair or None, cube axis the slice is taken along), in the authors' order.
PLANES: tuple[tuple[tuple[int, int] | None, int], ...] = (
    (None, 0), (None, 1), (None, 2),
    ((0, 2), 0), ((0, 2), 2),
    ((0, 1), 0), ((0, 1), 1),
    ((1, 2), 1), ((1, 2), 2),
)
_AXIS = "zyx"
PLANE_NAMES = tuple(
    {0: "axial", 1: "coronal", 2: "sagittal"}[along] if pair is None
    else f"{_AXIS[pair[0]]}{_AXIS[pair[1]]} 45\N{DEGREE SIGN}, across {_AXIS[along]}"
    for pair, along in PLANES
)


@dataclass(frozen=True)
class ViewConfig:
    """How views are cut: cube edge in samples, sample spacing in mm, HU window, rotation angle, whether the
    pixels outside the scan are marked (`OUTSIDE`) instead of filled with air, and a Gaussian blur (`smooth_mm`)
    applied to the scan around the nodule before the views are cut.

    Marking matters where a scan ends close to the nodule, as in crops a few millimetres deep: filled with air,
    the off-axial planes' padding looks like lung; marked, the model's `ViewTransform` shows it in a colour that
    no CT pixel has.

    Blurring every scan by a fixed `smooth_mm`, in training and in inference alike, evens out reconstruction
    kernels: a sharp kernel and a smooth one give views that differ less once both are blurred.
    """

    size: int = 50
    spacing_mm: float = 1.0
    hu_min: float = -1000.0
    hu_max: float = 500.0
    angle_deg: float = 45.0
    mark_outside: bool = False
    smooth_mm: float = 0.0

    def to_dict(self) -> dict:
        out = {"size": self.size, "spacing_mm": self.spacing_mm, "hu_min": self.hu_min,
               "hu_max": self.hu_max, "angle_deg": self.angle_deg}
        # each only when set, so that the caches and runs made before the option stay current
        return (out | ({"mark_outside": True} if self.mark_outside else {})
                | ({"smooth_mm": self.smooth_mm} if self.smooth_mm else {}))


def rotation_in_plane(pair: tuple[int, int] | None, angle_deg: float) -> np.ndarray:
    """3x3 matrix M (cube index space) with rotated[o] = cube[c + M (o - c)], as scipy.ndimage.rotate."""
    m = np.eye(3)
    if pair is None:
        return m
    a, b = sorted(pair)
    c, s = np.cos(np.deg2rad(angle_deg)), np.sin(np.deg2rad(angle_deg))
    m[a, a], m[a, b], m[b, a], m[b, b] = c, s, -s, c
    return m


def plane_offsets(config: ViewConfig = ViewConfig()) -> np.ndarray:
    """Offsets in mm from the nodule centre of every pixel of the nine planes, as LPS (x, y, z).

    Shape (9, size, size, 3). Pixel (u, v) of a plane is the cube index with the slice axis fixed
    at the centre and the two remaining axes, in increasing order, equal to (u, v).
    """
    n, c = config.size, config.size // 2
    grid = (np.arange(n) - c).astype(np.float64)
    out = np.empty((len(PLANES), n, n, 3))
    for p, (pair, along) in enumerate(PLANES):
        free = [ax for ax in range(3) if ax != along]
        zyx = np.zeros((n, n, 3))
        zyx[..., free[0]] = grid[:, None]
        zyx[..., free[1]] = grid[None, :]
        zyx = zyx @ rotation_in_plane(pair, config.angle_deg).T  # offsets in the unrotated cube
        out[p] = zyx[..., ::-1] * config.spacing_mm  # (z, y, x) -> LPS (x, y, z)
    return out


_OFFSET_CACHE: dict[ViewConfig, np.ndarray] = {}


def _offsets(config: ViewConfig) -> np.ndarray:
    if config not in _OFFSET_CACHE:
        _OFFSET_CACHE[config] = plane_offsets(config)
    return _OFFSET_CACHE[config]


def window(hu: np.ndarray, config: ViewConfig = ViewConfig()) -> np.ndarray:
    """Clip HU to the window and scale it to [0, 1] (float32)."""
    scaled = (np.asarray(hu, dtype=np.float32) - config.hu_min) / (config.hu_max - config.hu_min)
    return np.clip(scaled, 0.0, 1.0)


def gaussian_blur(array: np.ndarray, spacing_zyx, sigma_mm: float) -> np.ndarray:
    """Gaussian blur of `sigma_mm` millimetres on every axis of a (z, y, x) array; beyond its edge the array
    continues with its edge values."""
    return ndimage.gaussian_filter(array, sigma_mm / np.asarray(spacing_zyx, dtype=float), truncate=BLUR_TRUNCATE,
                                   mode="nearest")


def crop_for_views(volume: Volume, center_lps, config: ViewConfig, margin_mm: float) -> Volume:
    """The part of `volume` that the views at `center_lps` sample, widened by `margin_mm` (clipped to the scan)."""
    ijk = volume.world_to_index((plane_offsets(config) + np.asarray(center_lps, dtype=float)).reshape(-1, 3))
    margin = np.ceil(margin_mm / volume.spacing).astype(int) + 2
    shape = np.asarray(volume.shape_ijk)
    lo = np.clip(np.floor(ijk.min(axis=0)).astype(int) - margin, 0, shape - 1)
    hi = np.clip(np.ceil(ijk.max(axis=0)).astype(int) + margin, 0, shape - 1)
    if np.any(hi < lo):  # the views lie wholly outside the scan: keep one voxel, the rest is air
        lo = hi = np.clip(np.round(volume.world_to_index(center_lps)).astype(int), 0, shape - 1)
    array = volume.array[lo[2]:hi[2] + 1, lo[1]:hi[1] + 1, lo[0]:hi[0] + 1]
    return Volume(array, volume.index_to_world(lo), volume.spacing, volume.direction, volume.source)


def smoothed_around(volume: Volume, center_lps, config: ViewConfig) -> Volume:
    """The part of `volume` that the views sample, blurred by `config.smooth_mm` (float32 HU): the whole scan
    need not be filtered, and every sampled voxel sees the same blur as in the whole scan (the crop reaches as
    far as the kernel does, and stops only where the scan itself ends)."""
    crop = crop_for_views(volume, center_lps, config, BLUR_TRUNCATE * config.smooth_mm)
    array = gaussian_blur(np.asarray(crop.array, dtype=np.float32), crop.spacing[::-1], config.smooth_mm)
    return Volume(array, crop.origin, crop.spacing, crop.direction, crop.source)


def sample_planes(volume: Volume, center_lps, config: ViewConfig = ViewConfig()) -> np.ndarray:
    """The nine views of the nodule at `center_lps` (world mm, LPS): float32 (9, size, size) in [0, 1].

    One trilinear interpolation per pixel from the source voxels (blurred first by `config.smooth_mm`, where
    set); outside the scan is air, or `OUTSIDE` with `config.mark_outside` (outside as `Volume.contains` has it:
    more than half a voxel beyond the first or last voxel centre on some axis).
    """
    center = np.asarray(center_lps, dtype=np.float64).reshape(3)
    if config.smooth_mm > 0:
        volume = smoothed_around(volume, center, config)
    world = _offsets(config) + center
    ijk = volume.world_to_index(world.reshape(-1, 3))
    coords = ijk[:, ::-1].T  # (k, j, i) rows to index the (z, y, x) array
    hu = ndimage.map_coordinates(volume.array, coords, order=1, mode="constant", cval=AIR_HU,
                                 output=np.float32, prefilter=False)
    views = window(hu, config)
    if config.mark_outside:
        views[~volume.index_inside(ijk)] = OUTSIDE
    return views.reshape(len(PLANES), config.size, config.size)


def mask_centroid(mask: Volume) -> np.ndarray:
    """World (LPS mm) centroid of the non-zero voxels of a mask volume."""
    kji = np.argwhere(np.asarray(mask.array) > 0)
    if len(kji) == 0:
        raise ValueError("the mask is empty")
    return mask.index_to_world(kji[:, ::-1].mean(axis=0))

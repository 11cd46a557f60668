"""Painting shapes into a `Volume` in world millimetres, whatever its spacing and direction.

A shape is an occupancy in [0, 1] evaluated at voxel centres with a soft edge about a voxel wide (so
partial volume is modelled and nothing aliases). It is composited into the HU array in one of three
ways: "max" (adds density: vessels, nodules), "min" (removes density: air in airways and cavities)
or "over" (replaces whatever was there).
"""

from __future__ import annotations

import numpy as np
from scipy.ndimage import gaussian_filter

from noduleclip.io.volume import Volume

Box = tuple[slice, slice, slice]


def voxel_edge(volume: Volume) -> float:
    """Width (mm) of the soft edge that anti-aliases shapes on this grid."""
    return float(np.mean(volume.spacing))


_CORNERS = np.array([[x, y, z] for x in (0, 1) for y in (0, 1) for z in (0, 1)], float)


def _index_from_world(volume: Volume) -> np.ndarray:
    """Inverse of the index-to-world matrix, cached on the volume (painting asks for it thousands of times)."""
    inverse = volume.metadata.get("index_from_world")
    if inverse is None:
        inverse = volume.metadata["index_from_world"] = np.linalg.inv(volume.index_to_world_matrix)
    return inverse


def _index_box(volume: Volume, lo, hi):
    """Index ranges (start, stop) along (i, j, k) of the voxels around the world box(es) [lo, hi]."""
    lo, hi = np.asarray(lo, float), np.asarray(hi, float)
    corners = lo[..., None, :] + _CORNERS * (hi - lo)[..., None, :]
    idx = (corners - volume.origin) @ _index_from_world(volume).T
    start = np.maximum(np.floor(idx.min(axis=-2)).astype(int), 0)
    stop = np.minimum(np.ceil(idx.max(axis=-2)).astype(int) + 1, volume.array.shape[::-1])
    return start, stop


def _coords(volume: Volume, start, stop):
    i, j, k = (np.arange(a, b, dtype=np.float32) for a, b in zip(start, stop, strict=True))
    axes = (i[None, None, :], j[None, :, None], k[:, None, None])
    m = volume.index_to_world_matrix
    coords = []
    for r in range(3):  # skip terms with a zero direction cosine: arrays stay small until combined
        c = np.float32(volume.origin[r])
        for n in range(3):
            if m[r, n] != 0.0:
                c = c + np.float32(m[r, n]) * axes[n]
        coords.append(np.asarray(c, np.float32).reshape((1, 1, 1)) if np.ndim(c) == 0 else c)
    box = (slice(start[2], stop[2]), slice(start[1], stop[1]), slice(start[0], stop[0]))
    return box, coords[0], coords[1], coords[2]


def box_coords(volume: Volume, lo, hi) -> tuple[Box, np.ndarray, np.ndarray, np.ndarray] | None:
    """The voxels around the world box [lo, hi] (mm): array slices and their world X, Y, Z (float32,
    broadcastable to the box's shape)."""
    start, stop = _index_box(volume, lo, hi)
    if np.any(stop <= start):
        return None
    return _coords(volume, start, stop)


def composite(target: np.ndarray, occupancy: np.ndarray, value, mode: str = "max") -> None:
    """Blend `value` into `target` (in place) with weight `occupancy`, by "max", "min" or "over"."""
    blended = target + occupancy * (np.asarray(value, dtype=np.float32) - target)
    if mode == "max":
        np.maximum(target, blended, out=target)
    elif mode == "min":
        np.minimum(target, blended, out=target)
    elif mode == "over":
        target[...] = blended
    else:
        raise ValueError(f"unknown composite mode {mode!r}")


def tube_occupancy(X, Y, Z, a, b, r0: float, r1: float, edge: float) -> np.ndarray:
    """Occupancy of a tapered capsule from `a` (radius r0) to `b` (radius r1), soft edge `edge` mm."""
    a = np.asarray(a, np.float32)
    ab = np.asarray(b, np.float32) - a
    length2 = float(ab @ ab) or 1e-6
    px, py, pz = X - a[0], Y - a[1], Z - a[2]
    t = np.clip((px * ab[0] + py * ab[1] + pz * ab[2]) / length2, 0.0, 1.0)
    dx, dy, dz = px - t * ab[0], py - t * ab[1], pz - t * ab[2]
    dist = np.sqrt(dx * dx + dy * dy + dz * dz)
    radius = r0 + (r1 - r0) * t
    return np.clip((radius - dist) / edge + 0.5, 0.0, 1.0)


def paint_tube(volume: Volume, a, b, r0: float, r1: float, value: float, mode: str = "max",
               edge: float | None = None, only_below: float | None = None) -> None:
    """Composite a tapered capsule between world points `a` and `b` into the volume."""
    edge = edge or voxel_edge(volume)
    a, b = np.asarray(a, float), np.asarray(b, float)
    pad = max(r0, r1) + edge
    found = box_coords(volume, np.minimum(a, b) - pad, np.maximum(a, b) + pad)
    if found is None:
        return
    box, X, Y, Z = found
    occ = tube_occupancy(X, Y, Z, a, b, r0, r1, edge)
    target = volume.array[box]
    if only_below is not None:
        occ = occ * (target < only_below)
    composite(target, occ, value, mode)


def paint_ball(volume: Volume, centre, radius: float, value: float, mode: str = "max",
               edge: float | None = None, only_below: float | None = None) -> None:
    """Composite a ball into the volume."""
    paint_tube(volume, centre, centre, radius, radius, value, mode, edge, only_below)


def paint_tubes(volume: Volume, starts, ends, r0, r1, value: float, mode: str = "max") -> None:
    """Composite many tapered capsules (arrays of end points and radii), skipping those off the grid."""
    edge = voxel_edge(volume)
    starts, ends = np.asarray(starts, float), np.asarray(ends, float)
    r0, r1 = np.asarray(r0, float), np.asarray(r1, float)
    pad = (np.maximum(r0, r1) + edge)[:, None]
    lo, hi = np.minimum(starts, ends) - pad, np.maximum(starts, ends) + pad
    first, last = _index_box(volume, lo, hi)
    for n in np.flatnonzero(np.all(last > first, axis=1)):
        box, X, Y, Z = _coords(volume, first[n], last[n])
        occ = tube_occupancy(X, Y, Z, starts[n], ends[n], r0[n], r1[n], edge)
        composite(volume.array[box], occ, value, mode)


def smooth_noise(rng: np.random.Generator, shape: tuple[int, ...], sigma_voxels) -> np.ndarray:
    """Gaussian-smoothed white noise scaled to unit standard deviation (a texture field)."""
    field = gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma_voxels, mode="wrap")
    return field / (field.std() + 1e-6)


def random_unit(rng: np.random.Generator, n: int | None = None) -> np.ndarray:
    """Uniformly distributed unit vector(s) in 3-D."""
    v = rng.standard_normal((1 if n is None else n, 3))
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    return v[0] if n is None else v


def tilt(rng: np.random.Generator, direction, angle):
    """Unit vector(s) `direction` (3,) or (N, 3) turned by `angle` radians about random perpendicular axes."""
    d = np.atleast_2d(np.asarray(direction, float))
    d = d / np.linalg.norm(d, axis=1, keepdims=True)
    perp = np.cross(d, random_unit(rng, len(d)))
    perp /= np.linalg.norm(perp, axis=1, keepdims=True) + 1e-12
    angle = np.broadcast_to(np.asarray(angle, float), (len(d),))[:, None]
    out = np.cos(angle) * d + np.sin(angle) * perp
    return out[0] if np.ndim(direction) == 1 else out


def random_rotation(rng: np.random.Generator) -> np.ndarray:
    """A uniformly random 3x3 rotation matrix."""
    q, r = np.linalg.qr(rng.standard_normal((3, 3)))
    q = q * np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q

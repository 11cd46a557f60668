"""Render a nodule from its semantic features: outline, density, margins and internal findings.

The outline is star-shaped around the centre: along a unit direction d (nodule frame) the boundary
lies at radius 1 / L(d), with L homogeneous of degree 1, so a voxel at u has the signed radial
distance |u| (1 - 1 / L(u)) to the surface and the occupancy is a Gaussian edge of that distance.
- shape: round / ovoid = an ellipsoid; polygonal = a flat-faced polyhedron (soft maximum over face
  planes); irregular = large random bulges and dents.
- margins: lobulated = broad bumps; spiculated = a fine corona plus spicules (`findings.py`);
  notched = one or two narrow clefts; ill-defined = a 1.4-2.0 mm blurred edge (poorly marginated
  ones 0.9-1.4 mm; well marginated ones are sharp).
- consistency: solid (soft tissue), pure ground glass (-640..-430 HU, mottled), semiconsolidation
  (-350..-180 HU), part-solid (ground glass with an eccentric solid core), peri-cystic (a thin-walled
  cyst with a solid nodule on its wall).
The outline is scaled so that its largest radius is half the long diameter.
Internal findings: eccentric calcification, cavitation, cyst-like spaces, necrosis,
intra-nodular bronchiectasis, reticulation. Findings outside the nodule are in `findings.py`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.special import erfc

from noduleclip.io.volume import Volume
from noduleclip.synth.anatomy import AIR, Tissue
from noduleclip.synth.features import NoduleFeatures
from noduleclip.synth.raster import (
    box_coords,
    composite,
    random_rotation,
    random_unit,
    smooth_noise,
    tube_occupancy,
    voxel_edge,
)


def fibonacci_sphere(n: int) -> np.ndarray:
    """`n` nearly evenly spread unit vectors."""
    k = np.arange(n) + 0.5
    polar = np.arccos(1 - 2 * k / n)
    azimuth = math.pi * (1 + 5**0.5) * k
    return np.stack([np.cos(azimuth) * np.sin(polar), np.sin(azimuth) * np.sin(polar), np.cos(polar)], axis=1)


SPHERE = fibonacci_sphere(600)


def _bumps(rng, k: int, amplitude: tuple[float, float], width: tuple[float, float]):
    return random_unit(rng, k), rng.uniform(*amplitude, size=k), rng.uniform(*width, size=k)


class Outline:
    """A star-shaped outline in the nodule frame (mm); `radius(d)` is the boundary distance along d."""

    def __init__(self, rng: np.random.Generator, shape: str, margins: str, semi_axes):
        self.semi = np.asarray(semi_axes, float)
        self.normals = None
        if shape == "polygonal":
            normals = fibonacci_sphere(int(rng.integers(7, 11))) @ random_rotation(rng).T
            self.normals = normals + 0.15 * rng.standard_normal(normals.shape)
            self.normals /= np.linalg.norm(self.normals, axis=1, keepdims=True)
        parts = [_bumps(rng, 3, (-0.03, 0.03), (0.5, 0.8))]
        if shape == "irregular":
            dirs, amps, widths = _bumps(rng, int(rng.integers(5, 9)), (0.25, 0.45), (0.4, 0.6))
            parts.append((dirs, amps * rng.choice([-1.0, 1.0], size=len(amps)), widths))
        if margins == "lobulated":
            parts.append(_bumps(rng, int(rng.integers(6, 11)), (0.2, 0.35), (0.25, 0.4)))
        elif margins == "spiculated":
            parts.append(_bumps(rng, 40, (0.0, 0.25), (0.1, 0.16)))
            parts.append(_bumps(rng, 4, (-0.12, 0.12), (0.4, 0.6)))
        elif margins == "notched":
            parts.append(_bumps(rng, int(rng.integers(1, 3)), (-0.5, -0.35), (0.14, 0.2)))
        elif margins == "ill-defined":
            parts.append(_bumps(rng, 6, (-0.1, 0.1), (0.35, 0.5)))
        self.bump_dirs = np.concatenate([p[0] for p in parts])
        self.bump_amps = np.concatenate([p[1] for p in parts])
        self.bump_widths2 = np.concatenate([p[2] for p in parts]) ** 2
        self.gain = 1.0
        self.gain = float(self.radius(SPHERE).max() / self.semi[0])

    def level(self, U, V, W):
        """L(u): 1 on the boundary, homogeneous of degree 1 (so |u| / L(u) is the boundary radius)."""
        a, b, c = self.semi
        qx, qy, qz = U / a, V / b, W / c
        qn = np.sqrt(qx * qx + qy * qy + qz * qz) + 1e-9
        level = qn
        if self.normals is not None:
            kappa = 14.0
            dots = np.stack([(qx * n[0] + qy * n[1] + qz * n[2]) / qn for n in self.normals])
            level = qn * np.log(np.exp(kappa * dots).sum(axis=0)) / kappa
        rho = np.sqrt(U * U + V * V + W * W) + 1e-9
        pert = np.zeros_like(rho)
        for d, amp, w2 in zip(self.bump_dirs, self.bump_amps, self.bump_widths2, strict=True):
            pert += amp * np.exp(((U * d[0] + V * d[1] + W * d[2]) / rho - 1.0) / w2)
        return level / np.maximum(1.0 + pert, 0.3) * self.gain

    def radius(self, directions) -> np.ndarray:
        """Boundary radius (mm) along unit directions (N, 3) of the nodule frame."""
        d = np.atleast_2d(np.asarray(directions, float))
        return 1.0 / self.level(d[:, 0], d[:, 1], d[:, 2])


@dataclass
class Placement:
    """Where and how a nodule sits: centre (LPS mm), frame (columns: long, short, third axis) and pleura."""

    centre: np.ndarray
    axes: np.ndarray
    semi_axes: tuple[float, float, float]
    hilum: np.ndarray  # world position of the nearer hilum (vessels and airways come from there)
    pleura_normal: np.ndarray | None = None  # outward unit normal of the nearby pleura
    pleura_distance: float | None = None  # centre to pleural surface (mm)


def semi_axes(f: NoduleFeatures, rng: np.random.Generator) -> tuple[float, float, float]:
    """Half the long and short diameters, and a third semi-axis between them."""
    a, b = f.long_diameter_mm / 2.0, f.short_diameter_mm / 2.0
    return a, b, float(rng.uniform(b, (a + b) / 2.0))


def edge_sigma(f: NoduleFeatures, rng: np.random.Generator, edge: float) -> float:
    """Blur (mm) of the nodule's edge: sharp, poorly marginated or ill-defined."""
    if f.margins == "ill-defined":
        return float(rng.uniform(1.4, 2.0))
    if f.margin_conspicuity == "poorly marginated":
        return float(rng.uniform(0.9, 1.4))
    return 0.3 * edge


def _edge_occ(signed_distance, sigma: float):
    return (0.5 * erfc(signed_distance / (math.sqrt(2.0) * sigma))).astype(np.float32)


def _ball(U, V, W, centre, radius: float, sigma: float):
    d = np.sqrt((U - centre[0]) ** 2 + (V - centre[1]) ** 2 + (W - centre[2]) ** 2)
    return _edge_occ(d - radius, sigma)


def _outline_occ(outline: Outline, U, V, W, centre, sigma: float):
    du, dv, dw = U - centre[0] + 1e-4, V - centre[1], W - centre[2]  # never exactly at the centre
    rho = np.sqrt(du * du + dv * dv + dw * dw)
    return _edge_occ(rho * (1.0 - 1.0 / outline.level(du, dv, dw)), sigma)


def render_nodule(volume: Volume, f: NoduleFeatures, place: Placement, tissue: Tissue,
                  rng: np.random.Generator) -> Outline:
    """Paint the nodule body and its internal findings; returns the outline for the outer findings."""
    edge = voxel_edge(volume)
    a, b, c = place.semi_axes
    sigma = edge_sigma(f, rng, edge)
    crisp = 0.3 * edge
    cystic = f.consistency == "peri-cystic"
    if cystic:
        wall = rng.uniform(0.8, 1.2)
        cyst_r = b - wall
        cyst_c = np.array([-(a - b), 0.0, 0.0])
        reach = (a - b) + 0.35 * b + 0.5
        comp_c = np.array([a - reach, 0.0, 0.0])
        outline = Outline(rng, "ovoid", f.margins, (reach, 0.6 * b, 0.6 * b))
    else:
        outline = Outline(rng, f.shape, f.margins, (a, b, c))
    extent = a * 1.2 + 3.0 * sigma + 2.0
    found = box_coords(volume, place.centre - extent, place.centre + extent)
    if found is None:
        return outline
    box, X, Y, Z = found
    dx, dy, dz = X - place.centre[0], Y - place.centre[1], Z - place.centre[2]
    R = place.axes
    U, V, W = (R[0, n] * dx + R[1, n] * dy + R[2, n] * dz for n in range(3))
    target = volume.array[box]
    texture = smooth_noise(rng, np.broadcast_shapes(X.shape, Y.shape, Z.shape), 1.2 / volume.spacing[::-1])
    core = np.zeros_like(U)
    if cystic:
        component = _outline_occ(outline, U, V, W, comp_c, sigma)
        occ = np.maximum(_ball(U, V, W, cyst_c, cyst_r + wall, crisp), component)
        value = tissue.nodule_solid + 8.0 * texture
    else:
        occ = _outline_occ(outline, U, V, W, (0.0, 0.0, 0.0), sigma)
        if f.consistency == "solid":
            value = tissue.nodule_solid + 8.0 * texture
        elif f.consistency == "semiconsolidation":
            value = rng.uniform(-350, -180) + 35.0 * texture
        else:
            value = rng.uniform(-640, -430) + 45.0 * texture
            if f.consistency == "part-solid":
                frac = min(0.8, max(rng.uniform(0.35, 0.65), 2.2 / b))  # a solid core at least ~4 mm across
                shift = random_unit(rng) * rng.uniform(0.0, 0.5) * (1 - frac) * b
                core = _outline_occ(outline, U / frac, V / frac, W / frac, shift / frac, crisp / frac)
                value = value + core * (tissue.nodule_solid - value)
    composite(target, occ, value, "max")
    _internal(f, outline, target, U, V, W, occ, core, texture, tissue, volume, rng, b)
    if cystic:
        composite(target, _ball(U, V, W, cyst_c, cyst_r, crisp), AIR, "min")
        composite(target, component, tissue.nodule_solid, "max")
    return outline if not cystic else Outline(rng, "ovoid", "smooth", (a, b, b))


def _internal(f, outline, target, U, V, W, occ, core, texture, tissue, volume, rng, b) -> None:
    crisp = 0.3 * voxel_edge(volume)
    inner = np.clip((occ - 0.35) * 3.0, 0.0, 1.0)
    if f.reticulation:
        field = smooth_noise(rng, U.shape, 1.6 / volume.spacing[::-1])
        lines = np.exp(-((field / 0.22) ** 2))
        target += 260.0 * lines * inner * (1.0 - core)
    if f.necrosis:
        centre = random_unit(rng) * rng.uniform(0.0, 0.15) * b
        composite(target, _ball(U, V, W, centre, 0.45 * b, 0.8), tissue.necrosis, "min")
    if f.cavitation:
        offset = random_unit(rng) * rng.uniform(0.0, 0.2) * b
        radius = min(rng.uniform(0.4, 0.58) * b, b - 1.5 - np.linalg.norm(offset))
        second = offset + random_unit(rng) * 0.35 * radius
        cavity = np.maximum(_ball(U, V, W, offset, radius, crisp), _ball(U, V, W, second, 0.75 * radius, crisp))
        composite(target, cavity, AIR, "min")
    if f.cyst_like_spaces:
        for _ in range(int(rng.integers(2, 6))):
            d = random_unit(rng)
            centre = d * outline.radius(d)[0] * rng.uniform(0.3, 0.62)
            composite(target, _ball(U, V, W, centre, min(rng.uniform(0.7, 1.4), 0.3 * b), crisp), AIR + 10, "min")
    if f.intranodular_bronchiectasis:
        d = random_unit(rng)
        start = random_unit(rng) * rng.uniform(0.0, 0.3) * b - d * outline.semi[0] * 1.2
        lumen = np.zeros_like(U)
        for piece in range(4):
            p0, p1 = start + d * outline.semi[0] * 0.6 * piece, start + d * outline.semi[0] * 0.6 * (piece + 1)
            radius = rng.uniform(0.8, 1.5)
            lumen = np.maximum(lumen, tube_occupancy(U, V, W, p0, p1, radius, radius * rng.uniform(0.7, 1.3), 0.8))
        composite(target, lumen * inner, AIR, "min")
    if f.eccentric_calcification:
        d = random_unit(rng)
        radius = max(1.2, min(0.15 * f.long_diameter_mm, 3.0, 0.35 * b))
        centre = d * max(outline.radius(d)[0] * rng.uniform(0.4, 0.55), radius + 0.8)  # off the centre
        composite(target, _ball(U, V, W, centre, radius, crisp), rng.uniform(800, 1000), "max")

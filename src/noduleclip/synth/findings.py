"""Findings around a nodule: spicules, converging vessels, a cut-off airway, stretched septa,
paracicatricial emphysema and pleural retraction (tags and dimpling toward the pleura).

Each is drawn as tubes or balls in world millimetres starting at the nodule's rendered boundary,
sized to stay inside a 50 mm cube around the centre and thick enough to show at 1 mm.
"""

from __future__ import annotations

import numpy as np

from noduleclip.io.volume import Volume
from noduleclip.synth.anatomy import AIR, Tissue
from noduleclip.synth.features import NoduleFeatures
from noduleclip.synth.nodules import Outline, Placement
from noduleclip.synth.raster import paint_ball, paint_tube, random_unit, tilt


def _unit(v) -> np.ndarray:
    v = np.asarray(v, float)
    return v / (np.linalg.norm(v) + 1e-12)


class _Surface:
    """World points on the nodule boundary along world directions."""

    def __init__(self, place: Placement, outline: Outline):
        self.centre, self.axes, self.outline = place.centre, place.axes, outline

    def __call__(self, direction, inset: float = 1.0) -> np.ndarray:
        e = _unit(direction)
        return self.centre + e * float(self.outline.radius(self.axes.T @ e)[0]) * inset


def _axialish(direction, keep: float = 0.35) -> np.ndarray:
    """`direction` pulled toward the axial plane (its z part scaled by `keep`): findings that show on axial slices."""
    d = np.array(direction, float)
    d[2] *= keep
    return _unit(d)


def paint_findings(volume: Volume, f: NoduleFeatures, place: Placement, outline: Outline,
                   tissue: Tissue, rng: np.random.Generator) -> None:
    """Draw the nodule's outer findings into the volume."""
    surface = _Surface(place, outline)
    toward_hilum = _unit(place.hilum - place.centre)
    if f.margins == "spiculated":
        _spicules(volume, f, surface, tissue, rng)
    if f.vascular_convergence:
        _convergence(volume, surface, toward_hilum, tissue, rng)
    if f.airway_cutoff:
        _airway_cutoff(volume, surface, toward_hilum, tissue, rng)
    if f.septal_stretching:
        _septal_lines(volume, place, surface, rng)
    if f.paracicatricial_emphysema:
        for _ in range(int(rng.integers(3, 7))):
            e = random_unit(rng)
            paint_ball(volume, surface(e) + e * rng.uniform(1.5, 5.0), rng.uniform(2.0, 4.5), AIR + 12, "min",
                       only_below=-600)
    if f.pleural_retraction != "absent" and place.pleura_normal is not None:
        _retraction(volume, f, place, surface, tissue, rng)


def _spicules(volume, f, surface, tissue, rng) -> None:
    value = tissue.nodule_solid if f.consistency in ("solid", "peri-cystic") else tissue.soft - 90.0
    count = int(round(rng.uniform(16, 26) * (0.6 + f.long_diameter_mm / 40.0)))
    base_radius = float(np.clip(0.04 * f.long_diameter_mm + 0.55, 0.6, 1.4))
    for e in random_unit(rng, count):
        start = surface(e, 0.85)
        length = float(np.clip(rng.uniform(0.5, 1.1) * (2.5 + 0.45 * f.long_diameter_mm), 3.0, 16.0))
        end = start + tilt(rng, e, rng.uniform(0.0, 0.3)) * length
        paint_tube(volume, start, end, base_radius * rng.uniform(0.8, 1.2), 0.2, value, "max")


def _convergence(volume, surface, toward, tissue, rng) -> None:
    for _ in range(int(rng.integers(3, 6))):
        e = _axialish(tilt(rng, toward, rng.uniform(0.15, 0.8)))
        far = surface.centre + e * rng.uniform(20.0, 25.0)
        near = surface(e, 0.7)
        mid = (far + near) / 2.0 + random_unit(rng) * rng.uniform(1.0, 3.0)
        radius = rng.uniform(0.9, 1.5)
        paint_tube(volume, far, mid, 0.85 * radius, radius, tissue.blood, "max")
        paint_tube(volume, mid, near, radius, 1.2 * radius, tissue.blood, "max")


def _airway_cutoff(volume, surface, toward, tissue, rng) -> None:
    e = _axialish(tilt(rng, toward, rng.uniform(0.3, 1.0)))
    far = surface.centre + e * rng.uniform(22.0, 25.0)
    stop = surface(e)
    radius = rng.uniform(1.2, 2.0)
    wall = 0.6 + 0.1 * radius
    paint_tube(volume, far, stop, radius + wall, radius + wall, tissue.soft, "max")
    paint_tube(volume, far, stop + e * 1.2 * radius, radius, radius, AIR, "min")


def _septal_lines(volume, place: Placement, surface, rng) -> None:
    normal = place.pleura_normal
    for _ in range(int(rng.integers(2, 5))):
        e = _axialish(tilt(rng, normal, rng.uniform(0.1, 0.7)) if normal is not None else random_unit(rng))
        start = surface(e, 0.95)
        length = rng.uniform(12.0, 22.0)
        if normal is not None and e @ normal > 0.2:
            to_pleura = (place.pleura_distance - (start - place.centre) @ normal) / (e @ normal)
            length = min(length, max(to_pleura + 1.0, 3.0))
        paint_tube(volume, start, start + e * length, rng.uniform(0.3, 0.45), 0.3, 0.0, "max")


def _retraction(volume, f, place: Placement, surface, tissue, rng) -> None:
    """Tags from the nodule to the pleura widening into dimples: mild two narrow ones (within the axial
    slice), obvious four wide ones (also toward head and feet)."""
    normal = place.pleura_normal
    obvious = f.pleural_retraction == "obvious dimpling"
    value = tissue.soft - 60.0
    plane = place.pleura_distance + 2.0  # pleural surface plus the extrapleural layer
    gap = place.pleura_distance - place.semi_axes[1]
    up = np.array([0.0, 0.0, 1.0]) if abs(normal[2]) < 0.9 else random_unit(rng)
    along_z = _unit(up - (up @ normal) * normal)  # in the pleura, toward the head
    in_slice = np.cross(normal, along_z)  # in the pleura, within the axial slice
    sides = (in_slice, -in_slice, along_z, -along_z) if obvious else (in_slice, -in_slice)
    for sideways in sides:
        # beneath the pleura the tags leave the nodule's pleural face; against it they leave its flanks
        direction = _unit(normal + 0.35 * sideways) if gap > 1.5 else _unit(sideways - 0.2 * normal)
        start = surface(direction, 0.9)
        depth = plane - (start - place.centre) @ normal
        base = start + normal * depth + sideways * (1.0 if gap > 1.5 else 3.0)
        width = rng.uniform(3.5, 5.0) if obvious else rng.uniform(1.5, 2.5)
        paint_tube(volume, start, base, 0.5, width, value, "max")

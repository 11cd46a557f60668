"""Where a patient's nodules go: in the lung parenchyma, against the pleura, or just beneath it.

A nodule with pleural attachment is centred inside the lung at 0.55-0.85 of its short semi-axis
from the costal pleura (so it touches and flattens against the chest wall), with its short axis
along the pleural normal; one with pleural retraction but no attachment sits 4-10 mm beneath the
pleura. Pleural sites are on the costal pleura, with lung beside and behind them (not at the
mediastinum). The other nodules sit at least their radius plus 8 mm inside the lung. Every
nodule's 50 mm cube lies inside the scanned volume and nodules keep apart. A nodule that cannot be
placed against the pleura goes into the parenchyma and its pleural features are reset to absent."""

from __future__ import annotations

import math

import numpy as np

from noduleclip.synth.anatomy import Body, cavity_axes, lung_depth
from noduleclip.synth.features import NoduleFeatures
from noduleclip.synth.nodules import Placement, semi_axes
from noduleclip.synth.raster import random_rotation
from noduleclip.synth.scanner import Scan

CUBE_HALF_MM = 25.0


def _depth(body: Body, p) -> float:
    return float(lung_depth(body, p[0], p[1], p[2])[0])


def _cube_inside(scan: Scan, centre_world, half: float = CUBE_HALF_MM) -> bool:
    grid = scan.output_volume(np.zeros((1, 1, 1), np.float32))
    idx = grid.world_to_index(centre_world[None, :] + half * np.array(
        [[x, y, z] for x in (-1, 1) for y in (-1, 1) for z in (-1, 1)], float))
    upper = np.asarray(scan.shape) - 0.5
    return bool(np.all(idx >= -0.5) and np.all(idx <= upper))


def _apart(centre, radius: float, placed: list[tuple[np.ndarray, float]]) -> bool:
    return all(np.linalg.norm(centre - c) > radius + r + 10.0 for c, r in placed)


def _pleural_candidate(rng, body: Body, z_lo: float, z_hi: float, distance: float):
    """A point `distance` mm inside the costal pleura, and the outward normal there (body coordinates)."""
    z = rng.uniform(z_lo, z_hi)
    cx, cdepth = cavity_axes(body, z)
    phi = rng.uniform(0.0, 2.0 * math.pi)
    c, s = math.cos(phi), math.sin(phi)
    ux, uy = abs(c) ** (2.0 / 3.0), abs(s) ** (2.0 / 3.0)  # on |x/cx|^3 + |y/cdepth|^3 = 1
    boundary = np.array([math.copysign(ux * cx, c), body.cavity[2] + math.copysign(uy * cdepth, s), z])
    normal = np.array([math.copysign(ux * ux / cx, c), math.copysign(uy * uy / cdepth, s), 0.0])
    normal /= np.linalg.norm(normal)
    return boundary - normal * distance, normal


def place_nodules(rng: np.random.Generator, body: Body, scan: Scan, features: list[NoduleFeatures],
                  tries: int = 3000) -> list[Placement]:
    """Choose a centre and orientation for each nodule (may reset pleural features it cannot honour)."""
    placed: list[tuple[np.ndarray, float]] = []
    out: list[Placement] = []
    z_lo, z_hi = scan.z_range[0] + CUBE_HALF_MM, scan.z_range[1] - CUBE_HALF_MM
    if z_hi < z_lo:
        z_lo = z_hi = (scan.z_range[0] + scan.z_range[1]) / 2.0
    for f in features:
        a, b, c = semi_axes(f, rng)
        pleural = f.pleural_attachment or f.pleural_retraction != "absent"
        found = None
        if pleural:
            for _ in range(tries):
                distance = b * rng.uniform(0.55, 0.85) if f.pleural_attachment else b + rng.uniform(4.0, 10.0)
                centre, normal = _pleural_candidate(rng, body, z_lo, z_hi, distance)
                tangent = np.array([-normal[1], normal[0], 0.0])
                beside = [centre + s * (a + 3.0) * t for s in (-1, 1) for t in (tangent, np.array([0.0, 0.0, 1.0]))]
                if (abs(centre[0] - body.midline) < body.med_wide + a + 8.0
                        or _depth(body, centre) < distance - 1.5
                        or _depth(body, centre - normal * (a + 8.0)) < 2.0
                        or min(_depth(body, p) for p in beside) < 0.5):
                    continue
                world = centre + scan.offset
                if _apart(world, a, placed) and _cube_inside(scan, world):
                    long_axis = np.cross(normal, rng.standard_normal(3))
                    long_axis /= np.linalg.norm(long_axis)
                    axes = np.stack([long_axis, normal, np.cross(long_axis, normal)], axis=1)
                    found = (world, axes, normal, distance)
                    break
            if found is None:
                f.pleural_attachment, f.pleural_retraction = False, "absent"
        if found is None:
            cx, cdepth = cavity_axes(body, (z_lo + z_hi) / 2.0)
            for attempt in range(tries):
                need = a + 8.0 if attempt < tries // 2 else 0.6 * a
                centre = np.array([rng.uniform(-cx, cx), body.cavity[2] + rng.uniform(-cdepth, cdepth),
                                   rng.uniform(z_lo, z_hi)])
                if _depth(body, centre) < need or min(np.linalg.norm(centre - np.asarray(h)) for h in body.hila) < 30.0:
                    continue
                world = centre + scan.offset
                if _apart(world, a, placed) and _cube_inside(scan, world):
                    found = (world, random_rotation(rng), None, None)
                    break
        if found is None:
            raise RuntimeError("could not place a nodule inside the scanned lungs; the scan range is too short")
        world, axes, normal, distance = found
        hilum = min(body.hila, key=lambda h: abs(h[0] - (world - scan.offset)[0])) + scan.offset
        out.append(Placement(world, axes, (a, b, c), np.asarray(hilum, float), normal, distance))
        placed.append((world, a))
    return out

"""Branching pulmonary vessels and airways grown from the hila into the lungs.

Each tree grows breadth-first from a few root branches at a hilum: a branch of radius r runs about
4-7 radii, then splits into a main continuation (0.86-0.95 r, small turn) and a side branch (0.55-0.78 r,
35-65 degree turn), both drawn outward from the hilum. A branch that would leave the lung turns or
shortens, and growth stops below a minimum radius. Bronchi run beside the larger arteries (the
bronchovascular bundle): each airway subtree is its artery subtree shifted sideways.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from noduleclip.io.volume import Volume
from noduleclip.synth.anatomy import AIR, Body, Tissue, lung_depth
from noduleclip.synth.raster import paint_tubes, tilt


@dataclass
class Tube:
    """A tapered tube between body-coordinate points `a` and `b` (mm)."""

    a: np.ndarray
    b: np.ndarray
    r0: float
    r1: float
    root: int = 0


def grow_tree(rng: np.random.Generator, body: Body, hilum, roots, r_min: float, max_tubes: int) -> list[Tube]:
    """Grow tubes from `roots` [(direction, radius)] at `hilum`, a generation at a time, until they thin below
    `r_min`."""
    hilum = np.asarray(hilum, float)
    starts = np.repeat(hilum[None, :], len(roots), axis=0)
    dirs = np.array([np.asarray(d, float) / np.linalg.norm(d) for d, _ in roots])
    radii = np.array([r for _, r in roots], float)
    ids = np.arange(len(roots))
    tubes: list[Tube] = []
    generation = 0
    while len(starts) and len(tubes) < max_tubes:
        n = len(starts)
        lengths = radii * rng.uniform(4.0, 7.0, n) + rng.uniform(2.0, 4.0, n)
        ends, placed = np.zeros((n, 3)), np.zeros(n, bool)
        for attempt in range(5):
            todo = np.flatnonzero(~placed)
            if not len(todo):
                break
            heading = dirs[todo] if attempt == 0 else tilt(rng, dirs[todo], rng.uniform(0.3, 0.9, len(todo)))
            candidate = starts[todo] + lengths[todo, None] * heading
            depth = lung_depth(body, candidate[:, 0], candidate[:, 1], candidate[:, 2])
            good = (depth > radii[todo] + 0.5) | (generation == 0)
            ends[todo[good]], dirs[todo[good]], placed[todo[good]] = candidate[good], heading[good], True
            lengths[todo[~good]] *= 0.7
        keep = np.flatnonzero(placed)[: max_tubes - len(tubes)]
        r_end = radii[keep] * 0.93
        tubes += [Tube(starts[q], ends[q], radii[q], r, int(ids[q])) for q, r in zip(keep, r_end, strict=True)]
        grow = r_end * 0.8 >= r_min
        keep, r_end = keep[grow], r_end[grow]
        outward = ends[keep] - hilum
        outward /= np.linalg.norm(outward, axis=1, keepdims=True) + 1e-9
        main = tilt(rng, dirs[keep], rng.uniform(0.05, 0.3, len(keep))) + 0.25 * outward
        side = tilt(rng, dirs[keep], rng.uniform(0.6, 1.15, len(keep))) + 0.35 * outward
        main_r = r_end * rng.uniform(0.86, 0.95, len(keep))
        side_r = r_end * rng.uniform(0.55, 0.78, len(keep))
        branch = side_r >= r_min
        starts = np.concatenate([ends[keep], ends[keep][branch]])
        dirs = np.concatenate([main, side[branch]])
        dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
        radii = np.concatenate([main_r, side_r[branch]])
        ids = np.concatenate([ids[keep], ids[keep][branch]])
        generation += 1
    return tubes


def vessel_tree(rng: np.random.Generator, body: Body, max_tubes: int = 1100) -> list[Tube]:
    """Pulmonary trunk, main arteries and a vessel tree per lung (body coordinates)."""
    tx, ty, _ = body.trachea
    trunk_top = np.array([body.midline + 16.0, ty - 14.0, -22.0])
    tubes = [Tube(np.array([body.midline + 22.0, ty - 34.0, -60.0]), trunk_top, 13.0, 12.0, -1)]
    for side, hilum in zip((-1.0, 1.0), body.hila, strict=True):
        hilum = np.asarray(hilum, float)
        tubes.append(Tube(trunk_top, hilum, 10.0, 8.0, -1))
        roots = [
            ((0.35 * side, 0.1, 1.0), rng.uniform(3.6, 4.6)),
            ((0.35 * side, 0.35, -1.0), rng.uniform(4.0, 5.0)),
            ((1.0 * side, 0.0, -0.1), rng.uniform(3.2, 4.2)),
            ((0.6 * side, -1.0, -0.3), rng.uniform(3.2, 4.2)),
            ((0.5 * side, 1.0, -0.4), rng.uniform(3.4, 4.4)),
        ]
        tubes += grow_tree(rng, body, hilum, roots, r_min=0.5, max_tubes=max_tubes)
    return tubes


def airway_tree(rng: np.random.Generator, body: Body, vessels: list[Tube]) -> list[Tube]:
    """Main bronchi from the carina and bronchi beside the larger arteries (lumen radii)."""
    tx, ty, tr = body.trachea
    carina = np.array([tx, ty, 0.0])
    airways: list[Tube] = []
    shifts: dict[tuple[int, int], np.ndarray] = {}
    for hilum in body.hila:
        hilum = np.asarray(hilum, float)
        airways.append(Tube(carina, hilum + np.array([0.0, 4.0, 4.0]), 0.72 * tr, 0.6 * tr, -1))
    for tube in vessels:
        if tube.root < 0 or tube.r0 < 1.4:
            continue
        side = 1 if tube.a[0] > body.midline else -1
        key = (side, tube.root)
        if key not in shifts:
            direction = tube.b - tube.a
            perp = np.cross(direction, rng.standard_normal(3))
            shifts[key] = perp / np.linalg.norm(perp) * (tube.r0 * 1.6 + 1.5)
        shift = shifts[key]
        a, b = tube.a + shift, tube.b + shift
        if float(lung_depth(body, *b)[0]) > 1.0 or tube.r0 > 3.0:
            airways.append(Tube(a, b, 0.75 * tube.r0, 0.75 * tube.r1, tube.root))
    return airways


def paint_trees(volume: Volume, offset, vessels: list[Tube], airways: list[Tube], tissue: Tissue) -> None:
    """Render vessels (blood), then airway walls and lumens, into the volume (world = body + offset)."""
    offset = np.asarray(offset, float)

    def arrays(tubes: list[Tube]):
        return (np.array([t.a for t in tubes]) + offset, np.array([t.b for t in tubes]) + offset,
                np.array([t.r0 for t in tubes]), np.array([t.r1 for t in tubes]))

    a, b, r0, r1 = arrays(vessels)
    paint_tubes(volume, a, b, r0, r1, tissue.blood, "max")
    a, b, r0, r1 = arrays(airways)
    wall = 0.5 + 0.15 * r0
    paint_tubes(volume, a, b, r0 + wall, r1 + wall, tissue.soft, "max")
    paint_tubes(volume, a, b, r0, r1, AIR, "min")

"""A synthetic chest: body wall, lungs, mediastinum, spine and ribs, evaluated at any point.

Anatomy lives in body coordinates: millimetres along the patient's left (x), posterior (y) and
superior (z) axes with the origin at the body's centre at the level of the carina; world (LPS) =
body + the patient's table offset. Every structure is an analytic shape (rounded rectangles,
ellipses, cylinders, ellipsoids, an oblique rib pattern), so the same description renders on any
grid and answers point queries (`lung_depth`) for placing vessels and nodules. Vessel and airway
trees are in `trees.py`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from noduleclip.io.volume import Volume
from noduleclip.synth.raster import voxel_edge

AIR, FAT, SOFT, BLOOD, CSF, DISC, CARTILAGE = -1000.0, -95.0, 45.0, 40.0, 15.0, 85.0, 120.0
CORTEX, MARROW = 850.0, 230.0


@dataclass
class Tissue:
    """Densities (HU) of one patient's scan; contrast raises blood, enhancement solid tissue."""

    lung: float = -850.0
    gravity: float = 25.0  # extra density of dependent lung
    soft: float = SOFT
    blood: float = BLOOD
    nodule_solid: float = 35.0
    necrosis: float = 8.0


@dataclass
class Body:
    """Shape parameters of one patient's chest (body coordinates, mm)."""

    half_width: float
    half_depth: float
    fat: float
    muscle: float
    flat: float  # distance from centre to the flattened side lying on the table
    cavity: tuple[float, float, float]  # half width, half depth, centre y
    midline: float  # x of the mediastinum
    med_narrow: float  # mediastinal half-width at the anterior and posterior junctions
    med_wide: float  # at the level of the trachea
    spine_y: float
    vertebra_radius: float
    trachea: tuple[float, float, float]  # x, y, lumen radius
    heart: tuple[float, float, float, float, float, float]  # centre x, y, z and semi-axes
    vessels: tuple[tuple[float, float, float, float, float], ...]  # x, y, radius, z low, z high
    hila: tuple[tuple[float, float, float], tuple[float, float, float]]  # right, left
    rib_pitch: float
    rib_phase: float
    rib_drop: float
    vertebra_pitch: float
    vertebra_phase: float
    fissures: tuple[float, ...]  # oblique fissure planes: slope, z intercept, lateral tilt (right, then left)
    prone: bool = False


def sample_body(rng: np.random.Generator, prone: bool = False) -> Body:
    """Draw one patient's chest shape."""
    u = rng.uniform
    bx, by = u(135, 170), u(100, 122)
    fat, muscle = u(5, 20), u(5, 10)
    flat = 0.92 * by
    posterior_edge = flat - fat - u(26, 34)
    anterior_edge = -by + fat + muscle + u(8, 11)
    cavity = (bx - fat - muscle - u(9, 12), (posterior_edge - anterior_edge) / 2, (posterior_edge + anterior_edge) / 2)
    rv = u(15, 19)
    spine_y = posterior_edge - rv - u(0, 5)
    trachea_y = spine_y - rv - u(20, 26)
    midline = u(-4, 8)
    trachea = (midline - u(0, 4), trachea_y, u(7, 9.5))
    cy, cdepth = cavity[2], cavity[1]
    heart = (midline + u(12, 28), cy - u(0.1, 0.3) * cdepth, u(-118, -95), u(55, 66), u(40, 48), u(60, 72))
    vessels = (
        (midline + rv + u(6, 10), spine_y - u(6, 12), u(10, 13), -400.0, 55.0),  # descending aorta
        (midline - u(8, 14), trachea_y - u(26, 34), u(13, 16), -90.0, 45.0),  # ascending aorta
        (midline - u(24, 30), trachea_y - u(16, 22), u(8, 10), -40.0, 400.0),  # superior vena cava
        (midline + u(3, 7), spine_y - rv - u(5, 8), u(5, 7), -400.0, 400.0),  # oesophagus
    )
    hila = ((midline - u(38, 44), trachea_y + u(5, 12), u(-25, -12)),
            (midline + u(40, 46), trachea_y + u(5, 12), u(-30, -15)))
    return Body(
        half_width=bx, half_depth=by, fat=fat, muscle=muscle, flat=flat, cavity=cavity, midline=midline,
        med_narrow=u(6, 10), med_wide=u(26, 34), spine_y=spine_y, vertebra_radius=rv, trachea=trachea,
        heart=heart, vessels=vessels, hila=hila, rib_pitch=u(26, 32), rib_phase=u(0, 30), rib_drop=u(70, 95),
        vertebra_pitch=u(24, 28), vertebra_phase=u(0, 28),
        fissures=(u(0.9, 1.4), u(-40, 0), u(-0.5, 0.5), u(0.9, 1.4), u(-50, -10), u(-0.5, 0.5)),
        prone=prone,
    )


def ellipse_depth(x, y, ax: float, ay: float):
    """Approximate signed distance (mm, positive inside) to the ellipse (x/ax)^2 + (y/ay)^2 = 1."""
    e = np.sqrt((x / ax) ** 2 + (y / ay) ** 2) + 1e-6
    g = np.sqrt((x / ax**2) ** 2 + (y / ay**2) ** 2) + 1e-9
    return (1.0 - e) * e / g


def ellipsoid_depth(x, y, z, ax: float, ay: float, az: float):
    """Approximate signed distance (mm, positive inside) to an axis-aligned ellipsoid."""
    e = np.sqrt((x / ax) ** 2 + (y / ay) ** 2 + (z / az) ** 2) + 1e-6
    g = np.sqrt((x / ax**2) ** 2 + (y / ay**2) ** 2 + (z / az**2) ** 2) + 1e-9
    return (1.0 - e) * e / g


def rounded_depth(x, y, ax: float, ay: float):
    """Approximate signed distance (mm, positive inside) to the superellipse |x/ax|^3 + |y/ay|^3 = 1
    (a rounded rectangle: the shape of a chest in cross-section)."""
    ux, uy = np.abs(x) / ax + 1e-6, np.abs(y) / ay + 1e-6
    e = np.cbrt(ux * ux * ux + uy * uy * uy)
    g = np.sqrt((ux * ux / ax) ** 2 + (uy * uy / ay) ** 2) + 1e-9
    return (1.0 - e) * e * e / g


def cavity_axes(body: Body, z) -> tuple:
    """Half width and half depth of the thoracic cavity at height z (wider at the base, narrow at the apex)."""
    scale = 1.0 + 0.0006 * np.clip(-z, -60, 150)
    apex = np.sqrt(np.clip(1.0 - (np.clip(z - 25.0, 0, None) / 150.0) ** 2, 0.3, 1.0))
    return body.cavity[0] * scale * apex, body.cavity[1] * scale


def cavity_depth(body: Body, x, y, z):
    """Signed distance (mm) inside the thoracic cavity (the inner surface of the ribs)."""
    cx, cdepth = cavity_axes(body, z)
    return rounded_depth(x, y - body.cavity[2], cx, cdepth)


def lung_depth(body: Body, x, y, z, d_cav=None):
    """Approximate signed distance (mm, positive inside) to the lung surface (pleura)."""
    x, y, z = np.atleast_1d(x), np.atleast_1d(y), np.atleast_1d(z)
    ty = body.trachea[1]
    width = body.med_narrow + (body.med_wide - body.med_narrow) * np.exp(-(((y - ty) / 38.0) ** 2))
    d_cav = cavity_depth(body, x, y, z) if d_cav is None else d_cav
    depth = np.minimum(d_cav, np.abs(x - body.midline) - width)
    depth = np.minimum(depth, np.hypot(x, y - body.spine_y) - (body.vertebra_radius + 11.0))
    hx, hy, hz, ax, ay, az = body.heart
    near = np.flatnonzero((np.abs(z - hz) < az + 40) & (np.abs(x - hx) < ax + 40) & (np.abs(y - hy) < ay + 40))
    heart = -ellipsoid_depth(x[near] - hx, y[near] - hy, z[near] - hz, ax + 3, ay + 3, az + 3)
    depth[near] = np.minimum(depth[near], heart)
    for vx, vy, vr, z0, z1 in body.vessels:
        near = np.flatnonzero((z > z0) & (z < z1) & (np.abs(x - vx) < vr + 40) & (np.abs(y - vy) < vr + 40))
        depth[near] = np.minimum(depth[near], np.hypot(x[near] - vx, y[near] - vy) - vr - 3.0)
    return depth


def _ramp(depth, edge: float):
    return np.clip(depth / edge + 0.5, 0.0, 1.0).astype(np.float32)


def _over(hu, occ, value):
    hu += occ * (value - hu)


def _paint(hu, where, occ, value) -> None:
    """Blend `value` with occupancy `occ` into the entries `where` of the 1-D array `hu`."""
    part = hu[where]
    part += occ * (value - part)
    hu[where] = part


def _ribs(body: Body, x, y, z, d_cav):
    """HU of ribs and costal cartilage in the band outside the cavity (NaN where there is no rib)."""
    cy = body.cavity[2]
    theta = np.abs(np.arctan2(x, y - cy))  # 0 posterior, pi anterior
    drop = body.rib_drop * (1.0 - np.cos(theta)) / 2.0
    phase = (z + drop - body.rib_phase) / body.rib_pitch
    dz = (phase - np.round(phase)) * body.rib_pitch
    q = ((-d_cav - 6.5) / 4.0) ** 2 + (dz / 6.5) ** 2
    bone = np.where(q < 0.55, MARROW, CORTEX)
    bone = np.where(theta > 2.45, CARTILAGE, bone)
    return np.where((q < 1.0) & (theta > 0.3) & (theta < 2.95), bone, np.nan)


def _spine(body: Body, x, y, z, edge):
    """The vertebra near the spine: body occupancy and HU (discs, cortex, marrow), arch mask, canal occupancy."""
    rv, ys = body.vertebra_radius, body.spine_y
    r = np.hypot(x, y - ys)
    phase = (z - body.vertebra_phase) / body.vertebra_pitch
    disc = np.abs(phase - np.round(phase)) * body.vertebra_pitch < 2.8
    core = np.where(disc, DISC, np.where(r > rv - 1.8, CORTEX, MARROW)).astype(np.float32)
    canal_y = ys + rv + 8.0
    rc = np.hypot(x, y - canal_y)
    arch = (rc < 12.5) & (y > canal_y - 3.0)
    processes = ((np.abs(x) < 3.5) & (y > canal_y + 9) & (y < canal_y + 30)) | (
        (np.abs(x) > 8) & (np.abs(x) < 30) & (np.abs(y - canal_y + 2) < 5)
    )
    return _ramp(rv - r, edge), core, arch | processes, _ramp(7.5 - rc, edge)


def render_anatomy(volume: Volume, body: Body, offset, tissue: Tissue, slab: int = 16) -> None:
    """Fill `volume.array` with the chest (HU) at every voxel (world = body coordinates + offset)."""
    edge = voxel_edge(volume)
    offset = np.asarray(offset, np.float32)
    nk, nj, ni = volume.array.shape
    m = volume.index_to_world_matrix.astype(np.float32)
    o = volume.origin.astype(np.float32) - offset
    i, j = np.arange(ni, dtype=np.float32), np.arange(nj, dtype=np.float32)
    # Axial slices (no tilt) share their in-plane body coordinates: the outline is computed once.
    axial = abs(volume.direction[2, 0]) < 1e-9 and abs(volume.direction[2, 1]) < 1e-9
    plane = None
    if axial:
        x2 = (o[0] + m[0, 0] * i[None, :] + m[0, 1] * j[:, None]).ravel()
        y2 = (o[1] + m[1, 0] * i[None, :] + m[1, 1] * j[:, None]).ravel()
        plane = _outside(body, x2, y2, edge)
    for k0 in range(0, nk, slab):
        k = np.arange(k0, min(nk, k0 + slab), dtype=np.float32)
        coords = [
            (o[r] + m[r, 0] * i[None, None, :] + m[r, 1] * j[None, :, None] + m[r, 2] * k[:, None, None])
            for r in range(3)
        ]
        shape = np.broadcast_shapes(*(c.shape for c in coords))
        x, y, z = (np.broadcast_to(c, shape).astype(np.float32).ravel() for c in coords)
        here = _outside(body, x, y, edge) if plane is None else tuple(np.tile(p, len(k)) for p in plane)
        volume.array[k0 : k0 + len(k)] = _render_points(body, tissue, x, y, z, edge, *here).reshape(shape)


def _outside(body: Body, x, y, edge: float):
    """Air and the scanner table around the patient, and the signed depth inside the body outline."""
    hu = np.full(x.shape, AIR, np.float32)
    side = -1.0 if body.prone else 1.0  # +1: the back lies on the table
    t = side * y - (body.flat + 2.0) + 0.0005 * x**2  # a curved carbon-fibre shell over a foam core
    table = (t > 0) & (t < 11) & (np.abs(x) < 215)
    hu[table] = np.where(t[table] < 2.0, 250.0, -820.0)
    width, depth = body.half_width, body.half_depth
    outline = 0.5 * (rounded_depth(x, y, width, depth) + ellipse_depth(x, y, width, depth))
    return hu, np.minimum(outline, body.flat - side * y).astype(np.float32)


def _render_points(body: Body, tissue: Tissue, x, y, z, edge: float, hu, d_body) -> np.ndarray:
    side = -1.0 if body.prone else 1.0
    # Body wall: skin, subcutaneous fat, muscle (work on the points inside the body only).
    inside = np.flatnonzero(d_body > -edge)
    x, y, z, d_body = x[inside], y[inside], z[inside], d_body[inside]
    hb = hu[inside]
    _over(hb, _ramp(d_body, edge), np.where(d_body < 2.0, 20.0, FAT).astype(np.float32))
    _over(hb, _ramp(d_body - body.fat, edge), tissue.soft)
    d_cav = cavity_depth(body, x, y, z)
    band = np.flatnonzero((d_cav < -1.0) & (d_cav > -12.0))
    ribs = _ribs(body, x[band], y[band], z[band], d_cav[band])
    hb[band] = np.where(np.isnan(ribs), hb[band], ribs)
    front = np.flatnonzero((np.abs(x) < 20) & (y < body.cavity[2] - body.cavity[1] + 4))
    sternum = ellipse_depth(x[front], y[front] - (body.cavity[2] - body.cavity[1] - 6.5), 14.0, 5.0)
    _paint(hb, front, _ramp(sternum, edge), np.where(sternum > 1.5, MARROW, CORTEX))
    # Cavity: mediastinal fat, great vessels, heart, trachea.
    cav = np.flatnonzero(d_cav > -edge)
    xc, yc, zc, dc = x[cav], y[cav], z[cav], d_cav[cav]
    hc = hb[cav]
    _over(hc, _ramp(dc, edge), FAT)
    for n, (vx, vy, vr, z0, z1) in enumerate(body.vessels):
        near = np.flatnonzero((zc > z0) & (zc < z1) & (np.abs(xc - vx) < vr + 2) & (np.abs(yc - vy) < vr + 2))
        r = np.hypot(xc[near] - vx, yc[near] - vy)
        _paint(hc, near, _ramp(vr - r, edge), tissue.soft if n == 3 else tissue.blood)
    hx, hy, hz, ax, ay, az = body.heart
    near = np.flatnonzero((np.abs(zc - hz) < az + 2) & (np.abs(xc - hx) < ax + 2) & (np.abs(yc - hy) < ay + 2))
    hxn, hyn, hzn = xc[near] - hx, yc[near] - hy, zc[near] - hz
    _paint(hc, near, _ramp(ellipsoid_depth(hxn, hyn, hzn, ax, ay, az), edge), tissue.soft)
    _paint(hc, near, _ramp(ellipsoid_depth(hxn, hyn, hzn, ax - 9, ay - 9, az - 9), edge), tissue.blood)
    tx, ty, tr = body.trachea
    near = np.flatnonzero((zc > 0) & (np.abs(xc - tx) < tr + 4) & (np.abs(yc - ty) < tr + 4))
    r = np.hypot(xc[near] - tx, yc[near] - ty)
    _paint(hc, near, _ramp(tr + 1.8 - r, edge), tissue.soft)
    _paint(hc, near, _ramp(tr - r, edge), AIR)
    hb[cav] = hc
    # Spine.
    back = np.flatnonzero((np.abs(x) < 42) & (y > body.spine_y - body.vertebra_radius - 2))
    occ, core, arch, canal = _spine(body, x[back], y[back], z[back], edge)
    part = hb[back]
    part += occ * (core - part)
    part[arch] = 600.0
    part += canal * (CSF - part)
    hb[back] = part
    # Lungs: parenchyma denser where dependent, crossed by the oblique fissures.
    depth = lung_depth(body, xc, yc, zc, d_cav=dc)
    lung = np.flatnonzero(depth > -edge)
    xl, yl, zl = xc[lung], yc[lung], zc[lung]
    dependent = side * (yl - body.cavity[2]) / body.cavity[1]
    parenchyma = tissue.lung + tissue.gravity * np.clip(dependent, -1.0, 1.2)
    right = xl < body.midline
    sr, ir, lr, sl, il, ll = body.fissures
    yr = yl - body.cavity[2]
    plane = zl - np.where(right, ir, il) - np.where(right, sr, sl) * yr - 0.004 * yr * yr
    plane -= np.where(right, lr, ll) * (np.abs(xl - body.midline) - 60.0)
    distance = np.abs(plane) * np.where(right, 1.0 / np.sqrt(1 + sr**2 + lr**2), 1.0 / np.sqrt(1 + sl**2 + ll**2))
    fissure = np.clip(1.0 - distance / edge, 0.0, 1.0) * min(0.6, 0.45 / edge)
    parenchyma = parenchyma + fissure * (tissue.soft - parenchyma)
    _paint(hb, cav[lung], _ramp(depth[lung], edge), parenchyma.astype(np.float32))
    hu[inside] = hb
    return hu

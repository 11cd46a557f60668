"""Robustness to acquisition: re-render the CT as another scanner protocol would, before the views are cut.

Perturbations, all in physical units (mm, HU), whatever the voxel spacing:
- noise=SIGMA[:CORR]  added Gaussian noise of SIGMA HU (as at a lower dose); with CORR mm, the noise is
                      first blurred by a Gaussian of CORR mm (correlated, as CT noise is) and rescaled
                      so that its standard deviation is still SIGMA HU.
- thick=T             slices T mm thick: each voxel becomes the mean over T mm along the slice axis (a box
                      profile with fractional end weights), on the original grid. T <= slice spacing: no change.
- smooth=SIGMA        a smoother reconstruction kernel: Gaussian blur of SIGMA mm.
- sharp=AMOUNT        a sharper kernel: unsharp mask, v + AMOUNT * (v - blur(v)), blur of 1 mm.
A perturbation is one `kind=strength` or several joined by '+' (applied in the order written), e.g.
"noise=20", "thick=3+noise=10". Noise is seeded by (seed, nodule id): the same seed gives the same views.

Each nodule's perturbation runs on a crop of its scan that holds every point its nine views sample, plus
the filters' reach, so an identity perturbation gives exactly the cached views (tests check this).
"""

from __future__ import annotations

import concurrent.futures as futures
import multiprocessing
import zlib
from collections import defaultdict
from dataclasses import dataclass
from typing import Sequence

import numpy as np
from scipy import ndimage

from noduleclip.errors import InputError, NoduleClipError
from noduleclip.io import Volume, check_looks_like_ct, read_volume
from noduleclip.preprocess.pipeline import nodule_center
from noduleclip.preprocess.views import ViewConfig, plane_offsets, sample_planes

KINDS = {"noise": "Gaussian noise, HU", "thick": "slice thickness, mm", "smooth": "Gaussian blur, mm",
         "sharp": "unsharp-mask amount"}
UNSHARP_SIGMA_MM = 1.0
TRUNCATE = 4.0  # Gaussian kernels reach TRUNCATE sigma (scipy's default)


@dataclass(frozen=True)
class Step:
    """One kind of perturbation at one strength (`correlation_mm` only for noise)."""

    kind: str
    strength: float
    correlation_mm: float = 0.0

    @property
    def name(self) -> str:
        text = f"{self.kind}={self.strength:g}"
        return text + (f":{self.correlation_mm:g}" if self.correlation_mm else "")

    def reach_mm(self) -> float:
        """How far (mm) a voxel's new value reaches for input values."""
        return {"noise": TRUNCATE * self.correlation_mm, "thick": self.strength / 2,
                "smooth": TRUNCATE * self.strength, "sharp": TRUNCATE * UNSHARP_SIGMA_MM}[self.kind]


@dataclass(frozen=True)
class Perturbation:
    """Steps applied in order; `name` is how the report labels it."""

    steps: tuple[Step, ...]

    @property
    def name(self) -> str:
        return "+".join(s.name for s in self.steps) or "none"


def parse_step(text: str) -> Step:
    kind, sep, value = text.strip().partition("=")
    kind = kind.strip().lower()
    if not sep or kind not in KINDS:
        raise InputError(f"perturbation {text!r} is not kind=strength with kind one of {', '.join(KINDS)}; "
                         "e.g. noise=20, thick=3, smooth=1.0, sharp=0.5")
    strength, _, correlation = value.partition(":")
    if correlation and kind != "noise":
        raise InputError(f"perturbation {text!r}: only noise takes a correlation length (noise=SIGMA:MM)")
    try:
        step = Step(kind, float(strength), float(correlation or 0.0))
    except ValueError:
        raise InputError(f"perturbation {text!r}: {value!r} is not a number") from None
    if not (np.isfinite(step.strength) and step.strength > 0 and 0 <= step.correlation_mm < 50):
        raise InputError(f"perturbation {text!r}: the strength must be a positive number ({KINDS[kind]})")
    return step


def parse_perturbations(specs: Sequence[str]) -> list[Perturbation]:
    """`--perturb` values: each comma-separated item is one perturbation; '+' joins steps into one."""
    out: list[Perturbation] = []
    for spec in specs:
        for item in filter(None, (s.strip() for s in spec.split(","))):
            perturbation = Perturbation(tuple(parse_step(part) for part in item.split("+")))
            if perturbation.name not in {p.name for p in out}:
                out.append(perturbation)
    return out


def _spacing_zyx(volume: Volume) -> np.ndarray:
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
    """Gaussian blur of `sigma_mm` millimetres on every axis."""
    return ndimage.gaussian_filter(array, sigma_mm / np.asarray(spacing_zyx, dtype=float), truncate=TRUNCATE,
                                   mode="nearest")


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


def _perturb_image(records: list, perturbations: list[Perturbation], config: ViewConfig, seed: int) -> list:
    """Read one scan; each nodule's views under each perturbation: [(nodule_id, {name: views} or error)]."""
    try:
        volume = read_volume(records[0].image, records[0].series_uid)
        check_looks_like_ct(volume)
    except Exception as exc:  # noqa: BLE001 - reported per nodule, as the preprocessing does
        return [(r.nodule_id, f"could not read {records[0].image}: {exc}") for r in records]
    results = []
    for record in records:
        try:
            center = nodule_center(volume, record)
            out = {}
            for perturbation in perturbations:
                reach = sum(step.reach_mm() for step in perturbation.steps)
                crop = crop_for_views(volume, center, config, reach)
                views = sample_planes(perturb_volume(crop, perturbation, seed, record.nodule_id), center, config)
                out[perturbation.name] = views.astype(np.float16)  # the view cache's precision
            results.append((record.nodule_id, out))
        except NoduleClipError as exc:
            results.append((record.nodule_id, str(exc)))
    return results


def perturbed_views(records: Sequence, perturbations: Sequence[Perturbation], config: ViewConfig = ViewConfig(),
                    seed: int = 0, workers: int = 1) -> dict[str, np.ndarray]:
    """{perturbation name: views (N, 9, S, S), float16 as in the view cache} of the records in order; each scan is
    read once."""
    groups: dict[str, list] = defaultdict(list)
    for record in records:
        groups[str(record.image)].append(record)
    found: dict[str, dict] = {}

    def collect(results):
        for nid, views in results:
            if isinstance(views, str):
                raise InputError(f"nodule {nid!r} could not be re-rendered for the robustness check: {views}")
            found[nid] = views

    perturbations = list(perturbations)
    if workers <= 1 or len(groups) == 1:
        for group in groups.values():
            collect(_perturb_image(group, perturbations, config, seed))
    else:
        context = multiprocessing.get_context("spawn")
        with futures.ProcessPoolExecutor(min(workers, len(groups)), mp_context=context) as pool:
            for job in [pool.submit(_perturb_image, g, perturbations, config, seed) for g in groups.values()]:
                collect(job.result())
    return {p.name: np.stack([found[r.nodule_id][p.name] for r in records]) for p in perturbations}


def robustness_rows(labels: np.ndarray, risk: np.ndarray, perturbed_risk: dict[str, np.ndarray]) -> list[dict]:
    """Per perturbation: nodule-level AUROC, AUPRC, Brier and their change from the unperturbed scores, DeLong's p
    for the AUROC change, and the per-nodule score shift |delta risk| (median, 95th percentile, maximum)."""
    from noduleclip.evaluate.metrics import classification_metrics
    from noduleclip.evaluate.stats import delong_test

    def scores(s):
        m = classification_metrics(labels, s, n_bootstrap=0, allow_single_class=True)
        return {k: m[k] for k in ("auroc", "auprc", "brier")}, m["reason"]

    base, reason = scores(risk)
    rows = [{"perturbation": "none", **base, **{f"delta_{k}": None for k in base}, "delong_p": None,
             "shift_median": 0.0, "shift_p95": 0.0, "shift_max": 0.0, "reason": reason}]
    for name, other in perturbed_risk.items():
        metrics, _ = scores(other)
        shift = np.abs(np.asarray(other, dtype=float) - risk)
        p = delong_test(labels, risk, other).p if base["auroc"] is not None else None
        rows.append({"perturbation": name, **metrics,
                     **{f"delta_{k}": None if base[k] is None or metrics[k] is None else metrics[k] - base[k]
                        for k in base},
                     "delong_p": p, "shift_median": float(np.median(shift)),
                     "shift_p95": float(np.percentile(shift, 95)), "shift_max": float(shift.max()), "reason": reason})
    return rows


def small(value: float | None) -> float | str | None:
    """A change too small for three decimals in scientific notation (so that it does not read as zero)."""
    return f"{value:.1e}" if value is not None and 0 < abs(value) < 5e-4 else value


def robustness_blocks(rows: Sequence[dict], n_nodules: int, seed: int) -> list:
    """The report's robustness table and how to read it."""
    from noduleclip.report import Table, Text

    columns = ["perturbation", "AUROC", "\u0394 AUROC", "DeLong p", "AUPRC", "\u0394 AUPRC", "Brier", "\u0394 Brier",
               "|\u0394 risk| median", "|\u0394 risk| 95th percentile"]
    table_rows, bold = [], set()
    for i, r in enumerate(rows):
        table_rows.append([r["perturbation"], r["auroc"], small(r["delta_auroc"]), r["delong_p"], r["auprc"],
                           small(r["delta_auprc"]), r["brier"], small(r["delta_brier"]), small(r["shift_median"]),
                           small(r["shift_p95"])])
        if r["delong_p"] is not None and r["delong_p"] < 0.05:
            bold.add((i, 3))
    text = Text(
        f"Every scan re-rendered before the views were cut, then scored by the same fold ensemble ({n_nodules} "
        f"nodules, seed {seed}). noise=S: Gaussian noise of S HU (noise=S:C correlated over C mm); thick=T: each "
        f"voxel the mean over T mm along the slice axis; smooth=S: Gaussian blur of S mm; sharp=A: unsharp mask "
        f"v + A(v - blur of {UNSHARP_SIGMA_MM:g} mm). Applied in the order written when joined by '+'. "
        "\u0394 is perturbed minus unperturbed on the same nodules; "
        "DeLong p tests the AUROC change (paired; bold below 0.05); |\u0394 risk| is each nodule's absolute change "
        "of the ensemble's malignancy probability, over all nodules (labelled or not).")
    notes = [Text(rows[0]["reason"])] if rows and rows[0]["reason"] else []
    return [text, *notes, Table(columns, table_rows, caption="Robustness to acquisition changes (nodule level)",
                                bold=bold)]


def perturbed_risk(models: Sequence, records: Sequence, perturbations: Sequence[Perturbation],
                   config: ViewConfig = ViewConfig(), seed: int = 0, workers: int = 1,
                   batch_size: int = 32) -> dict[str, np.ndarray]:
    """{perturbation name: the fold ensemble's malignancy probability (N,)} of the records under each perturbation."""
    from noduleclip.train.cv import ensemble_predict

    views = perturbed_views(records, perturbations, config, seed, workers)
    return {name: ensemble_predict(models, v, batch_size) for name, v in views.items()}

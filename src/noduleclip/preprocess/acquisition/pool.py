"""Re-cutting the views of re-rendered CTs: each scan read once, in worker processes when asked.

    views = perturbed_views(records, perturbations, config, seed, workers)   # {name: (N, 9, S, S) float16}
    copies = acquisition_views(records, 3, config, seed, workers)          # 3 x (N, 9, S, S), a random protocol each
"""

from __future__ import annotations

import concurrent.futures as futures
import multiprocessing
import zlib
from collections import defaultdict
from collections.abc import Sequence

import numpy as np

from noduleclip.errors import InputError, NoduleClipError
from noduleclip.io import check_looks_like_ct, read_volume
from noduleclip.preprocess.acquisition.spec import TRUNCATE, Perturbation, random_acquisition
from noduleclip.preprocess.acquisition.transforms import perturb_volume
from noduleclip.preprocess.pipeline import nodule_center
from noduleclip.preprocess.views import ViewConfig, crop_for_views, sample_planes
from noduleclip.progress import progress_bar

Plan = list[tuple[Perturbation, str]]
"""What to render of one nodule: (perturbation, the key that seeds its noise) pairs, in order."""


def _render_image(records: list, plans: list[Plan], config: ViewConfig, seed: int) -> list[tuple[str, list | str]]:
    """Read one scan; each nodule's views under each step of its plan: [(nodule_id, [views] or an error)]."""
    try:
        volume = read_volume(records[0].image, records[0].series_uid)
        check_looks_like_ct(volume)
    except Exception as exc:  # noqa: BLE001 - reported per nodule, as the preprocessing does
        return [(r.nodule_id, f"could not read {records[0].image}: {exc}") for r in records]
    results: list[tuple[str, list[np.ndarray] | str]] = []
    for record, plan in zip(records, plans, strict=True):
        try:
            center = nodule_center(volume, record)
            out = []
            for perturbation, key in plan:
                # the steps' reach, plus the views' own blur's (ViewConfig.smooth_mm) on top of it
                reach = sum(step.reach_mm() for step in perturbation.steps) + TRUNCATE * config.smooth_mm
                crop = crop_for_views(volume, center, config, reach)
                views = sample_planes(perturb_volume(crop, perturbation, seed, key), center, config)
                out.append(views.astype(np.float16))  # the view cache's precision
            results.append((record.nodule_id, out))
        except NoduleClipError as exc:
            results.append((record.nodule_id, str(exc)))
    return results


def rendered_views(records: Sequence, plans: Sequence[Plan], config: ViewConfig = ViewConfig(), seed: int = 0,
                   workers: int = 1, purpose: str = "the robustness check", progress: bool = False) -> list[list]:
    """Each record's views (9, S, S) float16 under each step of its plan, as the cache cuts them; each scan is read
    once. A nodule that cannot be rendered stops the work with an InputError naming it and `purpose`."""
    groups: dict[str, list[int]] = defaultdict(list)
    for i, record in enumerate(records):
        groups[f"{record.image}|{record.series_uid or ''}"].append(i)  # one read per scan, as the preprocessing
    jobs = [([records[i] for i in at], [plans[i] for i in at]) for at in groups.values()]
    found: dict[str, list] = {}
    bar = progress_bar(total=len(records), unit="nodule", desc="re-rendered views", disable=not progress)

    def collect(results):
        for nid, views in results:
            if isinstance(views, str):
                raise InputError(f"nodule {nid!r} could not be re-rendered for {purpose}: {views}")
            found[nid] = views
        bar.update(len(results))

    with bar:
        if workers <= 1 or len(jobs) == 1:
            for group, group_plans in jobs:
                collect(_render_image(group, group_plans, config, seed))
        else:
            context = multiprocessing.get_context("spawn")
            with futures.ProcessPoolExecutor(min(workers, len(jobs)), mp_context=context) as pool:
                submitted = [pool.submit(_render_image, g, p, config, seed) for g, p in jobs]
                for job in futures.as_completed(submitted):
                    collect(job.result())
    return [found[r.nodule_id] for r in records]


def perturbed_views(records: Sequence, perturbations: Sequence[Perturbation], config: ViewConfig = ViewConfig(),
                    seed: int = 0, workers: int = 1) -> dict[str, np.ndarray]:
    """{perturbation name: views (N, 9, S, S), float16 as in the view cache} of the records in order; noise is
    seeded by (seed, nodule id), the same for every perturbation."""
    perturbations = list(perturbations)
    views = rendered_views(records, [[(p, r.nodule_id) for p in perturbations] for r in records], config, seed,
                           workers)
    return {p.name: np.stack([v[j] for v in views]) for j, p in enumerate(perturbations)}


def acquisition_plan(nodule_id: str, copies: int, seed: int) -> Plan:
    """The `copies` random scanner protocols of one nodule, each with its own noise key: the same for the same
    (nodule id, seed) wherever and in whatever order it is drawn."""
    rng = np.random.default_rng([int(seed), zlib.crc32(nodule_id.encode()), 0xAC0])
    return [(random_acquisition(rng), f"{nodule_id}#{c + 1}") for c in range(copies)]


def acquisition_views(records: Sequence, copies: int, config: ViewConfig = ViewConfig(), seed: int = 0,
                      workers: int = 1, progress: bool = False) -> list[np.ndarray]:
    """`copies` arrays (N, 9, S, S) float16: the records' views, each copy re-rendered under a scanner protocol
    drawn at random per nodule (`random_acquisition`)."""
    plans = [acquisition_plan(r.nodule_id, copies, seed) for r in records]
    views = rendered_views(records, plans, config, seed, workers, "acquisition augmentation", progress)
    return [np.stack([v[c] for v in views]) for c in range(copies)]

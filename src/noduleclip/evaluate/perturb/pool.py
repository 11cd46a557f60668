"""Re-cutting the views of perturbed CTs: each scan read once, in worker processes when asked.

    views = perturbed_views(records, perturbations, config, seed, workers)   # {name: (N, 9, S, S) float16}
"""

from __future__ import annotations

import concurrent.futures as futures
import multiprocessing
from collections import defaultdict
from collections.abc import Sequence

import numpy as np

from noduleclip.errors import InputError, NoduleClipError
from noduleclip.evaluate.perturb.spec import Perturbation
from noduleclip.evaluate.perturb.transforms import crop_for_views, perturb_volume
from noduleclip.io import check_looks_like_ct, read_volume
from noduleclip.preprocess.pipeline import nodule_center
from noduleclip.preprocess.views import ViewConfig, sample_planes


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

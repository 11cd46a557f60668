"""From a manifest to the view cache: read each scan once, cut every nodule's nine views.

Work is grouped by image so that a scan with several nodules is read once; groups run in worker
processes. A nodule that fails is reported with its reason and the others still complete. An
interruption (Ctrl-C) cancels the pending work and ends the workers at once; a worker whose parent
process is gone (killed) exits by itself. Temporary files that a killed run left in the cache are
removed when a run ends.
"""

from __future__ import annotations

import concurrent.futures as futures
import multiprocessing
import os
import signal
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np

from noduleclip.data.manifest import NoduleManifest, NoduleRecord
from noduleclip.errors import InputError, NoduleClipError
from noduleclip.io import Volume, check_looks_like_ct, read_mask, read_volume
from noduleclip.preprocess.cache import ViewCache
from noduleclip.preprocess.views import ViewConfig, mask_centroid, sample_planes
from noduleclip.progress import progress_bar


def _fmt_point(p) -> str:
    return "(" + ", ".join(f"{v:.1f}" for v in p) + ")"


def check_inside(volume: Volume, center_lps, where: str = "nodule") -> None:
    """Raise a clear InputError when a world point lies outside the scan, with likely causes."""
    center = np.asarray(center_lps, dtype=np.float64)
    if volume.contains(center):
        return
    lo, hi = volume.world_extent()
    extent = ", ".join(f"{ax} {a:.1f}..{b:.1f}" for ax, a, b in zip("xyz", lo, hi, strict=True))
    hints = []
    shape = np.asarray(volume.shape_ijk)
    if np.all(center >= 0) and np.all(center <= shape - 1) and np.allclose(center, np.round(center), atol=1e-6):
        hints.append("the numbers look like voxel indices: give world millimetres")
    if volume.contains(center * np.array([-1.0, -1.0, 1.0])):
        hints.append("with x and y negated it would fall inside: these look like RAS coordinates, the manifest wants "
                     "LPS")
    hint = ("; " + "; ".join(hints) if hints
            else "; check that it is in world millimetres (LPS) and belongs to this scan")
    raise InputError(
        f"{where}: centre {_fmt_point(center)} mm lies outside the scan {volume.source}, "
        f"whose extent is {extent} mm (LPS){hint}"
    )


CROP_MAX_MM = 100.0  # a nodule crop spans less than this on every axis (LIDC crops: 20-62 mm); a CT scan hundreds of mm


def crop_center(volume: Volume, where: str) -> np.ndarray:
    """The centre of a nodule crop, the centre of a nodule given without coordinates or mask; InputError when the
    image is larger than a nodule crop on any axis (a scan's centre is not a nodule)."""
    fov = volume.field_of_view_mm()
    if np.all(fov < CROP_MAX_MM):
        return volume.center_world()
    size = " x ".join(f"{v:.0f}" for v in fov)
    raise InputError(
        f"{where}: no coordinates and no mask are given, and the image {volume.source or '(in memory)'} spans "
        f"{size} mm, so it is a scan, not a nodule crop (under {CROP_MAX_MM:g} mm on every axis) whose centre is "
        f"the nodule; give coord_x, coord_y, coord_z in world millimetres (LPS) or a mask"
    )


def nodule_center(volume: Volume, record: NoduleRecord) -> np.ndarray:
    """The nodule centre in LPS mm: the given coordinate, else the mask centroid, else the crop's centre."""
    if record.coord is not None:
        center = np.asarray(record.coord, dtype=np.float64)
    elif record.mask is not None:
        mask = read_mask(record.mask, reference=volume)
        try:
            center = mask_centroid(mask)
        except ValueError:
            raise InputError(f"{record.where}: mask {record.mask} is empty; give a mask with the nodule or "
                             "coordinates") from None
    else:
        center = crop_center(volume, record.where)
    try:
        check_inside(volume, center, record.where)
    except InputError as exc:
        if record.coord is None or record.mask is None:
            raise
        centroid = mask_centroid(read_mask(record.mask, reference=volume))
        raise InputError(f"{exc}; its mask's centroid is {_fmt_point(centroid)} mm") from None
    return center


@dataclass
class PreprocessReport:
    done: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)

    def summary(self) -> str:
        return f"{len(self.done)} computed, {len(self.skipped)} already cached, {len(self.failed)} failed"


@dataclass
class CutNodule:
    """One nodule of a scan as `scan_views` cut it: its views (9, S, S) and centre (LPS mm), or why not."""

    nodule_id: str
    views: np.ndarray | None = None
    center: np.ndarray | None = None
    error: str | None = None
    source_spacing: list[float] | None = None


def scan_views(records: list[NoduleRecord], config: ViewConfig) -> list[CutNodule]:
    """Read one scan (the records share it) once and cut each nodule's nine views; a failure is the nodule's
    `error` (the scan's, for all of them, when it cannot be read), never an exception."""
    try:
        volume = read_volume(records[0].image, records[0].series_uid)
        check_looks_like_ct(volume)
    except NoduleClipError as exc:
        return [CutNodule(r.nodule_id, error=str(exc)) for r in records]
    except Exception as exc:  # an unexpected reader failure must not stop the other scans
        return [CutNodule(r.nodule_id, error=f"could not read {records[0].image}: {type(exc).__name__}: {exc}")
                for r in records]
    results = []
    for record in records:
        try:
            center = nodule_center(volume, record)
            results.append(CutNodule(record.nodule_id, sample_planes(volume, center, config), center,
                                     source_spacing=volume.spacing.tolist()))
        except NoduleClipError as exc:
            results.append(CutNodule(record.nodule_id, error=str(exc)))
        except Exception as exc:
            results.append(CutNodule(record.nodule_id, error=f"{type(exc).__name__}: {exc}"))
    return results


def _process_image(records: list[NoduleRecord], cache: ViewCache) -> list[tuple[str, str | None]]:
    """Read one image and cache the views of its nodules; returns (nodule_id, error or None)."""
    results: list[tuple[str, str | None]] = []
    for record, cut in zip(records, scan_views(records, cache.config), strict=True):
        if cut.views is not None and cut.center is not None:  # cut without error
            try:
                cache.save(record, cut.views, cut.center, {"source_spacing": cut.source_spacing})
            except NoduleClipError as exc:
                cut.error = str(exc)
        results.append((record.nodule_id, cut.error))
    return results


def scan_groups(records) -> list[list[NoduleRecord]]:
    """The records grouped by scan (image and series), in the order of their first nodule: one read per scan."""
    groups: dict[str, list[NoduleRecord]] = defaultdict(list)
    for record in records:
        groups[f"{record.image}|{record.series_uid or ''}"].append(record)
    return list(groups.values())


def preprocess_manifest(
    manifest: NoduleManifest,
    cache: ViewCache,
    workers: int = 1,
    progress: bool = True,
) -> PreprocessReport:
    """Compute and cache the views of every nodule not yet cached; never raises for one bad nodule."""
    report = PreprocessReport()
    report.skipped = [record.nodule_id for record in manifest if cache.is_current(record)]
    groups = scan_groups(record for record in manifest if not cache.is_current(record))
    todo = sum(len(g) for g in groups)  # no bar when every nodule is cached already
    bar = progress_bar(total=todo, unit="nodule", desc="views", disable=not progress or todo == 0)
    workers = max(1, min(workers, len(groups)))

    def collect(results):
        for nid, err in results:
            (report.failed.append((nid, err)) if err else report.done.append(nid))
        bar.update(len(results))

    started = time.time()
    try:
        if workers == 1:
            for records in groups:
                collect(_process_image(records, cache))
        else:
            run_pool(_process_image, [(records, cache) for records in groups], workers, collect)
    finally:
        bar.close()
        cache.remove_stale_temporaries(before=started)
    return report


def _watch_parent(parent: int) -> None:
    """Worker start: leave Ctrl-C to the parent, and exit as soon as the parent process is gone."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.2)
        os._exit(1)

    threading.Thread(target=watch, daemon=True).start()


def _stop_pool(pool: futures.ProcessPoolExecutor) -> None:
    """Cancel the pending work and end the worker processes now, without waiting for the nodules they compute."""
    processes = list((pool._processes or {}).values())
    pool.shutdown(wait=False, cancel_futures=True)
    for process in processes:
        if process.is_alive():
            process.terminate()
    for process in processes:
        process.join(timeout=2)
        if process.is_alive():
            process.kill()
            process.join(timeout=1)


def run_pool(function, jobs: list[tuple], workers: int, collect) -> None:
    """`function(*job)` for each job in `workers` processes, each result passed to `collect` as it comes (in this
    process, so that it can use the results while the workers go on); Ctrl-C or an error stops the workers."""
    ctx = multiprocessing.get_context("spawn")
    pool = futures.ProcessPoolExecutor(workers, mp_context=ctx, initializer=_watch_parent, initargs=(os.getpid(),))
    try:
        submitted = [pool.submit(function, *job) for job in jobs]
        for job in futures.as_completed(submitted):
            collect(job.result())
    except futures.process.BrokenProcessPool:
        _stop_pool(pool)
        raise InputError("a preprocessing worker process died (out of memory, or a script that calls noduleclip "
                         "without `if __name__ == \"__main__\":`, which worker processes need); guard the "
                         "script's entry point or pass workers=1") from None
    except BaseException:
        _stop_pool(pool)
        raise
    pool.shutdown(wait=True)


def default_workers() -> int:
    return max(1, min(4, os.cpu_count() or 1))

"""Nine views: our direct sampling vs the authors' resample-crop-rotate way, and `preprocess` throughput.

    .venv/bin/python benchmarks/preprocess.py [--crops 30] [--workers 2]

Needs ../shared/data (real LIDC-IDRI). Prints per-nodule times of both ways on the same nodules,
their ratio (goal: ours >= 20x faster) and their agreement, then end-to-end nodules per second of
`preprocess` on the LIDC crops and on the LIDC-IDRI-0001 series.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

import numpy as np

from noduleclip.data.manifest import NoduleManifest
from noduleclip.io import read_volume
from noduleclip.preprocess.cache import ViewCache
from noduleclip.preprocess.pipeline import preprocess_manifest
from noduleclip.preprocess.reference import reference_planes
from noduleclip.preprocess.views import sample_planes

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


def best_of(fn, repeats: int = 3) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def compare(name: str, volume, centers) -> None:
    ours = ref = 0.0
    diffs = []
    for c in centers:
        ours += best_of(partial(sample_planes, volume, c))
        ref += best_of(partial(reference_planes, volume, c), repeats=1)
        diffs.append(np.abs(sample_planes(volume, c) - reference_planes(volume, c))[:, 5:45, 5:45].mean())
    n = len(centers)
    print(f"{name:<28} {n:>4} {ref / n * 1e3:>12.1f} {ours / n * 1e3:>10.2f} {ref / ours:>8.0f}x "
          f"{np.mean(diffs):>10.4f}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--crops", type=int, default=30, help="crops for the per-nodule comparison")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    if not DATA.is_dir():
        print(f"needs {DATA} (real LIDC-IDRI data)")
        return 1
    from helpers import lidc0001_nodule_center

    print("per nodule, same nodules, same process")
    print(f"{'data':<28} {'n':>4} {'reference ms':>12} {'ours ms':>10} {'ratio':>9} {'mean |diff|':>10}")
    series = read_volume(DATA / "lidc-idri-0001")
    nodule = lidc0001_nodule_center(DATA, series)
    compare("LIDC-IDRI-0001 series", series, [nodule])
    crops = NoduleManifest.read(DATA / "lidc-crops" / "manifest.csv")
    ours = ref = 0.0
    diffs = []
    picked = [r for r in crops if r.coord is not None][: args.crops]
    for r in picked:
        vol = read_volume(r.image)
        if not vol.contains(r.coord):
            continue
        ours += best_of(partial(sample_planes, vol, r.coord))
        ref += best_of(partial(reference_planes, vol, r.coord), repeats=1)
        diffs.append(np.abs(sample_planes(vol, r.coord) - reference_planes(vol, r.coord))[:, 5:45, 5:45].mean())
    n = len(diffs)
    print(f"{'LIDC crops':<28} {n:>4} {ref / n * 1e3:>12.1f} {ours / n * 1e3:>10.2f} {ref / ours:>8.0f}x "
          f"{np.mean(diffs):>10.4f}")

    print(f"\nend to end `preprocess` (read, views, cache write), {args.workers} workers")
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        report = preprocess_manifest(crops, ViewCache(Path(tmp) / "crops"), workers=args.workers, progress=False)
        wall = time.perf_counter() - start
        print(f"LIDC crops: {len(report.done)} nodules ({len(report.failed)} failed) in {wall:.1f} s = "
              f"{len(report.done) / wall:.0f} nodules/s")
        rows = []
        rng = np.random.default_rng(0)
        for i in range(10):
            c = nodule if i == 0 else nodule + rng.uniform(-40, 40, 3)
            rows.append(dict(patient_id="LIDC-IDRI-0001", nodule_id=f"p{i}", image=str(DATA / "lidc-idri-0001"),
                             coord_x=c[0], coord_y=c[1], coord_z=c[2]))
        manifest = NoduleManifest.read(NoduleManifest.write(Path(tmp) / "series.csv", rows))
        start = time.perf_counter()
        report = preprocess_manifest(manifest, ViewCache(Path(tmp) / "series"), workers=1, progress=False)
        wall = time.perf_counter() - start
        print(f"LIDC-IDRI-0001 series: {len(report.done)} nodules of one 133-slice series in {wall:.2f} s "
              f"= {len(report.done) / wall:.1f} nodules/s (one read of the series)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

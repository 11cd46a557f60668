"""Synthetic patients: where one patient's seconds go, and the series writer against pydicom's save_as.

    .venv/bin/python benchmarks/synth.py [--preset screening] [--patients 4]

Renders `--patients` patients of a preset in this process, one at a time (the demo runs two such processes),
and prints the seconds per patient of the whole patient, its anatomy and its DICOM series. The series are then
written again both ways: `SliceEncoder` (what every slice shares encoded once) and pydicom's `save_as` for every
slice (the reference), best of three, with their ratio; the files must be the same bytes.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import tempfile
import time
from pathlib import Path
from unittest import mock

from noduleclip.synth import cohort, dicom
from noduleclip.synth.presets import get_preset


def _timed(function, totals: dict, name: str):
    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        try:
            return function(*args, **kwargs)
        finally:
            totals[name] = totals.get(name, 0.0) + time.perf_counter() - start
    return wrapper


def _save_as(self, ds) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="screening")
    parser.add_argument("--patients", type=int, default=4)
    args = parser.parse_args(argv)
    preset = get_preset(args.preset)
    intercept = cohort.calibrate_intercept(round(preset.prevalence, 6))
    series: list[tuple] = []  # (hu, scan, who) of each patient, to write again below
    totals: dict[str, float] = {}
    keep = dicom.write_series

    def capture(folder, hu, scan, who):
        series.append((hu, scan, who))
        return keep(folder, hu, scan, who)

    with tempfile.TemporaryDirectory() as folder, \
            mock.patch.object(cohort, "render_anatomy", _timed(cohort.render_anatomy, totals, "anatomy")), \
            mock.patch.object(cohort, "write_series", _timed(capture, totals, "DICOM series")):
        cohort.synthesize_patient(cohort.PatientJob(args.patients, 0, preset, intercept, folder))  # warm-up
        totals.clear()
        series.clear()
        start = time.perf_counter()
        for index in range(args.patients):
            cohort.synthesize_patient(cohort.PatientJob(index, 0, preset, intercept, folder))
        whole = time.perf_counter() - start
    slices = sum(hu.shape[0] for hu, _, _ in series) / len(series)
    print(f"{args.preset}: {args.patients} patients, {slices:.0f} slices each on average; seconds per patient")
    print(f"  {'whole patient':<28} {whole / args.patients:6.3f}")
    for name, seconds in totals.items():
        print(f"  {name:<28} {seconds / args.patients:6.3f}")

    def write_all(root: Path) -> None:
        for hu, scan, who in series:
            keep(root / who.patient_id, hu, scan, who)

    best = {}
    with tempfile.TemporaryDirectory() as folder:
        for name, patch in (("SliceEncoder (ours)", None), ("save_as per slice", _save_as)):
            times = []
            for repeat in range(3):
                root = Path(folder) / f"{len(best)}-{repeat}"
                with mock.patch.object(dicom.SliceEncoder, "encode", patch) if patch else contextlib.nullcontext():
                    start = time.perf_counter()
                    write_all(root)
                    times.append(time.perf_counter() - start)
            best[name] = min(times)
        ours, reference = (sorted(Path(folder, f"{k}-0").rglob("*.dcm")) for k in (0, 1))
        same = len(ours) == len(reference) and all(a.read_bytes() == b.read_bytes()
                                                   for a, b in zip(ours, reference, strict=True))
    print(f"\nwriting the series again, best of 3, seconds per patient (files the same bytes: {same})")
    for name, seconds in best.items():
        print(f"  {name:<28} {seconds / len(series):6.3f}  {best['save_as per slice'] / seconds:5.2f}x")


if __name__ == "__main__":
    main()

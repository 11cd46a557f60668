"""`noduleclip synth`: write the built-in synthetic chest-CT cohort (DICOM series + nodule manifest)."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from noduleclip.commands import summary


def _default_workers() -> int:
    try:
        return max(1, min(8, len(os.sched_getaffinity(0))))
    except AttributeError:  # not on Linux
        return max(1, min(8, os.cpu_count() or 1))


def register(subparsers) -> None:
    from noduleclip.synth.presets import PRESETS

    presets = "; ".join(f"{p.name}: {p.description}" for p in PRESETS.values())
    parser = subparsers.add_parser(
        "synth",
        help=summary("synth"),
        description=(
            "Write a synthetic cohort: one chest CT per patient as a DICOM series, nodules rendered from "
            "their semantic features, malignancy drawn from a documented logistic risk model, and "
            "manifest.csv (world LPS coordinates, labels, semantic features) plus cohort.json (settings, "
            "risk model, true risks). The same seed gives byte-identical files."
        ),
    )
    parser.add_argument("--out", required=True, type=Path, help="new or empty output folder")
    parser.add_argument("--patients", type=int, default=200, help="number of patients (default 200)")
    parser.add_argument("--seed", type=int, default=0,
                        help="random seed; patients and files depend only on it and the preset (default 0)")
    parser.add_argument("--preset", default="screening", help=f"acquisition preset, default screening ({presets})")
    parser.add_argument("--workers", type=int, default=_default_workers(),
                        help="worker processes (default: the CPUs available, at most 8)")
    parser.add_argument("--prevalence", type=float, default=None,
                        help="fraction of malignant nodules (default: the preset's)")
    parser.add_argument("--overwrite", action="store_true", help="replace a cohort already in --out")
    parser.add_argument("--no-progress", action="store_true", help="do not show the progress bar")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from noduleclip.synth import make_cohort

    manifest = make_cohort(
        args.out, args.patients, seed=args.seed, preset=args.preset, workers=args.workers,
        prevalence=args.prevalence, overwrite=args.overwrite, progress=not args.no_progress,
    )
    cohort = json.loads((manifest.parent / "cohort.json").read_text())
    print(
        f"wrote {cohort['patients']} patients, {cohort['nodules']} nodules "
        f"({cohort['nodule_prevalence']:.0%} malignant; {cohort['patient_prevalence']:.0%} of patients) "
        f"to {manifest}"
    )
    return 0

"""`noduleclip preprocess MANIFEST --out CACHE`: the nine views of every nodule, cached."""

from __future__ import annotations

import argparse
import sys

from noduleclip.commands import summary
from noduleclip.preprocess.views import MAX_SMOOTH_MM, ViewConfig


def add_view_options(parser) -> None:
    """View settings shared by every command that cuts views (the paper's values by default)."""
    d = ViewConfig()
    g = parser.add_argument_group("views")
    g.add_argument("--cube-mm", type=float, default=d.size * d.spacing_mm, help="cube edge in mm (default %(default)s)")
    g.add_argument("--spacing-mm", type=float, default=d.spacing_mm, help="view pixel size in mm (default %(default)s)")
    g.add_argument("--hu-min", type=float, default=d.hu_min, help="lower HU of the window (default %(default)s)")
    g.add_argument("--hu-max", type=float, default=d.hu_max, help="upper HU of the window (default %(default)s)")
    g.add_argument("--mark-outside", action=argparse.BooleanOptionalAction, default=d.mark_outside,
                   help="mark the views' pixels beyond the scan's edge (the model sees them in blue) instead of "
                   "filling them with air, which looks like lung; for crops a few millimetres deep "
                   "(default %(default)s)")
    g.add_argument("--smooth-mm", type=float, default=d.smooth_mm, metavar="MM",
                   help="blur each scan around its nodule by a Gaussian of MM millimetres before cutting the views, "
                   "in training and in prediction alike, to even out reconstruction kernels (default %(default)s: "
                   "none)")


def view_config(args) -> ViewConfig:
    from noduleclip.errors import InputError

    if args.spacing_mm <= 0 or args.cube_mm <= 0:
        raise InputError("--cube-mm and --spacing-mm must be positive millimetres")
    if args.hu_max <= args.hu_min:
        raise InputError(f"--hu-max ({args.hu_max}) must be above --hu-min ({args.hu_min})")
    smooth_mm = float(getattr(args, "smooth_mm", 0.0))
    if not 0 <= smooth_mm <= MAX_SMOOTH_MM:
        raise InputError(f"--smooth-mm {smooth_mm:g} is not a blur of 0 to {MAX_SMOOTH_MM:g} mm")
    size = int(round(args.cube_mm / args.spacing_mm))
    return ViewConfig(size=size, spacing_mm=args.spacing_mm, hu_min=args.hu_min, hu_max=args.hu_max,
                      mark_outside=bool(getattr(args, "mark_outside", False)), smooth_mm=smooth_mm)


def register(sub) -> None:
    p = sub.add_parser("preprocess", help=summary("preprocess"),
                       description="Read each CT once and cache the nine 2.5D views of its nodules. "
                       "Nodules already cached are skipped; a failed nodule is reported and the rest complete "
                       "(exit status 1 when any failed).")
    p.add_argument("manifest", help="nodule manifest CSV")
    p.add_argument("--out", required=True, help="cache folder")
    p.add_argument("--workers", type=int, default=None, help="worker processes (default: up to 4)")
    add_view_options(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from noduleclip.data.manifest import NoduleManifest
    from noduleclip.preprocess.cache import ViewCache
    from noduleclip.preprocess.pipeline import default_workers, preprocess_manifest

    manifest = NoduleManifest.read(args.manifest)
    cache = ViewCache(args.out, view_config(args))
    report = preprocess_manifest(manifest, cache, workers=args.workers or default_workers())
    print(f"{len(manifest)} nodules: {report.summary()}; cache in {cache.root}")
    for nid, reason in report.failed:
        print(f"failed {nid}: {reason}", file=sys.stderr)
    return 1 if report.failed else 0

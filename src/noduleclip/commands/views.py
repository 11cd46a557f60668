"""`noduleclip views IMAGE --coord X,Y,Z --out views.png`: draw one nodule's nine views."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from noduleclip.commands import summary
from noduleclip.commands.preprocess import add_view_options, view_config
from noduleclip.errors import InputError


def parse_coord(text: str) -> np.ndarray:
    """'X,Y,Z' in world mm (LPS) -> array; a clear error otherwise."""
    parts = [p for p in text.replace(" ", ",").split(",") if p]
    try:
        values = [float(p) for p in parts]
    except ValueError:
        values = []
    if len(values) != 3 or not np.all(np.isfinite(values)):
        raise InputError(f"--coord {text!r} is not three numbers X,Y,Z in world millimetres (LPS)")
    return np.array(values)


def add_series_option(parser) -> None:
    """The --series-uid option: which CT series of a DICOM folder that holds several to read."""
    parser.add_argument("--series-uid", metavar="UID",
                        help="SeriesInstanceUID of the CT series to read when the DICOM folder holds several")


def check_png_out(out: str) -> Path:
    """The --out path of a PNG figure, refused in one sentence if it is a folder or not named .png."""
    path = Path(out)
    if path.is_dir():
        raise InputError(f"--out {out} is a folder; give the name of the PNG file to write, e.g. {path / 'views.png'}")
    if path.suffix.lower() != ".png":
        raise InputError(f"--out {out} is not a .png name; give a file name ending in .png")
    return path


def register(sub) -> None:
    p = sub.add_parser("views", help=summary("views"),
                       description="Cut the nine 2.5D views around a nodule and draw them, labelled by plane, "
                       "so that a person can check them by eye.")
    p.add_argument("image", help="CT: DICOM series folder, NIfTI, MHA/MHD or NRRD")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--coord", help="nodule centre X,Y,Z in world mm (LPS); default: the image centre")
    where.add_argument("--mask", help="nodule mask aligned with the image: its centroid is the centre")
    p.add_argument("--out", required=True, help="output PNG")
    add_series_option(p)
    add_view_options(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from noduleclip.io import read_mask, read_volume
    from noduleclip.plots import plot_views
    from noduleclip.preprocess.pipeline import check_inside
    from noduleclip.preprocess.views import mask_centroid, sample_planes

    out = check_png_out(args.out)
    config = view_config(args)
    volume = read_volume(args.image, series_uid=args.series_uid)
    if args.coord:
        center = parse_coord(args.coord)
    elif args.mask:
        try:
            center = mask_centroid(read_mask(args.mask, reference=volume))
        except ValueError:
            raise InputError(f"mask {args.mask} is empty; give a mask that contains the nodule") from None
    else:
        center = volume.center_world()
    check_inside(volume, center, "--coord")
    views = sample_planes(volume, center, config)
    title = f"{args.image}\ncentre {tuple(round(float(c), 1) for c in center)} mm (LPS)" + (
        f", blurred by {config.smooth_mm:g} mm" if config.smooth_mm else "")
    out = plot_views(views, out, title=title)
    print(f"wrote {out}")
    return 0

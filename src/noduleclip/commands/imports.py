"""`noduleclip import-lidc | import-crops | import-luna`: public data and crop folders -> a nodule manifest."""

from __future__ import annotations

import sys
import time

from noduleclip.commands import summary
from noduleclip.importers.lidc_xml import LidcConfig


def _add_label_options(parser) -> None:
    d = LidcConfig()
    parser.add_argument("--malignant-at", type=int, default=d.malignant_at,
                        help="median malignancy at or above this is label 1 (default %(default)s)")
    parser.add_argument("--benign-at", type=int, default=d.benign_at,
                        help="median malignancy at or below this is label 0; in between is unknown "
                             "(default %(default)s)")


def _config(args) -> LidcConfig:
    from noduleclip.importers.lidc import check_config

    config = LidcConfig(malignant_at=args.malignant_at, benign_at=args.benign_at,
                        min_diameter_mm=getattr(args, "min_diameter", LidcConfig.min_diameter_mm))
    check_config(config)
    return config


def register(sub) -> None:
    p = sub.add_parser("import-lidc", help=summary("import-lidc"),
                       description="Group the LIDC readers' marks into nodules (consensus ratings, diameter, centre, "
                       "label) and write a manifest with world LPS centres for every CT series under --dicom that "
                       "has a read. Without --dicom, write a ratings table (no images: pixel distances use a nominal "
                       "0.7 mm pixel, patient_id is the StudyInstanceUID unless --patients maps series to patients).")
    p.add_argument("--xml", required=True, help="LIDC XML: a file, a folder (searched recursively) or the .tar.gz")
    p.add_argument("--dicom", help="folder holding the CT series (searched recursively)")
    p.add_argument("--out", required=True, help="output manifest CSV (ratings CSV without --dicom)")
    p.add_argument("--masks", help="folder for each nodule's consensus mask (NIfTI on the series' grid)")
    p.add_argument("--min-diameter", type=float, default=LidcConfig.min_diameter_mm,
                   help="leave out nodules whose consensus diameter is below this, mm (default %(default)s)")
    p.add_argument("--patients", help="CSV with series_uid and patient_id columns, for the ratings table")
    p.add_argument("--no-progress", action="store_true", help="do not show progress bars")
    _add_label_options(p)
    p.set_defaults(func=run_lidc)

    p = sub.add_parser("import-crops", help=summary("import-crops"),
                       description="Turn a CSV of nodule crops (patient_id, image, optional nodule_id, coordinates, "
                       "mask, label, LIDC or schema feature columns) into a manifest. Given coordinates are kept; "
                       "otherwise the crop's centre (or its mask's centroid) is the nodule centre.")
    p.add_argument("table", help="CSV listing the crops (relative paths start at its folder)")
    p.add_argument("--out", required=True, help="output manifest CSV")
    p.add_argument("--crop-centre", action="store_true", help="ignore given coordinates: use each crop's centre")
    _add_label_options(p)
    p.set_defaults(func=run_crops)

    p = sub.add_parser("import-luna", help=summary("import-luna"),
                       description="Turn seriesuid,coordX,coordY,coordZ[,diameter_mm][,class|label] rows and a folder "
                       "of <seriesuid>.mhd/.nii/.nii.gz files or <seriesuid> DICOM folders into a manifest.")
    p.add_argument("annotations", help="annotations CSV (LUNA16 format)")
    p.add_argument("--images", required=True, help="folder holding the scans (searched recursively)")
    p.add_argument("--out", required=True, help="output manifest CSV")
    p.add_argument("--candidates", action="store_true",
                   help="the list is a LUNA16 candidates file: class 1 = nodule (kept, label unknown), 0 = left out")
    p.set_defaults(func=run_luna)


def _patient_map(path) -> dict[str, str]:
    from noduleclip.errors import InputError
    from noduleclip.importers.crops import read_table

    path, header, rows = read_table(path, "patient table")
    if "series_uid" not in header or "patient_id" not in header:
        raise InputError(f"patient table {path} needs series_uid and patient_id columns (found {', '.join(header)})")
    return {r["series_uid"]: r["patient_id"] for r in rows if r["series_uid"] and r["patient_id"]}


def run_lidc(args) -> int:
    from noduleclip.errors import InputError
    from noduleclip.importers.lidc import import_lidc, lidc_ratings_table, write_ratings

    config = _config(args)
    start = time.perf_counter()
    if args.dicom is None:
        if args.masks:
            raise InputError("--masks needs --dicom: masks lie on the CT series' grid")
        patients = _patient_map(args.patients) if args.patients else None
        rows, report = lidc_ratings_table(args.xml, config, patients, progress=not args.no_progress)
        write_ratings(args.out, rows)
        what = "ratings table"
    else:
        report = import_lidc(args.dicom, args.xml, args.out, args.masks, config, progress=not args.no_progress)
        what = "manifest"
    for line in report.details():
        print(line, file=sys.stderr)
    print(f"wrote {what} {args.out}: {report.summary()} ({time.perf_counter() - start:.1f} s)")
    return 0


def run_crops(args) -> int:
    from noduleclip.importers.crops import import_crops

    labels = import_crops(args.table, args.out, _config(args), crop_centre=args.crop_centre)
    print(f"wrote manifest {args.out}: {sum(labels.values())} nodules ({labels[1]} malignant, {labels[0]} benign, "
          f"{labels[None]} unknown)")
    return 0


def run_luna(args) -> int:
    from noduleclip.importers.luna import import_luna

    report = import_luna(args.annotations, args.images, args.out, candidates=args.candidates)
    print(f"wrote manifest {args.out}: {report.summary()}")
    return 0

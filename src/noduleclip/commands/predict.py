"""`noduleclip predict RUN IMAGE --coord X,Y,Z --out DIR`: a trained run's risk and semantic profile per nodule;
`noduleclip predict RUN --manifest CSV --out DIR`: every nodule of many scans (see `noduleclip.predict.batch`)."""

from __future__ import annotations

import logging
import time

from noduleclip.commands import summary
from noduleclip.errors import InputError


def register(sub) -> None:
    from noduleclip.commands.views import add_series_option

    p = sub.add_parser(
        "predict", help=summary("predict"),
        description="Read one CT (DICOM series folder, NIfTI, MHA/MHD or NRRD), cut the nine views around each "
        "nodule, and score them with a trained run's fold models: the calibrated malignancy risk (the mean of the "
        "folds, through the run's calibrator.json; stated as uncalibrated when the run has none), the zero-shot "
        "semantic profile (the paper's prompts) and the views' attention. Writes predictions.json, "
        "predictions.csv, one PNG panel per nodule and, with --dicom-sr, a DICOM SR (TID 1500) that references "
        "the series. Nothing is written into --out unless everything succeeds. With --manifest instead of an IMAGE: "
        "every nodule of a nodule manifest (many scans, each read once, views cut in worker processes while the "
        "models score), one predictions.csv/.json for all, resumable (a second run skips the scans already done), "
        "a scan that fails reported in failures.csv while the rest complete; under torchrun or accelerate launch "
        "the scans are split across the processes.")
    p.add_argument("run", help="run folder of `noduleclip train`")
    p.add_argument("image", nargs="?", help="CT: DICOM series folder, NIfTI, MHA/MHD or NRRD")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--coord", action="append", metavar="X,Y,Z",
                       help="nodule centre in world mm (LPS), e.g. --coord -87.6,45.2,-120; repeat for more nodules")
    where.add_argument("--nodules", metavar="CSV",
                       help="CSV with one row per nodule: coord_x, coord_y, coord_z (LPS mm) or mask, "
                            "optional nodule_id")
    where.add_argument("--mask", metavar="SEG",
                       help="nodule segmentation aligned with the image: its centroid is the centre")
    where.add_argument("--manifest", metavar="CSV",
                       help="a nodule manifest (patient_id, nodule_id, image, coordinates or mask; labels optional): "
                            "predict all its nodules, without an IMAGE")
    p.add_argument("--out", required=True, help="output folder")
    add_series_option(p)
    p.add_argument("--dicom-sr", action="store_true",
                   help="also write a DICOM Structured Report (TID 1500) referencing the series (DICOM input only)")
    p.add_argument("--device", default="cpu", help="torch device for the models (default %(default)s)")
    p.add_argument("--panels", action="store_true",
                   help="with --manifest: also each scan's panels (and SR with --dicom-sr) under OUT/scans/")
    p.add_argument("--workers", type=int, default=None,
                   help="with --manifest: processes that read scans and cut views (default: up to 4, one per core)")
    p.set_defaults(func=run)


def run(args) -> int:
    from noduleclip.commands.views import parse_coord
    from noduleclip.predict.api import NoduleClip
    from noduleclip.predict.outputs import write_outputs
    from noduleclip.predict.panel import percent
    from noduleclip.predict.sites import locate_nodules, read_image
    from noduleclip.predict.sr import require_dicom_source
    from noduleclip.run_folder import check_run_complete, model_card_summary

    for noisy in ("matplotlib", "highdicom"):  # -v is for the stage timings, not font matching or SR building
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if args.manifest is not None:
        return _run_manifest(args)
    if args.image is None or not (args.coord or args.nodules or args.mask):
        raise InputError("predict needs an IMAGE with its nodules (--coord, --nodules or --mask), or --manifest CSV "
                         "for many scans: `noduleclip predict RUN IMAGE --coord X,Y,Z --out DIR`")
    if args.panels or args.workers is not None:
        raise InputError("--panels and --workers are for --manifest; one IMAGE always gets its panels")
    started = time.perf_counter()
    check_run_complete(args.run)  # a missing or unfinished run is named before the scan is read
    volume = read_image(args.image, series_uid=args.series_uid)
    if args.dicom_sr:
        require_dicom_source(volume)
    coords = [parse_coord(text) for text in args.coord] if args.coord else None
    sites = locate_nodules(volume, coords=coords, nodules=args.nodules, mask=args.mask)
    read_seconds = time.perf_counter() - started
    model = NoduleClip.load(args.run, device=args.device)
    load_seconds = time.perf_counter() - started - read_seconds
    predictions = model.predict_sites(volume, sites)
    written = write_outputs(args.out, predictions, volume, model, dicom_sr=args.dicom_sr)
    timings = {"read": read_seconds, "load": load_seconds, **model.timings,
               "outputs": time.perf_counter() - started - read_seconds - load_seconds - sum(model.timings.values())}
    logging.getLogger(__name__).debug("seconds: " + ", ".join(f"{k} {v:.2f}" for k, v in timings.items()))
    card = model_card_summary(args.run)
    if card:
        print(f"model: {card} (MODEL_CARD.md in the run folder)")
    for p in predictions:
        centre = ", ".join(f"{c:.1f}" for c in p.center_lps)
        state = f"calibrated ({p.calibration})" if p.calibration else "UNCALIBRATED"
        profile = "; ".join(f"{f} {v} {percent(q)}" for f, (v, q) in list(p.semantics.items())[:4])
        print(f"{p.nodule_id} ({centre}) mm: risk {percent(p.risk)} {state}" + (f"; {profile}" if profile else ""))
    for note in model.notes:
        print(f"note: {note}")
    print(f"wrote {args.out}: " + ", ".join(path.name for path in written))
    return 0


def _run_manifest(args) -> int:
    from noduleclip.predict.batch import predict_manifest
    from noduleclip.run_folder import model_card_summary

    if args.image is not None:
        raise InputError(f"give either an IMAGE ({args.image}) or --manifest, not both: the manifest names its scans")
    if args.series_uid is not None:
        raise InputError("--series-uid is for one IMAGE; a manifest names each nodule's series in its series_uid "
                         "column")
    report = predict_manifest(args.run, args.manifest, args.out, panels=args.panels, dicom_sr=args.dicom_sr,
                              workers=args.workers, device=args.device)
    if not report.files:  # a process of a distributed launch other than the first: the first one reports
        return 0
    card = model_card_summary(args.run)
    if card:
        print(f"model: {card} (MODEL_CARD.md in the run folder)")
    print(f"{report.summary()}; wrote {args.out}: " + ", ".join(path.name for path in report.files))
    for failure in report.failed[:10]:
        print(f"failed: {failure['nodule_id'] or failure['image']}: {failure['reason']}")
    if len(report.failed) > 10:
        print(f"... and {len(report.failed) - 10} more in failures.csv")
    return 1 if report.failed else 0

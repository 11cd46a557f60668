"""`noduleclip predict RUN IMAGE --coord X,Y,Z --out DIR`: a trained run's risk and semantic profile per nodule."""

from __future__ import annotations

import logging
import time

from noduleclip.commands import summary


def register(sub) -> None:
    from noduleclip.commands.views import add_series_option

    p = sub.add_parser(
        "predict", help=summary("predict"),
        description="Read one CT (DICOM series folder, NIfTI, MHA/MHD or NRRD), cut the nine views around each "
        "nodule, and score them with a trained run's fold models: the calibrated malignancy risk (the mean of the "
        "folds, through the run's calibrator.json; stated as uncalibrated when the run has none), the zero-shot "
        "semantic profile (the paper's prompts) and the views' attention. Writes predictions.json, "
        "predictions.csv, one PNG panel per nodule and, with --dicom-sr, a DICOM SR (TID 1500) that references "
        "the series. Nothing is written into --out unless everything succeeds.")
    p.add_argument("run", help="run folder of `noduleclip train`")
    p.add_argument("image", help="CT: DICOM series folder, NIfTI, MHA/MHD or NRRD")
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--coord", action="append", metavar="X,Y,Z",
                       help="nodule centre in world mm (LPS), e.g. --coord -87.6,45.2,-120; repeat for more nodules")
    where.add_argument("--nodules", metavar="CSV",
                       help="CSV with one row per nodule: coord_x, coord_y, coord_z (LPS mm) or mask, "
                            "optional nodule_id")
    where.add_argument("--mask", metavar="SEG",
                       help="nodule segmentation aligned with the image: its centroid is the centre")
    p.add_argument("--out", required=True, help="output folder")
    add_series_option(p)
    p.add_argument("--dicom-sr", action="store_true",
                   help="also write a DICOM Structured Report (TID 1500) referencing the series (DICOM input only)")
    p.add_argument("--device", default="cpu", help="torch device for the models (default %(default)s)")
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

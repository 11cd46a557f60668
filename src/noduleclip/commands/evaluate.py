"""`noduleclip evaluate RUN MANIFEST --out DIR`: a trained run's fold ensemble on any manifest, with its report."""

from __future__ import annotations

from noduleclip.commands import summary


def register(sub) -> None:
    p = sub.add_parser("evaluate", help=summary("evaluate"),
                       description="Cut the manifest's views as the run did, score them with every fold model and "
                       "their mean, and write predictions.csv, patient_predictions.csv, metrics.json (AUROC and AUPRC "
                       "with 95% bootstrap intervals, FPR and precision at recall 0.6-0.9, Brier score), roc.png, "
                       "roc_patient.png, calibration.png, zero-shot semantic feature AUROCs, gallery.png (the most "
                       "confident mistakes) and report.html + report.json with all of it.")
    p.add_argument("run", help="run folder of `noduleclip train`")
    p.add_argument("manifest", help="nodule manifest CSV to evaluate on")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--perturb", action="append", default=[], metavar="SPEC",
                   help="robustness check: re-render the CT and score again; SPEC is kind=strength items separated "
                        "by commas, each its own perturbation (noise=HU sigma, e.g. noise=20 or noise=20:0.7 for "
                        "noise correlated over 0.7 mm; thick=slice thickness in mm; smooth=Gaussian blur in mm; "
                        "sharp=unsharp-mask amount); join items with '+' to apply them together; repeatable")
    p.add_argument("--compare", action="append", default=[], metavar="NAME=FILE[:COLUMN]",
                   help="another model's scores (CSV with nodule_id or patient_id and a score column: risk, score, "
                        "probability, prediction or ensemble, or the COLUMN named), compared on the same cases with "
                        "DeLong's test; repeatable")
    p.add_argument("--gallery", type=int, default=4, metavar="N",
                   help="show the N most confident false positives and false negatives (default %(default)s; 0: none)")
    p.add_argument("--no-zero-shot", dest="zero_shot", action="store_false",
                   help="skip the zero-shot semantic feature prediction")
    p.add_argument("--workers", type=int, default=None, help="preprocessing processes (default: up to 4)")
    p.add_argument("--bootstrap", type=int, default=1000,
                   help="bootstrap resamples for the intervals (default %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="bootstrap and perturbation-noise seed (default %(default)s)")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    p.set_defaults(func=run)


def run(args) -> int:
    import sys

    from noduleclip.evaluate.cohort import EvaluationOptions, evaluate_cohort

    options = EvaluationOptions(workers=args.workers, bootstrap=args.bootstrap, seed=args.seed, progress=args.progress,
                                perturb=tuple(args.perturb), compare=tuple(args.compare), gallery=args.gallery,
                                zero_shot=args.zero_shot)
    result = evaluate_cohort(args.run, args.manifest, args.out, options)
    for level in ("nodule", "patient"):
        m = result.metrics[level]
        if m["auroc"] is None:
            print(f"{level}s (n={m['n']}): {m['reason']}")
            continue
        lo, hi = m["auroc_ci"] or (float("nan"), float("nan"))
        brier = "" if m["brier"] is None else f"  Brier {m['brier']:.3f}"
        print(f"{level}s (n={m['n']}, {m['n_pos']} malignant): AUROC {m['auroc']:.3f} [{lo:.3f}, {hi:.3f}]  "
              f"AUPRC {m['auprc']:.3f}{brier}")
    for comparison in result.report.get("comparisons", []):
        test = comparison["levels"].get(comparison["level"], {}).get("delong")
        if test:
            print(f"vs {comparison['name']} ({comparison['level']}s): AUROC {test['auc_other']:.3f}, "
                  f"DeLong p {test['p']:.3g}")
    for warning in result.report.get("warnings", []):
        print(f"warning: {warning}", file=sys.stderr)
    if result.failed:
        print(f"skipped {len(result.failed)} nodule(s) that could not be read (listed in the report), first "
              f"{result.failed[0][0]}: {result.failed[0][1]}", file=sys.stderr)
    print(f"wrote {args.out}/report.html (and report.json, predictions.csv, metrics.json, figures)")
    return 0

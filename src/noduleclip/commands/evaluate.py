"""`noduleclip evaluate RUN MANIFEST --out DIR`: a trained run's fold ensemble on any manifest."""

from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser("evaluate", help="score a trained run's fold ensemble on a manifest (e.g. an external cohort)",
                       description="Cut the manifest's views as the run did, score them with every fold model and "
                       "their mean, and write predictions.csv, patient_predictions.csv, metrics.json (AUROC and AUPRC "
                       "with 95% bootstrap intervals, FPR and precision at recall 0.6-0.9) and roc.png.")
    p.add_argument("run", help="run folder of `noduleclip train`")
    p.add_argument("manifest", help="nodule manifest CSV to evaluate on")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--workers", type=int, default=None, help="preprocessing processes (default: up to 4)")
    p.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples for the intervals (default %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed (default %(default)s)")
    p.set_defaults(func=run)


def run(args) -> int:
    import sys

    from noduleclip.evaluate.cohort import evaluate_manifest
    from noduleclip.plots import plot_roc_pr

    result = evaluate_manifest(args.run, args.manifest, args.out, workers=args.workers, bootstrap=args.bootstrap,
                               seed=args.seed)
    plot_roc_pr({"nodules": (result.labels, result.risk)}, f"{args.out}/roc.png", title=f"{args.run} on {args.manifest}")
    for level in ("nodule", "patient"):
        m = result.metrics[level]
        if m["auroc"] is None:
            print(f"{level}s (n={m['n']}): {m['reason']}")
            continue
        lo, hi = m["auroc_ci"] or (float("nan"), float("nan"))
        print(f"{level}s (n={m['n']}, {m['n_pos']} malignant): AUROC {m['auroc']:.3f} [{lo:.3f}, {hi:.3f}]  "
              f"AUPRC {m['auprc']:.3f}")
    for nid, reason in result.failed:
        print(f"skipped {nid}: {reason}", file=sys.stderr)
    print(f"wrote {args.out}/predictions.csv, metrics.json, roc.png")
    return 0

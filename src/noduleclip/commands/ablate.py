"""`noduleclip ablate MANIFEST --out DIR`: the paper's Table 4 ablations on one set of splits.

Every model trains in DIR/<model>/ as a normal run folder (the semantic baseline in the same layout),
all on DIR/splits.csv; the training options are those of `noduleclip train` except --tuning, which
each model sets. Running the command again reuses finished models and finished folds. The models of
--models are tabulated into DIR/report.html and DIR/report.json.
"""

from __future__ import annotations

from noduleclip.commands import summary
from noduleclip.commands.preprocess import add_view_options
from noduleclip.commands.train import add_train_options, train_config

NOT_AN_OPTION = ("tuning",)  # each ablation model sets its own
HIDDEN_SETTINGS = ("tuning", "cache", "progress", "workers", "threads")  # not in the report: no effect on numbers


def register(sub) -> None:
    from noduleclip.ablate.runner import MODELS

    p = sub.add_parser(
        "ablate", help=summary("ablate"),
        description="Train full fine-tuning, linear probing, LoRA and vision-only models and a semantic-features-only "
        "logistic regression on the same patient-level splits, then tabulate per-fold and ensemble AUROC/AUPRC with "
        "Friedman/Nemenyi, Wilcoxon and DeLong tests in DIR/report.html. Re-run the same command to resume.",
    )
    p.add_argument("manifest", help="nodule manifest CSV with labels (and semantic features for the semantic model)")
    p.add_argument("--out", required=True, help="ablation folder (created, or resumed)")
    p.add_argument("--models", default=",".join(MODELS),
                   help="comma-separated models to train and tabulate (default %(default)s)")
    p.add_argument("--reference", default="lora",
                   help="model the pairwise tests compare against (default %(default)s; the first model when absent)")
    p.add_argument("--alpha", type=float, default=0.05, help="significance level marked in the table (default "
                   "%(default)s)")
    add_train_options(p.add_argument_group("training (as `noduleclip train`)"), skip=NOT_AN_OPTION)
    add_view_options(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from noduleclip.ablate.ablation_report import write_ablation_report
    from noduleclip.ablate.runner import parse_models, run_ablation
    from noduleclip.ablate.tables import ablation_table, format_table, read_model_scores
    from noduleclip.errors import InputError

    if not 0 < args.alpha < 1:
        raise InputError(f"--alpha {args.alpha} is not a significance level in (0, 1); use e.g. 0.05")
    models = parse_models(args.models)
    config = train_config(args, skip=NOT_AN_OPTION)
    result = run_ablation(args.manifest, args.out, config, models)
    reference = args.reference if args.reference in models else models[0]
    if reference != args.reference:
        print(f"reference {args.reference} is not among --models; comparing against {reference}")
    table = ablation_table([read_model_scores(result.out / m) for m in models], reference, args.alpha)
    settings = {"manifest": args.manifest, "models": ", ".join(models), "trained now": ", ".join(result.trained)
                or "none", "reused": ", ".join(result.reused) or "none",
                **{k: v for k, v in config.to_dict().items() if k not in HIDDEN_SETTINGS},
                "splits": result.plan.summary()}
    html, _ = write_ablation_report(result.out, table, settings)
    print(format_table(table["columns"], table["rows"]))
    for note in table["notes"]:
        print(f"note: {note}")
    print(f"report: {html} (and report.json); model runs in {result.out}/<model>/")
    return 0

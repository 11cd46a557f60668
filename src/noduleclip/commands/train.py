"""`noduleclip train MANIFEST --out RUN`: cross-validated training, the fold ensemble on the held-out test set.

The options are TrainConfig's fields (their help text is the dataclass's); view settings are those
of `noduleclip preprocess`. Running the same command again on an interrupted run folder resumes it.
Data-parallel: `torchrun --nproc_per_node N -m noduleclip train ...` (CPU, gloo) or
`accelerate launch --multi_gpu -m noduleclip train ...` (GPUs); the batch size stays the global one.
"""

from __future__ import annotations

import argparse

from noduleclip.commands.preprocess import add_view_options, view_config


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def register(sub) -> None:
    p = sub.add_parser(
        "train", help="train the fold models of a manifest and evaluate their ensemble",
        description="Hold out a test set of patients, train one model per patient-level cross-validation fold "
        "(early stopping on validation AUROC), average the fold models on the test set and report AUROC/AUPRC "
        "with 95% intervals at nodule and patient level. Re-run the same command to resume an interrupted run.",
    )
    p.add_argument("manifest", help="nodule manifest CSV (patient_id, nodule_id, image, coordinates, label, ...)")
    p.add_argument("--out", required=True, help="run folder (created, or resumed when it holds a run)")
    add_train_options(p.add_argument_group("training"))
    add_view_options(p)
    p.set_defaults(func=run)


def add_train_options(group, skip: tuple[str, ...] = ()) -> None:
    """One option per TrainConfig setting (its help, default, type and choices), except those in `skip`."""
    from noduleclip.train.config import TrainConfig, cli_fields

    defaults = TrainConfig()
    for f in cli_fields():
        if f.name in skip:
            continue
        default, meta = getattr(defaults, f.name), f.metadata
        help_text = meta["help"].replace("%", "%%") + (" (default %(default)s)" if default is not None else "")
        if isinstance(default, bool):
            group.add_argument(_flag(f.name), action=argparse.BooleanOptionalAction, default=default, help=help_text)
        else:
            group.add_argument(_flag(f.name), type=meta.get("type", type(default)), default=default,
                               choices=meta.get("choices"), help=help_text)


def train_config(args, skip: tuple[str, ...] = ()):
    """The TrainConfig that `add_train_options` arguments (and the view options) describe."""
    from noduleclip.train.config import TrainConfig, cli_fields

    return TrainConfig(**{f.name: getattr(args, f.name) for f in cli_fields() if f.name not in skip},
                       views=view_config(args))


def run(args) -> int:
    from noduleclip.train import train_run

    config = train_config(args)
    result = train_run(args.manifest, args.out, config)
    print(result.summary)
    print(f"run folder: {result.run} (metrics.json, predictions.csv, fold models in fold_<k>/best)")
    return 0

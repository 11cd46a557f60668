"""`noduleclip train MANIFEST --out RUN`: cross-validated training, the fold ensemble on the held-out test set.

The options are TrainConfig's fields (their help text is the dataclass's); view settings are those
of `noduleclip preprocess`. Running the same command again on an interrupted run folder resumes it.
Data-parallel: `torchrun --nproc_per_node N -m noduleclip train ...` (CPU, gloo) or
`accelerate launch --multi_gpu -m noduleclip train ...` (GPUs); the batch size stays the global one.
`--config FILE` takes every setting from a YAML or JSON file (a run's config.json too); options given on the command
line override it, and `--print-config` prints the resolved settings as YAML without training.
"""

from __future__ import annotations

import argparse
import dataclasses

from noduleclip.commands import summary
from noduleclip.commands.preprocess import add_view_options, view_config


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def register(sub) -> None:
    p = sub.add_parser(
        "train", help=summary("train"),
        description="Hold out a test set of patients, train one model per patient-level cross-validation fold "
        "(early stopping on validation AUROC), average the fold models on the test set and report AUROC/AUPRC "
        "with 95% intervals at nodule and patient level. Re-run the same command to resume an interrupted run.",
    )
    p.add_argument("manifest", nargs="?",
                   help="nodule manifest CSV (patient_id, nodule_id, image, coordinates, label, ...)")
    p.add_argument("--out", help="run folder (created, or resumed when it holds a run); required unless --print-config")
    p.add_argument("--config", metavar="FILE",
                   help="training settings from a YAML or JSON file (the keys of --print-config's output, any left out "
                   "for its default), a run's config.json, a run folder, or the name of a recipe that ships with "
                   "noduleclip (real-ct: the settings chosen on real CT); options given here override the file")
    p.add_argument("--print-config", action="store_true",
                   help="print the resolved training settings as YAML (a file for --config) and exit without training")
    # every option notes when the command line gives it, so that it overrides the --config file (and a default
    # does not); registered for this parser only, so the options of `ablate` stay argparse's own
    p.register("action", None, _given(argparse._StoreAction))
    p.register("action", argparse.BooleanOptionalAction, _given(argparse.BooleanOptionalAction))
    add_train_options(p.add_argument_group("training"))
    add_view_options(p)
    p.set_defaults(func=run, given_options=frozenset())


def _given(action_class: type[argparse.Action]) -> type[argparse.Action]:
    """`action_class` that also adds its destination to `args.given_options` when its option is on the command
    line."""

    class Given(action_class):  # type: ignore[valid-type,misc]
        def __call__(self, parser, namespace, values, option_string=None):
            super().__call__(parser, namespace, values, option_string)
            namespace.given_options = frozenset(getattr(namespace, "given_options", ())) | {self.dest}

    return Given


VIEW_OPTIONS = ("cube_mm", "spacing_mm", "hu_min", "hu_max", "mark_outside", "smooth_mm")


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
    """The TrainConfig that `add_train_options` arguments (and the view options) describe; with `args.config`, the
    file's settings with those options that the command line gave (`args.given_options`) on top."""
    from noduleclip.train.config import TrainConfig, cli_fields, read_settings_file, with_overrides

    if getattr(args, "config", None) is None:
        return TrainConfig(**{f.name: getattr(args, f.name) for f in cli_fields() if f.name not in skip},
                           views=view_config(args))
    config, where = read_settings_file(args.config)
    given = getattr(args, "given_options", frozenset())
    changes = {f.name: getattr(args, f.name) for f in cli_fields() if f.name in given and f.name not in skip}
    if given & set(VIEW_OPTIONS):
        changes["views"] = _views_over(config.views, args, given)
    return with_overrides(config, where, **changes)


def _views_over(views, args, given):
    """The file's view settings with the view options the command line gave on top (the cube's edge and the
    spacing give the number of samples, as `view_config`)."""
    file_values = {"cube_mm": views.size * views.spacing_mm, "spacing_mm": views.spacing_mm, "hu_min": views.hu_min,
                   "hu_max": views.hu_max, "mark_outside": views.mark_outside, "smooth_mm": views.smooth_mm}
    merged = argparse.Namespace(**{name: getattr(args, name) if name in given else value
                                    for name, value in file_values.items()})
    return dataclasses.replace(view_config(merged), angle_deg=views.angle_deg)


def run(args) -> int:
    from noduleclip.errors import InputError

    config = train_config(args)
    if args.print_config:
        from noduleclip.train.config import settings_yaml

        print("# noduleclip train settings: give this file back with --config FILE", flush=True)
        print(settings_yaml(config), end="", flush=True)
        return 0
    if args.manifest is None or args.out is None:
        missing = " and ".join(name for name, value in (("a MANIFEST", args.manifest), ("--out RUN", args.out))
                               if value is None)
        raise InputError(f"train needs {missing}: `noduleclip train MANIFEST --out RUN [--config FILE]`")
    from noduleclip.train import train_run

    result = train_run(args.manifest, args.out, config)
    print(result.summary)
    print(f"run folder: {result.run} (metrics.json, predictions.csv, fold models in fold_<k>/best)")
    return 0

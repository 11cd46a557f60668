"""`noduleclip demo --out DIR`: the main job on the built-in synthetic cohorts, start to finish."""

from __future__ import annotations

import argparse
from dataclasses import fields

from noduleclip.commands import summary


def register(sub) -> None:
    from noduleclip.demo import DemoConfig

    p = sub.add_parser("demo", help=summary("demo"),
                       description="A first result with no data of your own: a synthetic screening cohort trains the "
                       "offline backbone with LoRA under patient-level cross-validation, and the fold ensemble is "
                       "evaluated on held-out patients and on an external cohort from another acquisition preset. "
                       "Run it again on the same folder to resume.")
    p.add_argument("--out", default="demo-run", help="output folder (default %(default)s)")
    defaults = DemoConfig()
    for f in fields(DemoConfig):
        if f.name == "random_init":
            continue
        default = getattr(defaults, f.name)
        # a setting whose default is None ("not limited") takes a whole number when given
        kind = dict(action=argparse.BooleanOptionalAction) if isinstance(default, bool) else dict(
            type=int if default is None else type(default))
        p.add_argument("--" + f.name.replace("_", "-"), **kind, default=default,
                       help=f.metadata["help"] + " (default %(default)s)")
    p.set_defaults(func=run)


def run(args) -> int:
    from noduleclip.demo import DemoConfig, run_demo

    config = DemoConfig(**{f.name: getattr(args, f.name) for f in fields(DemoConfig) if f.name != "random_init"})
    run_demo(args.out, config)
    return 0

"""The `noduleclip` command line: one entry point, one module per subcommand.

Each module in `COMMANDS` defines `register(subparsers)`, which adds its parser and sets
`func` to a function taking the parsed arguments and returning an exit code.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import re
import sys

from noduleclip import __version__
from noduleclip.errors import NoduleClipError

COMMANDS = (
    "noduleclip.commands.preprocess",
    "noduleclip.commands.views",
    "noduleclip.commands.train",
    "noduleclip.commands.evaluate",
    "noduleclip.commands.predict",
    "noduleclip.commands.synth",
    "noduleclip.commands.demo",
    "noduleclip.commands.ablate",
    "noduleclip.commands.imports",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="noduleclip",
        description="Lung-nodule malignancy from CT with a semantic-guided vision-language model.",
    )
    parser.add_argument("--version", action="version", version=f"noduleclip {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log more detail")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(name).register(sub)
    return parser


def _join_negative_values(argv: list[str]) -> list[str]:
    """Let `--coord -87.6,-25.2,-119.2` through: argparse would take the value for an option."""
    out: list[str] = []
    for arg in argv:
        if out and out[-1] in VALUE_OPTIONS and re.match(r"^-\d|^-\.\d", arg):
            out[-1] = f"{out[-1]}={arg}"
        else:
            out.append(arg)
    return out


VALUE_OPTIONS = ("--coord",)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(_join_negative_values(list(sys.argv[1:] if argv is None else argv)))
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(message)s")
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except NoduleClipError as exc:
        print(f"noduleclip {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"noduleclip {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())

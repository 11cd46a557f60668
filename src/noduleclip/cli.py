"""The `noduleclip` command line: one entry point, one module per subcommand.

Each module in `COMMANDS` defines `register(subparsers)`, which adds its parser and sets
`func` to a function taking the parsed arguments and returning an exit code.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from noduleclip import __version__
from noduleclip.errors import NoduleClipError

COMMANDS = (
    "noduleclip.commands.preprocess",
    "noduleclip.commands.views",
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


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
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

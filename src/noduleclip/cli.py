"""The `noduleclip` command line: one entry point, one module per subcommand.

Each module in `COMMANDS` defines `register(subparsers)`, which adds its parser and sets
`func` to a function taking the parsed arguments and returning an exit code. Only the module of the
command being run is imported (some pull in torch or scikit-learn); `noduleclip --help` imports none of
them: it lists the summaries of `noduleclip.commands.SUMMARIES`.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import logging
import re
import sys

from noduleclip.commands import SUMMARIES
from noduleclip.errors import NoduleClipError
from noduleclip.version import __version__

COMMANDS = {name: module for name, (module, _) in SUMMARIES.items()}  # subcommand -> its module


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser with every subcommand, or only `command`'s module when it names one."""
    parser = argparse.ArgumentParser(
        prog="noduleclip",
        description="Lung-nodule malignancy from CT with a semantic-guided vision-language model.",
    )
    parser.add_argument("--version", action="version", version=f"noduleclip {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log more detail")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    if command in COMMANDS:
        importlib.import_module(COMMANDS[command]).register(sub)
    else:  # the list of commands: their summaries, without importing a single command module
        for name, (_, text) in SUMMARIES.items():
            sub.add_parser(name, help=text)
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
    argv = _join_negative_values(list(sys.argv[1:] if argv is None else argv))
    command = next((arg for arg in argv if not arg.startswith("-")), None)
    parser = build_parser(command)
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


def run() -> None:
    """The `noduleclip` program: `main`, then an exit without a last garbage collection over every module.

    A process that imported torch spends about 0.4 s of its exit in the collector's passes over the modules'
    objects (2-core machine). Freezing them first (`gc.freeze`) leaves them to be freed as the interpreter
    finalises, with the exit handlers and flushes as usual: `noduleclip predict` ends that much sooner.
    """
    code = main()
    gc.freeze()
    raise SystemExit(code)


if __name__ == "__main__":
    run()

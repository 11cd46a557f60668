"""The command list starts fast: `noduleclip --help` imports no command module (and so no torch)."""

from __future__ import annotations

import argparse
import importlib
import subprocess
import sys

import pytest

from noduleclip.cli import build_parser, main
from noduleclip.commands import SUMMARIES

PROBE = """
import sys, contextlib, io
from noduleclip.cli import main
with contextlib.redirect_stdout(io.StringIO()) as out:
    try:
        main(["--help"])
    except SystemExit:
        pass
heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "transformers", "sklearn", "pandas", "scipy",
               "matplotlib", "SimpleITK", "pydicom") or m.startswith("noduleclip.commands."))
print("listed" if "predict" in out.getvalue() else "not listed", heavy)
"""


def test_the_command_list_imports_no_command_module_and_no_torch():
    done = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "listed []", done.stdout


def test_every_command_is_listed_with_the_help_its_own_module_gives():
    listed = build_parser()._subparsers._group_actions[0]  # type: ignore[union-attr]
    assert set(listed.choices) == set(SUMMARIES)
    for name, (module, text) in SUMMARIES.items():
        sub = argparse.ArgumentParser().add_subparsers()
        importlib.import_module(module).register(sub)
        helps = {action.dest: action.help for action in sub._choices_actions}
        assert helps[name] == text, name


def test_a_command_still_gets_its_own_options(capsys):
    with pytest.raises(SystemExit) as stop:
        main(["predict", "--help"])
    assert stop.value.code == 0
    assert "--coord" in capsys.readouterr().out

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


def test_the_program_exits_with_the_commands_code_and_its_output_written(tmp_path):
    """`python -m noduleclip` (as the console script) goes through `cli.run`, which freezes the collector before
    exiting: the exit code is still the command's, and what it printed and wrote is whole."""
    from helpers import make_volume, write_nifti_ras

    missing = tmp_path / "no-such-scan.nii.gz"
    failed = subprocess.run([sys.executable, "-m", "noduleclip", "views", str(missing), "--out",
                             str(tmp_path / "a.png")], capture_output=True, text=True, timeout=120)
    assert failed.returncode == 2 and failed.stderr.startswith("noduleclip views: error:")
    assert "no-such-scan.nii.gz" in failed.stderr and not (tmp_path / "a.png").exists()
    scan = write_nifti_ras(make_volume(), tmp_path / "scan.nii")
    done = subprocess.run([sys.executable, "-m", "noduleclip", "views", str(scan), "--out", str(tmp_path / "b.png")],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and str(tmp_path / "b.png") in done.stdout and done.stdout.endswith("\n")
    assert (tmp_path / "b.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

"""The code's own rules, checked by the test command: layers that only point down (import-linter), lint (ruff)
and types (mypy on model/, train/, io/, preprocess/). Their settings live in pyproject.toml."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def _tool(name: str, *args: str, cwd: Path = REPO, env: dict | None = None) -> subprocess.CompletedProcess:
    executable = BIN / name
    if not executable.exists():
        pytest.fail(f"{name} is not installed beside {sys.executable}; install the test extras "
                    "(pip install -e .[test])")
    return subprocess.run([str(executable), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def test_the_layers_only_point_down():
    done = _tool("lint-imports")
    assert done.returncode == 0, done.stdout[-3000:]
    assert "Contracts: 1 kept, 0 broken." in done.stdout


def test_an_upward_import_breaks_the_layer_contract(tmp_path):
    """A copy of the package where the model layer imports the training layer fails the same contract."""
    shutil.copytree(REPO / "src" / "noduleclip", tmp_path / "noduleclip")
    shutil.copy(REPO / "pyproject.toml", tmp_path / "pyproject.toml")
    heads = tmp_path / "noduleclip" / "model" / "heads.py"
    heads.write_text(heads.read_text() + "\nfrom noduleclip.train import splits  # upward: model -> train\n")
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    done = _tool("lint-imports", cwd=tmp_path, env=env)
    assert done.returncode != 0
    assert "noduleclip.model is not allowed to import noduleclip.train" in done.stdout
    assert "noduleclip.model.heads -> noduleclip.train.splits" in done.stdout


def test_ruff_finds_nothing():
    done = _tool("ruff", "check", "--no-cache", "src", "tests", "benchmarks")
    assert done.returncode == 0, done.stdout[-3000:]


@pytest.mark.slow  # about 45 s on 2 CPU cores
def test_mypy_finds_nothing():
    done = _tool("mypy", "--no-incremental")
    assert done.returncode == 0, done.stdout[-3000:]

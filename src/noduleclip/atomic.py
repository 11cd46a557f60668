"""Write outputs so that a crash never leaves a half-written file behind; the JSON and CSV forms every writer uses."""

from __future__ import annotations

import contextlib
import csv
import hashlib
import json
import math
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from noduleclip.errors import InputError

_UMASK = os.umask(0)  # read the process's umask (the call sets it, so set it back at once)
os.umask(_UMASK)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it onto `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp" + "".join(path.suffixes), dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        if tmp_path.exists():  # mkstemp's file is private (0600); give it the mode a plain open() would
            os.chmod(tmp_path, 0o666 & ~_UMASK)
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write a text file atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


@contextlib.contextmanager
def staged_dir(out: str | os.PathLike) -> Iterator[Path]:
    """Yield a fresh staging folder; on success its files move into `out`, on failure nothing appears there."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=".staging-", dir=out))
    try:
        yield stage
        for item in stage.iterdir():
            target = out / item.name
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)
            os.replace(item, target)
    finally:
        shutil.rmtree(stage, ignore_errors=True)


FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")  # what makes a spreadsheet read a cell as a formula (OWASP)


def spreadsheet_safe(value: object) -> object:
    """A CSV cell that no spreadsheet runs as a formula: text starting with = + - @ (or a quote before one) gets a
    leading single quote; numbers, such as -0.5, stay numbers. `plain_cell` undoes it."""
    if isinstance(value, str) and (value.startswith(FORMULA_STARTS)
                                   or (value.startswith("'") and value[1:2].startswith(FORMULA_STARTS + ("'",)))):
        return "'" + value
    return value


def plain_cell(text: str) -> str:
    """The text that `spreadsheet_safe` quoted, as it was (other cells unchanged)."""
    if text.startswith("'") and text[1:2].startswith(FORMULA_STARTS + ("'",)):
        return text[1:]
    return text


def number_cell(text: str, what: str, remedy: str) -> float:
    """A CSV cell as a finite float, else an InputError "<what> '<text>' is not a (finite) number; <remedy>"."""
    text = plain_cell((text or "").strip())
    try:
        value = float(text)
    except ValueError:
        raise InputError(f"{what} {text!r} is not a number; {remedy}") from None
    if not math.isfinite(value):
        raise InputError(f"{what} {text!r} is not a finite number; {remedy}")
    return value


def write_csv(path: str | os.PathLike, header: Sequence[str], rows: Iterable[Sequence],
              float_format: Callable[[float], str] = repr) -> Path:
    """Write a CSV atomically: floats through `float_format` (full precision by default), text cells made safe
    for spreadsheets by `spreadsheet_safe`; return `path`."""
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow([spreadsheet_safe(name) for name in header])
            for row in rows:
                writer.writerow([float_format(float(v)) if isinstance(v, (float, np.floating)) else spreadsheet_safe(v)
                                 for v in row])
    return Path(path)


def jsonable(value: Any) -> Any:
    """`value` with numpy scalars/arrays turned into plain Python, NaN/inf into None (for json.dumps)."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [jsonable(v) for v in value]
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    return value


def write_json(path: str | os.PathLike, value: Any, indent: int | None = 2) -> Path:
    """Write `jsonable(value)` as JSON (with a final newline) atomically."""
    write_text(path, json.dumps(jsonable(value), indent=indent) + "\n")
    return Path(path)


def file_sha256(path: str | os.PathLike) -> str:
    """The SHA-256 hex digest of a file's bytes (how a run names the manifest it was trained on)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()

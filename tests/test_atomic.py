"""Atomic writes: all or nothing, and files as readable as a plain open() would make them."""

import os

import pytest

from noduleclip.atomic import atomic_path, write_text


def test_written_file_gets_the_mode_of_a_plain_open(tmp_path):
    write_text(tmp_path / "a.txt", "x")
    with open(tmp_path / "plain.txt", "w") as handle:
        handle.write("x")
    assert os.stat(tmp_path / "a.txt").st_mode & 0o777 == os.stat(tmp_path / "plain.txt").st_mode & 0o777


def test_a_failed_write_leaves_nothing(tmp_path):
    with pytest.raises(RuntimeError):
        with atomic_path(tmp_path / "b.csv") as tmp:
            tmp.write_text("half")
            raise RuntimeError("stopped")
    assert list(tmp_path.iterdir()) == []

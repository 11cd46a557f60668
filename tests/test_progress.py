"""Progress output: tqdm's bar on a terminal, plain lines (no carriage returns, one per interval) elsewhere."""

from __future__ import annotations

import io
import re
import subprocess
import sys

import pytest
from tqdm import tqdm

from helpers import cli_args, write_cohort
from noduleclip.progress import ENV, PlainProgress, format_seconds, progress_bar, use_bar


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def lines(stream: io.StringIO) -> list[str]:
    text = stream.getvalue()
    assert "\r" not in text
    assert text == "" or text.endswith("\n")
    return text.splitlines()


@pytest.fixture
def auto(monkeypatch):
    """No override from the environment: the stream decides."""
    monkeypatch.delenv(ENV, raising=False)


def test_a_stream_that_is_not_a_terminal_gets_plain_lines_and_a_terminal_gets_the_bar(auto):
    out = io.StringIO()
    bar = progress_bar(total=3, desc="views", unit="nodule", file=out)
    assert isinstance(bar, PlainProgress) and not isinstance(bar, tqdm)
    bar.update(3)
    bar.close()
    assert lines(out) == ["views: 3/3 nodules (100%), 0:00 elapsed"]
    terminal = Terminal()
    with progress_bar(total=3, desc="views", unit="nodule", file=terminal) as bar:
        assert isinstance(bar, tqdm)
        bar.update(3)
    assert "\r" in terminal.getvalue() and "3/3" in terminal.getvalue()


def test_the_environment_variable_forces_either_kind(monkeypatch):
    monkeypatch.setenv(ENV, "bar")
    assert use_bar(io.StringIO())
    bar = progress_bar(total=2, file=io.StringIO())
    assert isinstance(bar, tqdm)
    bar.close()
    monkeypatch.setenv(ENV, "plain")
    assert not use_bar(Terminal())
    assert isinstance(progress_bar(total=2, file=Terminal()), PlainProgress)


def test_at_most_one_line_per_interval_with_counts_percent_time_left_and_postfix():
    out, clock = io.StringIO(), Clock()
    bar = PlainProgress(total=400, desc="fold 1/5", unit="step", interval=10, file=out, clock=clock)
    for _ in range(120):  # 120 steps in 130 s: a line at 10 s, 20 s, ... never two within 10 s
        clock.now += 130 / 120
        bar.set_postfix(epoch="1/10", loss=0.51234)
        bar.update(1)
    written = lines(out)
    assert len(written) == 12
    assert written[-1] == "fold 1/5: 120/400 steps (30%), 2:10 elapsed, about 5:03 left, epoch 1/10, loss 0.512"
    assert [int(line.split()[2].split("/")[0]) for line in written] == list(range(10, 121, 10))
    for line in written:
        assert re.fullmatch(r"fold 1/5: \d+/400 steps \(\d+%\), \d:\d\d elapsed, about \d+:\d\d left, "
                            r"epoch 1/10, loss 0.512", line), line
    bar.close()
    assert lines(out)[-1] == "fold 1/5: 120/400 steps (30%), 2:10 elapsed, epoch 1/10, loss 0.512"
    assert len(lines(out)) == 13
    bar.close()  # closing again writes nothing more
    assert len(lines(out)) == 13


def test_a_long_interval_writes_only_the_final_line_with_the_full_count():
    out, clock = io.StringIO(), Clock()
    bar = PlainProgress(total=50, desc="synth", unit="patient", interval=3600, file=out, clock=clock)
    for _ in range(50):
        clock.now += 1
        bar.update(1)
    assert lines(out) == []
    bar.close()
    assert lines(out) == ["synth: 50/50 patients (100%), 0:50 elapsed"]


def test_interval_zero_writes_a_line_for_every_update():
    out = io.StringIO()
    with progress_bar(total=4, desc="d", unit="batch", interval=0, file=out) as bar:
        for _ in range(4):
            bar.update(1)
    assert [line.split(",")[0] for line in lines(out)] == ["d: 1/4 batches (25%)", "d: 2/4 batches (50%)",
                                                          "d: 3/4 batches (75%)", "d: 4/4 batches (100%)"]


def test_wrapping_an_iterable_counts_its_items_and_closes_at_its_end(auto):
    out = io.StringIO()
    seen = list(progress_bar(range(5), desc="frozen image blocks", unit="batch", interval=3600, file=out))
    assert seen == [0, 1, 2, 3, 4]
    assert lines(out) == ["frozen image blocks: 5/5 batches (100%), 0:00 elapsed"]
    unsized = io.StringIO()
    for _ in progress_bar((name for name in "abc"), desc="LIDC XML", unit="file", interval=3600, file=unsized):
        pass
    assert lines(unsized) == ["LIDC XML: 3 files, 0:00 elapsed"]


def test_a_resumed_count_estimates_time_left_from_this_run_only():
    out, clock = io.StringIO(), Clock()
    bar = PlainProgress(total=100, initial=50, desc="fold 2/3", unit="step", interval=10, file=out, clock=clock)
    clock.now += 10
    bar.update(10)  # 10 steps in 10 s, 40 to go
    assert lines(out) == ["fold 2/3: 60/100 steps (60%), 0:10 elapsed, about 0:40 left"]


def test_disabled_writes_nothing_and_times_read_like_tqdm(auto):
    out = io.StringIO()
    with progress_bar(total=3, disable=True, interval=0, file=out) as bar:
        bar.update(3)
    assert out.getvalue() == ""
    assert not isinstance(progress_bar(total=1, disable=True, file=Terminal()), tqdm)
    assert [format_seconds(s) for s in (0, 59.6, 130, 3725)] == ["0:00", "1:00", "2:10", "1:02:05"]


def test_a_real_training_run_writes_plain_lines_when_stderr_is_a_pipe(tmp_path, monkeypatch):
    monkeypatch.delenv(ENV, raising=False)
    manifest = write_cohort(tmp_path / "cohort", patients=8)
    args = cli_args(manifest, tmp_path / "run", tmp_path / "cache", progress=True)
    done = subprocess.run([sys.executable, "-m", "noduleclip", *args], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "\r" not in done.stderr
    progress = [line for line in done.stderr.splitlines() if re.match(r"(views|fold \d/2): ", line)]
    assert re.fullmatch(r"views: (\d+)/\1 nodules \(100%\), \d+:\d\d elapsed", progress[0]), progress
    folds = [line for line in progress if line.startswith("fold ")]
    assert [line[:9] for line in folds] == ["fold 1/2:", "fold 2/2:"]
    for line in folds:
        assert re.fullmatch(r"fold \d/2: (\d+)/\1 steps \(100%\), \d+:\d\d elapsed, epoch 2/2, val_auroc \S+, best \d",
                            line), line

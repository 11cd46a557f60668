"""Interrupted and failed work: a failed run restarts on a corrected manifest, a resumed run says what it reuses,
Ctrl-C and kill -9 of `preprocess` stop its workers, and a re-run removes the temporary files a kill leaves."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
import SimpleITK as sitk

from helpers import BASE, read_rows, write_cohort, write_rows
from noduleclip.data.manifest import NoduleManifest
from noduleclip.errors import InputError
from noduleclip.preprocess.cache import ViewCache
from noduleclip.preprocess.pipeline import preprocess_manifest
from noduleclip.train import TrainConfig, train_run
from noduleclip.train import loop as loop_module

REPO = Path(__file__).resolve().parents[1]
TINY = {**BASE, "epochs": 1, "random_init": True}


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> Path:
    """A cohort of this module's own, not the session's: the first test rewrites its manifest (a bad image, then
    the corrected one), and every test here trains runs of its own, since each is about a run being interrupted
    or failing; 12 patients and one epoch keep those trainings short."""
    return write_cohort(tmp_path_factory.mktemp("interruption") / "data", patients=12)


def test_a_run_that_failed_on_a_bad_image_restarts_on_the_corrected_manifest(cohort, tmp_path, capsys):
    rows = read_rows(cohort)
    broken = [dict(r, image="missing.nii.gz") if r["nodule_id"] == "P03-0" else r for r in rows]
    manifest = write_rows(cohort.parent / "restart.csv", broken)
    run = tmp_path / "run"
    with pytest.raises(InputError, match="P03-0"):
        train_run(manifest, run, TrainConfig(**TINY))
    assert (run / "config.json").is_file() and (run / "splits.csv").is_file()
    cached = sorted(p.name for p in (run / "cache" / "views").iterdir())
    write_rows(manifest, rows)
    capsys.readouterr()
    result = train_run(manifest, run, TrainConfig(**TINY))
    assert "starting it over" in capsys.readouterr().out
    assert (result.run / "metrics.json").is_file()
    assert set(cached) <= {p.name for p in (run / "cache" / "views").iterdir()}
    write_rows(manifest, broken)  # a run with finished folds keeps refusing another manifest
    with pytest.raises(InputError, match="another manifest"):
        train_run(manifest, run, TrainConfig(**TINY))


def test_a_resumed_run_says_which_folds_it_reuses_and_where_it_continues(cohort, tmp_path, capsys, monkeypatch):
    run, config = tmp_path / "run", TrainConfig(**{**TINY, "epochs": 2})
    original = loop_module.save_resume_state

    def save_then_stop(folder, model, optimizer, scheduler, progress):
        original(folder, model, optimizer, scheduler, progress)
        if Path(folder).parent.name == "fold_1" and progress["epochs_done"] == 1:
            raise KeyboardInterrupt

    monkeypatch.setattr(loop_module, "save_resume_state", save_then_stop)
    with pytest.raises(KeyboardInterrupt):
        train_run(cohort, run, config)
    assert "resuming" not in capsys.readouterr().out
    monkeypatch.setattr(loop_module, "save_resume_state", original)
    train_run(cohort, run, config)
    lines = [s for s in capsys.readouterr().out.splitlines() if s.startswith("resuming")]
    assert lines == [f"resuming run {run}: reusing finished fold_0; fold_1 continues from epoch 2 of 2"]


def write_scans(root: Path, scans: int, size: int = 192) -> Path:
    """A manifest of `scans` nodules, each in its own image path: links to one CT-like volume (size^3 at 1 mm)."""
    root.mkdir(parents=True, exist_ok=True)
    k, j, i = np.indices((size, size, size))
    volume = np.random.default_rng(0).normal(-800, 40, (size, size, size)).astype(np.int16)
    volume[(k - size // 2) ** 2 + (j - size // 2) ** 2 + (i - size // 2) ** 2 <= 16] = 40
    sitk.WriteImage(sitk.GetImageFromArray(volume), str(root / "scan.nii.gz"))
    rows = []
    for s in range(scans):
        (root / f"s{s:02d}.nii.gz").symlink_to("scan.nii.gz")
        rows.append(dict(patient_id=f"P{s:02d}", nodule_id=f"N{s:02d}", image=f"s{s:02d}.nii.gz",
                         coord_x=size // 2, coord_y=size // 2, coord_z=size // 2, label=s % 2))
    return write_rows(root / "manifest.csv", rows)


def cached(cache: Path) -> list[Path]:
    views = cache / "views"
    return [p for p in views.glob("*.npz") if not p.name.startswith(".")] if views.is_dir() else []


def _default_sigint() -> None:
    """In the child before it starts: Ctrl-C's default action, even when this test runs in a background job, whose
    shell ignores SIGINT (Python then keeps ignoring it and the command would run to its end)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def start_preprocess(manifest: Path, cache: Path) -> tuple[subprocess.Popen, list[psutil.Process]]:
    """`noduleclip preprocess --workers 2` in its own process group, once it has cached a nodule; and its children."""
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    process = subprocess.Popen([sys.executable, "-m", "noduleclip", "preprocess", str(manifest), "--out", str(cache),
                                "--workers", "2"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                               start_new_session=True, preexec_fn=_default_sigint)
    deadline = time.monotonic() + 60
    while not cached(cache) and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert cached(cache) and process.poll() is None, process.stderr.read().decode()[-2000:]
    return process, psutil.Process(process.pid).children(recursive=True)


def wait_gone(processes: list[psutil.Process], seconds: float) -> list[psutil.Process]:
    """The processes still running after up to `seconds`."""
    _, alive = psutil.wait_procs(processes, timeout=seconds)
    return [p for p in alive if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]


@pytest.mark.slow
def test_ctrl_c_stops_preprocess_and_its_workers_at_once(tmp_path):
    manifest, cache = write_scans(tmp_path / "data", 60), tmp_path / "cache"
    process, children = start_preprocess(manifest, cache)
    assert children
    os.killpg(process.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
    sent = time.monotonic()
    try:  # seconds, not the minutes the remaining scans would take; with room for a machine under load
        process.wait(timeout=10)
    finally:
        if process.poll() is None:
            process.kill()
    assert time.monotonic() - sent < 10 and process.returncode != 0
    assert "interrupted" in process.stderr.read().decode()
    assert len(cached(cache)) < 60
    assert not wait_gone(children, 2)


@pytest.mark.slow
def test_workers_exit_after_preprocess_is_killed_and_a_rerun_removes_temporary_files(tmp_path):
    manifest, cache = write_scans(tmp_path / "data", 60), tmp_path / "cache"
    process, children = start_preprocess(manifest, cache)
    workers = [p for p in children if "resource_tracker" not in " ".join(p.cmdline())]
    assert workers
    process.kill()
    process.wait()
    try:
        assert not wait_gone(workers, 3)
    finally:
        for worker in wait_gone(workers, 0):
            worker.kill()
    stale = [cache / "views" / ".N00-x1.npz.abc.tmp.npz", cache / ".cache.json.x2.tmp.json"]
    for path in stale:  # what a kill during a write leaves
        path.write_bytes(b"partial")
        os.utime(path, (time.time() - 60, time.time() - 60))
    report = preprocess_manifest(NoduleManifest.read(manifest), ViewCache(cache), workers=1, progress=False)
    assert not report.failed and len(cached(cache)) == 60
    assert not [p for p in cache.rglob(".*")]

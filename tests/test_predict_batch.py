"""`noduleclip predict RUN --manifest CSV`: many scans in one command, resumable, one bad scan reported."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from helpers import REPO, read_rows, write_rows
from noduleclip.cli import main as cli_main
from noduleclip.errors import InputError
from noduleclip.predict.api import NoduleClip
from noduleclip.predict.batch import PARTS, predict_manifest


@pytest.fixture(scope="module")
def batch(tiny_cohort, tiny_run, tmp_path_factory):
    """The whole tiny cohort predicted once with two view workers."""
    out = tmp_path_factory.mktemp("batch") / "out"
    report = predict_manifest(tiny_run.run, tiny_cohort.manifest, out, workers=2, progress=False)
    return report, out


def test_every_nodule_gets_what_predict_gives_it_alone(batch, tiny_cohort, tiny_run):
    report, out = batch
    rows = read_rows(out / "predictions.csv")
    manifest = read_rows(tiny_cohort.manifest)
    assert [r["nodule_id"] for r in rows] == [r["nodule_id"] for r in manifest]  # the manifest's order
    assert report.predicted == len(manifest) and report.skipped == 0 and not report.failed
    model = NoduleClip.load(tiny_run.run)
    for row, given in zip(rows, manifest, strict=True):
        alone = model.predict(tiny_cohort.data / given["image"],
                              coords=[tuple(float(given[c]) for c in ("coord_x", "coord_y", "coord_z"))])[0]
        assert float(row["risk"]) == pytest.approx(alone.risk, abs=1e-6)
        assert [float(row[f"fold_{k}"]) for k in range(2)] == pytest.approx(alone.fold_risks, abs=1e-6)
        assert row["label"] == given["label"] and row["patient_id"] == given["patient_id"]
        feature = next(iter(alone.semantics))
        assert row[feature] == alone.semantics[feature][0]
    document = json.loads((out / "predictions.json").read_text())
    assert document["format"] == "noduleclip-batch-predictions" and len(document["nodules"]) == len(manifest)
    assert not (out / "failures.csv").exists()


def test_a_second_run_skips_what_is_written_and_redoes_what_is_missing(batch, tiny_cohort, tiny_run, tmp_path):
    _, first = batch
    out = tmp_path / "out"
    shutil.copytree(first, out)
    parts = sorted((out / PARTS).iterdir())
    lost = json.loads(parts[0].read_text())
    parts[0].unlink()  # as if the command had been stopped before this scan
    report = predict_manifest(tiny_run.run, tiny_cohort.manifest, out, workers=1, progress=False)
    assert report.predicted == len(lost["nodules"])
    assert report.skipped == len(read_rows(tiny_cohort.manifest)) - len(lost["nodules"])
    again, before = read_rows(out / "predictions.csv"), read_rows(first / "predictions.csv")
    assert [r["nodule_id"] for r in again] == [r["nodule_id"] for r in before]
    for a, b in zip(again, before, strict=True):  # scored in other batches: the same to float rounding
        assert float(a["risk"]) == pytest.approx(float(b["risk"]), abs=1e-6)


def test_one_bad_scan_is_reported_and_the_others_complete(tiny_cohort, tiny_run, tmp_path, capsys):
    rows = read_rows(tiny_cohort.manifest)
    data = tmp_path / "data"
    shutil.copytree(tiny_cohort.data, data)
    (data / "p03.nii.gz").write_bytes(b"not a NIfTI file")
    rows[0] = {**rows[0], "coord_x": "900"}  # P00-0 lies outside its scan
    manifest = write_rows(data / "manifest.csv", rows)
    out = tmp_path / "out"
    code = cli_main(["predict", str(tiny_run.run), "--manifest", str(manifest), "--out", str(out), "--workers", "1"])
    assert code == 1
    failed = read_rows(out / "failures.csv")
    bad = {r["nodule_id"] for r in rows if r["image"] == "p03.nii.gz"} | {"P00-0"}
    assert {f["nodule_id"] for f in failed} == bad
    assert all(f["reason"] for f in failed)
    predicted = {r["nodule_id"] for r in read_rows(out / "predictions.csv")}
    assert predicted == {r["nodule_id"] for r in rows} - bad
    printed = capsys.readouterr().out
    assert f"{len(predicted)} nodules predicted, 0 already written, {len(bad)} failed" in printed
    assert "failed: P00-0: " in printed


def test_parts_of_another_run_are_refused(batch, tiny_cohort, tiny_run, tmp_path):
    _, first = batch
    out = tmp_path / "out"
    shutil.copytree(first, out)
    other = tmp_path / "other-run"
    shutil.copytree(tiny_run.run, other)
    config = json.loads((other / "config.json").read_text())
    config["created"] = "another day"
    (other / "config.json").write_text(json.dumps(config))
    with pytest.raises(InputError, match="holds predictions of another run"):
        predict_manifest(other, tiny_cohort.manifest, out, workers=1, progress=False)


def test_panels_per_scan_on_request(tiny_cohort, tiny_run, tmp_path):
    rows = [r for r in read_rows(tiny_cohort.manifest) if r["patient_id"] in ("P00", "P01")]
    manifest = write_rows(tmp_path / "manifest.csv", [{**r, "image": str(tiny_cohort.data / r["image"])}
                                                      for r in rows])
    predict_manifest(tiny_run.run, manifest, tmp_path / "out", panels=True, workers=1, progress=False)
    scans = sorted((tmp_path / "out" / "scans").iterdir())
    assert [s.name.split("-")[0] for s in scans] == ["p00.nii.gz", "p01.nii.gz"]
    assert sorted(p.name for p in scans[0].glob("*.png")) == ["nodule_P00-0.png", "nodule_P00-1.png"]


@pytest.mark.parametrize("args, words", [
    (["IMAGE", "--manifest", "M"], "either an IMAGE"),
    ([], "needs an IMAGE with its nodules"),
    (["IMAGE", "--coord", "0,0,0", "--panels"], "--panels and --workers are for --manifest"),
])
def test_one_scan_or_a_manifest(tiny_run, tiny_cohort, tmp_path, capsys, args, words):
    image = str(tiny_cohort.data / "p00.nii.gz")
    args = [image if a == "IMAGE" else str(tiny_cohort.manifest) if a == "M" else a for a in args]
    assert cli_main(["predict", str(tiny_run.run), *args, "--out", str(tmp_path / "out")]) == 2
    assert words in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_two_processes_write_what_one_writes(batch, tiny_cohort, tiny_run, tmp_path):
    _, one = batch
    two = tmp_path / "two"
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           "-m", "noduleclip", "predict", str(tiny_run.run), "--manifest", str(tiny_cohort.manifest),
                           "--out", str(two), "--workers", "1"], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("nodules predicted") == 1  # the first process reports for both
    rows_one, rows_two = read_rows(one / "predictions.csv"), read_rows(two / "predictions.csv")
    assert [r["nodule_id"] for r in rows_two] == [r["nodule_id"] for r in rows_one]
    for a, b in zip(rows_one, rows_two, strict=True):
        assert float(b["risk"]) == pytest.approx(float(a["risk"]), abs=1e-6)
    parts = [json.loads(p.read_text())["image"] for p in (two / PARTS).iterdir()]
    assert len(parts) == len(set(parts)) == len({r["image"] for r in rows_one})  # each scan scored once

"""benchmarks/zero_shot.py --quick end to end: a tiny lora run on a small synthetic cohort, Table 3 two ways."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_quick_zero_shot_benchmark_scores_test_and_out_of_fold_nodules_once(tmp_path):
    out = tmp_path / "zs"
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "zero_shot.py"), "--quick", "--threads", "1",
                           "--workers", "1", "--out", str(out)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "goal: zero-shot margins >= 0.75" in done.stdout and "QUICK: not a result" in done.stdout
    document = json.loads((out / "zero_shot_benchmark.json").read_text())
    with open(out / "run" / "splits.csv", newline="") as handle:
        splits = list(csv.DictReader(handle))
    test_ids = {r["nodule_id"] for r in splits if r["role"] == "test"}
    assert document["settings"]["test_nodules"] == len(test_ids) > 0
    assert document["settings"]["nodules"] == len(splits)

    # the ensemble table covers exactly the held-out nodules; the out-of-fold one every other nodule, once
    margins_test = next(r for r in document["test"] if r["feature"] == "margins")
    assert margins_test["n"] + margins_test["n_missing"] == len(test_ids)
    pooled = next(r for r in document["out_of_fold"]["pooled"] if r["feature"] == "margins")
    assert pooled["n"] + pooled["n_missing"] == len(splits) - len(test_ids)
    per_fold = [next(r for r in f["rows"] if r["feature"] == "margins") for f in document["out_of_fold"]["folds"]]
    assert len(per_fold) == 2
    assert sum(r["n"] + r["n_missing"] for r in per_fold) == len(splits) - len(test_ids)
    for row in (margins_test, pooled):
        for value in row["auroc"].values():
            assert value is None or 0.0 <= value <= 1.0

    # run again: the finished run and the cohort are reused, and the numbers are the same
    again = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "zero_shot.py"), "--quick", "--threads", "1",
                            "--workers", "1", "--out", str(out)], capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-2000:]
    second = json.loads((out / "zero_shot_benchmark.json").read_text())
    assert second["test"] == document["test"] and second["out_of_fold"] == document["out_of_fold"]
    assert second["seconds"]["train"] < document["seconds"]["train"]

"""The GPU path: device placement, fp16 with a gradient scaler, bf16, pinned batches, several GPU processes.

Every test here but the first needs a CUDA GPU and is skipped without one (a CPU machine, CI); run them where a
GPU is lent: `.venv/bin/python -m pytest -q tests/test_cuda.py`.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from helpers import BASE, REPO, cli_args, read_log, read_rows
from noduleclip.ensemble import RunEnsemble
from noduleclip.train import TrainConfig, train_run
from noduleclip.train import loop as train_loop

CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
TINY = {**BASE, "epochs": 1}


def test_the_gpu_benchmark_stops_in_one_sentence_without_a_gpu():
    if CUDA:
        pytest.skip("this machine has a GPU: the benchmark runs (see benchmarks/gpu.py)")
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "gpu.py"), "--quick"], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode != 0
    assert done.stderr.strip().splitlines() == ["benchmarks/gpu.py needs a CUDA GPU and this machine has none; run "
                                                "it where one is lent"]


def _epoch_losses(run) -> list[float]:
    return [event["train"]["total"] for event in read_log(run) if event["event"] == "epoch"]


@needs_cuda
def test_a_run_trains_on_the_gpu_and_scores_alike_on_both_devices(tiny_cohort, tmp_path, monkeypatch):
    placed = []
    build = train_loop.build_fold_model

    def recording(config, fold):  # where the fold's model sits once accelerate has prepared it: seen at the end
        model = build(config, fold)
        placed.append(model)
        return model

    monkeypatch.setattr(train_loop, "build_fold_model", recording)
    result = train_run(tiny_cohort.manifest, tmp_path / "run", TrainConfig(**TINY, cache=str(tiny_cohort.cache)))
    assert placed and all(next(m.parameters()).device.type == "cuda" for m in placed)
    views = torch.rand(6, 9, 50, 50, generator=torch.Generator().manual_seed(0))
    on_cpu = RunEnsemble.load(result.run, "cpu").score(views)
    on_gpu = RunEnsemble.load(result.run, "cuda").score(views.to("cuda"))
    assert on_gpu.fold_risk == pytest.approx(on_cpu.fold_risk, abs=2e-3)  # cuDNN convolutions may use TF32
    assert on_gpu.attention == pytest.approx(on_cpu.attention, abs=2e-3)


@needs_cuda
@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_mixed_precision_trains_with_finite_losses(precision, tiny_cohort, tmp_path):
    config = TrainConfig(**TINY, cache=str(tiny_cohort.cache), mixed_precision=precision)
    from noduleclip.train.cv import _accelerator

    accelerator = _accelerator(config, tmp_path / "probe")
    assert accelerator.device.type == "cuda" and accelerator.mixed_precision == precision
    # fp16 overflows without loss scaling: accelerate must have made the gradient scaler, and only for fp16
    assert (accelerator.scaler is not None) == (precision == "fp16")
    result = train_run(tiny_cohort.manifest, tmp_path / "run", config)
    losses = _epoch_losses(result.run)
    assert losses and all(math.isfinite(loss) for loss in losses)
    risks = [float(row["ensemble"]) for row in read_rows(result.run / "predictions.csv")]
    assert risks and all(0.0 <= r <= 1.0 for r in risks)


@needs_cuda
def test_batches_are_pinned_on_the_gpu_only(tiny_cohort, tmp_path, monkeypatch):
    pinned = []
    loader = train_loop.DataLoader

    def recording(*args, **kwargs):
        pinned.append(kwargs.get("pin_memory", False))
        return loader(*args, **kwargs)

    monkeypatch.setattr(train_loop, "DataLoader", recording)
    train_run(tiny_cohort.manifest, tmp_path / "run", TrainConfig(**TINY, cache=str(tiny_cohort.cache)))
    assert pinned and all(pinned)


@pytest.mark.skipif(not CUDA or torch.cuda.device_count() < 2, reason="needs two CUDA GPUs")
def test_two_gpu_processes_train_a_run_with_one_test_set(tiny_cohort, tmp_path):
    run = tmp_path / "two"
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           "-m", "noduleclip", *cli_args(tiny_cohort.manifest, run, tiny_cohort.cache, epochs=1)],
                          env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["validation"]["nodule"]["auroc"] is not None
    rows = read_rows(run / "predictions.csv")
    assert len({r["nodule_id"] for r in rows}) == len(rows)  # each test nodule once, not once per process
    assert np.isfinite([float(r["ensemble"]) for r in rows]).all()

"""The image tower traced for image-only inference: the same numbers as the built tower, without transformers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest
import torch

from noduleclip.ensemble import RunEnsemble
from noduleclip.model import LoraSettings, create_model, load_model, read_model_config, save_model
from noduleclip.model.towers import TracedVisionTower, VisionTower
from noduleclip.model.traced import KEEP_TRACED, TRACE_ENV, traced_tower_path


@pytest.fixture
def cache(tmp_path, monkeypatch):
    folder = tmp_path / "cache"
    monkeypatch.setenv("NODULECLIP_CACHE", str(folder))
    monkeypatch.delenv(TRACE_ENV, raising=False)
    return folder


def _views(count: int, seed: int = 1) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).uniform(0, 1, (count, 9, 50, 50)).astype(np.float32))


def _trained_like(tmp_path, name: str, backbone_name: str = "tiny", **settings):
    """A saved tiny model whose adapters and heads are not at their initial values (as after training)."""
    model = create_model(backbone_name, **settings)
    with torch.no_grad():
        generator = torch.Generator().manual_seed(3)
        for parameter_name, parameter in model.named_parameters():
            if parameter.requires_grad and "lora_" in parameter_name:
                parameter.add_(0.05 * torch.randn(parameter.shape, generator=generator))
    return model, save_model(model, tmp_path / name)


@pytest.mark.parametrize("image_blocks", [None, 1], ids=["lora-every-block", "lora-top-block"])
def test_a_second_image_only_load_reads_the_traced_tower_and_computes_the_same(tmp_path, cache, image_blocks):
    model, folder = _trained_like(tmp_path, "m", lora=LoraSettings(rank=4, alpha=4.0, image_blocks=image_blocks))
    first = load_model(folder, image_only=True)
    assert isinstance(first.vision, VisionTower)  # built with transformers, then traced into the cache
    path = traced_tower_path(read_model_config(folder)[0])
    assert path is not None and path.is_file() and path.parent == cache / "traced"
    second = load_model(folder, image_only=True)
    assert isinstance(second.vision, TracedVisionTower)
    assert second.frozen_image_blocks == model.frozen_image_blocks == (0 if image_blocks is None else 1)
    # the same tensors under the same names: a fold's saved adapters load into the trace as into the tower
    assert set(second.saved_state_dict()) == set(first.saved_state_dict())
    assert second.config.vision_fingerprint == model.config.vision_fingerprint
    views = _views(5)  # not the batch size the trace was recorded with
    a, b = first.predict(views), second.predict(views)
    torch.testing.assert_close(b.risk, a.risk, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(b.image_embeds, a.image_embeds, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(b.view_attention, a.view_attention, rtol=1e-5, atol=1e-6)
    if image_blocks is not None:  # the frozen prefix path (once for all folds) through the trace, too
        prefix = second.image_prefix(views)
        torch.testing.assert_close(second.predict(None, prefix=prefix).risk, a.risk, rtol=1e-5, atol=1e-6)
        with pytest.raises(ValueError, match="split after block 1"):
            second.vision.hidden_states(second.view_transform(views), 0)


def test_a_vision_only_model_always_loads_through_the_traced_tower(tmp_path, cache):
    """A vision-only model has no text tower to leave out: every load on the CPU is image-only, so the second
    reads the trace (evaluate and predict of a vision-only run start without transformers too)."""
    _, folder = _trained_like(tmp_path, "v", tuning="vision-only", lora=LoraSettings(rank=4, alpha=4.0))
    first = load_model(folder)
    assert isinstance(first.vision, VisionTower) and first.text is None
    second = load_model(folder)
    assert isinstance(second.vision, TracedVisionTower) and second.text is None
    assert second.config.tuning == "vision-only" and not second.image_only
    assert second.config.tower_fingerprint == first.config.tower_fingerprint  # the saved description, unchanged
    views = _views(4)
    a, b = first.predict(views), second.predict(views)
    assert float((a.risk - 0.5).abs().max()) > 1e-3  # heads that read the image, not a constant
    torch.testing.assert_close(b.risk, a.risk, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(b.view_attention, a.view_attention, rtol=1e-5, atol=1e-6)


def test_the_traced_run_ensemble_swaps_each_folds_adapters_into_the_trace(tiny_run, cache):
    views = _views(3, seed=4)
    built = RunEnsemble.load(tiny_run.run, text=False)  # traces the tower (the cache was empty)
    traced = RunEnsemble.load(tiny_run.run, text=False)
    assert isinstance(built.network.vision, VisionTower) and isinstance(traced.network.vision, TracedVisionTower)
    a, b = built.score(views), traced.score(views)
    assert not np.allclose(a.fold_risk[0], a.fold_risk[1])  # the folds differ, so a fold left in would show
    np.testing.assert_allclose(b.fold_risk, a.fold_risk, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(b.fold_embeds, a.fold_embeds, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(b.fold_attention, a.fold_attention, rtol=1e-5, atol=1e-6)


def test_a_process_that_loads_the_traced_tower_imports_neither_transformers_nor_peft(tmp_path, cache):
    _, folder = _trained_like(tmp_path, "m", lora=LoraSettings(rank=4, alpha=4.0, image_blocks=1))
    load_model(folder, image_only=True)  # the first load traces
    script = ("import sys, json, torch\n"
              "from noduleclip.model import load_model\n"
              f"model = load_model({str(folder)!r}, image_only=True)\n"
              "risk = model.predict_risk(torch.zeros(1, 9, 50, 50))\n"
              "print(json.dumps({'tower': type(model.vision).__name__, 'risk': float(risk[0]),\n"
              "                  'loaded': sorted(m for m in ('transformers', 'peft') if m in sys.modules)}))\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True,
                          env={"NODULECLIP_CACHE": str(cache), "PATH": "/usr/bin:/bin"})
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["tower"] == "TracedVisionTower" and result["loaded"] == []
    expected = load_model(folder, image_only=True).predict_risk(torch.zeros(1, 9, 50, 50))
    assert abs(result["risk"] - float(expected[0])) < 1e-5


def test_a_damaged_traced_file_is_made_again_and_the_model_still_loads(tmp_path, cache):
    _, folder = _trained_like(tmp_path, "m")
    load_model(folder, image_only=True)
    path = traced_tower_path(read_model_config(folder)[0])
    path.write_bytes(b"not a TorchScript archive")
    model = load_model(folder, image_only=True)
    assert isinstance(model.vision, VisionTower)  # built again, and traced again
    assert isinstance(load_model(folder, image_only=True).vision, TracedVisionTower)


def test_the_cache_names_each_kind_of_tower_apart_and_can_be_turned_off(tmp_path, cache, monkeypatch):
    _, folder = _trained_like(tmp_path, "m")
    config = read_model_config(folder)[0]
    path = traced_tower_path(config)
    assert path is not None
    others = [replace(config, lora=replace(config.lora, rank=8)), replace(config, lora=replace(config.lora, alpha=3.0)),
              replace(config, lora=replace(config.lora, image_blocks=1)), replace(config, image_size=56),
              replace(config, vision_fingerprint="0" * 16), replace(config, tower_seed=1)]
    assert len({traced_tower_path(other) for other in others} | {path}) == len(others) + 1
    # dropout and the text tower's settings change nothing in the image path at inference: the same file
    assert traced_tower_path(replace(config, lora=replace(config.lora, dropout=0.5, text_blocks=1))) == path
    assert traced_tower_path(replace(config, tuning="finetune")) is None  # whole towers are saved: nothing to trace
    assert traced_tower_path(config, device="cuda") is None
    monkeypatch.setenv(TRACE_ENV, "0")
    assert traced_tower_path(config) is None
    load_model(folder, image_only=True)
    assert not (cache / "traced").exists()


def test_the_cache_keeps_the_most_recently_used_traced_towers(tmp_path, cache):
    _, folder = _trained_like(tmp_path, "m")
    stale = cache / "traced"
    stale.mkdir(parents=True)
    for i in range(KEEP_TRACED + 1):  # older files of other models, the last one used most recently
        (stale / f"old-{i}.pt").write_bytes(b"x")
        os.utime(stale / f"old-{i}.pt", (1_000_000 + i, 1_000_000 + i))
    load_model(folder, image_only=True)
    path = traced_tower_path(read_model_config(folder)[0])
    kept = sorted(p.name for p in stale.glob("*.pt"))
    assert len(kept) == KEEP_TRACED and path.name in kept
    assert kept[:-1] == [f"old-{i}.pt" for i in range(KEEP_TRACED + 1 - (KEEP_TRACED - 1), KEEP_TRACED + 1)]


def test_the_cache_key_follows_the_tower_libraries_and_code(tmp_path, cache, monkeypatch):
    from importlib import metadata

    from noduleclip.model import traced

    _, folder = _trained_like(tmp_path, "m")
    config = read_model_config(folder)[0]
    path = traced_tower_path(config)
    assert metadata.version("transformers") in traced._code_versions()
    monkeypatch.setattr(traced, "_code_versions", lambda: ["another", "version"])
    assert traced_tower_path(config) != path


def test_a_clip_image_tower_is_traced_as_well(tmp_path, cache, backbone_registry):
    """The CLIP family (pre-layernorm, projection, its own attention names) through the same trace."""
    from noduleclip.model.backbones import CLIP_VIT_B_32

    backbone_registry["tiny-clip"] = replace(
        CLIP_VIT_B_32, name="tiny-clip", image_size=32, patch_size=8, weights_source="random", hub_id=None,
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                           patch_size=8, image_size=32, projection_dim=16),
        text_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                         max_position_embeddings=77, projection_dim=16))
    model, folder = _trained_like(tmp_path, "clip", backbone_name="tiny-clip")
    first, second = load_model(folder, image_only=True), load_model(folder, image_only=True)
    assert isinstance(first.vision, VisionTower) and isinstance(second.vision, TracedVisionTower)
    assert second.vision.dim == 16  # the projection's width, as the built tower's
    views = _views(3)
    torch.testing.assert_close(second.predict(views).image_embeds, first.predict(views).image_embeds,
                               rtol=1e-5, atol=1e-6)


def test_training_ends_with_the_image_tower_traced_for_predict(tiny_cohort, tmp_path, cache):
    from helpers import BASE
    from noduleclip.predict.api import NoduleClip
    from noduleclip.train import TrainConfig, train_run

    run = train_run(tiny_cohort.manifest, tmp_path / "run",
                    TrainConfig(**{**BASE, "epochs": 1}, cache=str(tiny_cohort.cache))).run
    assert traced_tower_path(read_model_config(run / "fold_0" / "best")[0]).is_file()
    assert isinstance(NoduleClip.load(run).ensemble.network.vision, TracedVisionTower)  # the first predict reads it

"""Acquisition augmentation: scanner protocols drawn at random within stated ranges, each nodule's copies
re-rendered from its scan as the robustness check re-renders it, and training that reads them."""

from pathlib import Path

import numpy as np
import pytest
import torch

from helpers import BASE, assert_same_results, comparable_log, write_sphere_scans
from noduleclip.data.manifest import NoduleManifest
from noduleclip.errors import InputError
from noduleclip.io import read_volume
from noduleclip.preprocess.acquisition import (
    acquisition_plan,
    acquisition_views,
    perturb_volume,
    random_acquisition,
)
from noduleclip.preprocess.views import ViewConfig, crop_for_views, sample_planes
from noduleclip.train import TrainConfig, train_run
from noduleclip.train import cv as cv_module
from noduleclip.train.splits import SplitPlan

RANGES = {"thick": (1.5, 5.0), "smooth": (0.4, 2.0), "sharp": (0.25, 1.5), "noise": (5.0, 40.0)}
ORDER = {"thick": 0, "smooth": 1, "sharp": 1, "noise": 2}


def test_random_protocols_stay_within_their_ranges_in_order_and_never_draw_nothing():
    draws = [random_acquisition(np.random.default_rng([7, n])) for n in range(3000)]
    kinds = [[s.kind for s in p.steps] for p in draws]
    assert all(kinds), "a draw without any step would be the plain nodule again"
    for p in draws:
        assert [ORDER[s.kind] for s in p.steps] == sorted({ORDER[s.kind] for s in p.steps})  # thick, kernel, noise
        for step in p.steps:
            low, high = RANGES[step.kind]
            assert low <= step.strength <= high, p.name
            assert 0.0 <= step.correlation_mm <= 1.0 and (step.correlation_mm == 0 or step.kind == "noise")
    share = {k: np.mean([k in ks for ks in kinds]) for k in RANGES}
    # half the draws thicken and half add noise, a third each take a smoother or a sharper kernel, before the
    # redraw of the empty protocol (1 in 12) raises each a little
    assert share["thick"] == pytest.approx(0.5 * 12 / 11, abs=0.04)
    assert share["noise"] == pytest.approx(0.5 * 12 / 11, abs=0.04)
    assert share["smooth"] == pytest.approx(share["sharp"], abs=0.05) and 0.3 < share["smooth"] < 0.42
    again = [random_acquisition(np.random.default_rng([7, n])) for n in range(50)]
    assert again == draws[:50]


def test_a_nodules_protocols_depend_on_its_id_and_the_seed_only():
    plan = acquisition_plan("LIDC-1_a", 3, seed=0)
    assert plan == acquisition_plan("LIDC-1_a", 3, seed=0)
    assert acquisition_plan("LIDC-1_a", 2, seed=0) == plan[:2]  # more copies add to the list, never reshuffle it
    assert plan != acquisition_plan("LIDC-1_b", 3, seed=0) and plan != acquisition_plan("LIDC-1_a", 3, seed=1)
    assert len({key for _, key in plan}) == 3  # each copy its own noise


def test_copies_are_each_nodules_own_protocols_rendered_and_cut_as_the_cache_cuts(tmp_path: Path):
    records, config = list(NoduleManifest.read(write_sphere_scans(tmp_path))), ViewConfig()
    copies = acquisition_views(records, 2, config, seed=3, workers=2)
    assert len(copies) == 2 and all(c.shape == (4, 9, 50, 50) and c.dtype == np.float16 for c in copies)
    for i, record in enumerate(records):
        volume = read_volume(record.image)
        plain = sample_planes(volume, record.coord, config)
        for c, (perturbation, key) in enumerate(acquisition_plan(record.nodule_id, 2, seed=3)):
            reach = sum(step.reach_mm() for step in perturbation.steps)
            crop = crop_for_views(volume, record.coord, config, reach)
            expected = sample_planes(perturb_volume(crop, perturbation, 3, key), record.coord, config)
            assert np.array_equal(copies[c][i], expected.astype(np.float16)), (record.nodule_id, perturbation.name)
            # another scanner's picture of the same nodule: changed, yet the same nodule in the same place
            assert np.abs(copies[c][i] - plain).mean() > 1e-3
            assert np.corrcoef(copies[c][i].ravel().astype(float), plain.ravel())[0, 1] > 0.8
    again = acquisition_views(records[::-1], 2, config, seed=3)  # the nodule and the seed decide, not the order
    assert all(np.array_equal(a[::-1], c) for a, c in zip(again, copies, strict=True))


def test_acquisition_augmentation_needs_a_copy_to_train_on():
    with pytest.raises(InputError, match="at least 2 augment variants"):
        TrainConfig(acquisition_augmentation=True, augment_variants=1).validate()


@pytest.mark.parametrize("extra", [{}, {"lora_image_blocks": 1, "image_augmentation": True}],
                         ids=["views", "frozen-blocks"])
def test_training_reads_the_re_rendered_copies_and_repeats_exactly(tiny_run, tiny_cohort, tmp_path,
                                                                  monkeypatch, extra):
    """The run asks for augment-variants - 1 copies of every nodule some fold trains on (not the held-out test
    nodules), in manifest order; its training differs from the plain run from the first epoch on, and the same
    settings give the same run again."""
    calls = []

    def recording(records, copies, *args, **kwargs):
        calls.append(([r.nodule_id for r in records], copies))
        return acquisition_views(records, copies, *args, **kwargs)

    monkeypatch.setattr(cv_module, "acquisition_views", recording)
    config = TrainConfig(**{**BASE, "epochs": 1, "augment_variants": 3, "acquisition_augmentation": True, **extra},
                         cache=str(tiny_cohort.cache))
    runs = [train_run(tiny_cohort.manifest, tmp_path / name, config) for name in ("one", "two")]
    test = set(SplitPlan.read_csv(runs[0].run / "splits.csv").test_ids())
    trained = [r.nodule_id for r in NoduleManifest.read(tiny_cohort.manifest) if r.nodule_id not in test]
    assert test and calls == [(trained, 2), (trained, 2)]
    assert_same_results(runs[0].run, runs[1].run)
    if not extra:
        def first_losses(run):
            return [e["train"]["total"] for e in comparable_log(run) if e["event"] == "epoch"]
        plain = first_losses(tiny_run.run)
        assert first_losses(runs[0].run) != pytest.approx([plain[0], plain[2]], abs=1e-6)


def test_the_frozen_blocks_run_once_on_every_nodule_and_again_only_on_those_a_fold_trains_on(tiny_cohort, tmp_path,
                                                                                            monkeypatch):
    """With turned versions of each nodule, the held-out test nodules need only the first (they are never trained
    on): the frozen blocks see all nodules once, then the training nodules' turned versions, nothing more."""
    from noduleclip.model.model import NoduleClipModel
    from noduleclip.train.dataset import augmented_variants

    seen: list[torch.Tensor] = []
    original = NoduleClipModel.image_prefix

    def recording(self, views, *args, **kwargs):
        seen.append(views.clone())
        return original(self, views, *args, **kwargs)

    monkeypatch.setattr(NoduleClipModel, "image_prefix", recording)
    config = TrainConfig(**{**BASE, "epochs": 1, "augment_variants": 3, "lora_image_blocks": 1,
                            "image_augmentation": True}, cache=str(tiny_cohort.cache))
    run = train_run(tiny_cohort.manifest, tmp_path / "run", config).run
    records = list(NoduleManifest.read(tiny_cohort.manifest))
    test = set(SplitPlan.read_csv(run / "splits.csv").test_ids())
    trained = torch.tensor([r.nodule_id not in test for r in records])
    assert 0 < len(test) < len(records)
    training = seen[:3]  # the ensemble's scoring afterwards computes its own
    views = training[0]
    assert len(views) == len(records)
    expected = augmented_variants(views, 3, config.seed)
    for got, version in zip(training[1:], expected[1:], strict=True):
        assert torch.equal(got, version[trained])

"""RunEnsemble on its own: fold models saved apart, frozen blocks shared, test-time augmentation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from noduleclip.ensemble import RunEnsemble
from noduleclip.errors import InputError
from noduleclip.model import LoraSettings, create_model, load_model, save_model
from noduleclip.model.symmetry import dihedral_views


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """Three tiny fold models with LoRA in the top image block (the blocks below frozen), differing in weights."""
    root = tmp_path_factory.mktemp("folds")
    out = []
    for k in range(3):
        torch.manual_seed(k)
        model = create_model("tiny", random_init=True, lora=LoraSettings(image_blocks=1))
        for parameter in model.parameters():  # trained tensors that differ between the folds
            if parameter.requires_grad:
                parameter.data.add_(0.05 * torch.randn_like(parameter))
        out.append(save_model(model, root / f"fold_{k}"))
    return out


@pytest.fixture(scope="module")
def views():
    return torch.rand(5, 9, 50, 50, generator=torch.Generator().manual_seed(1))


def test_each_fold_row_is_that_fold_model_alone(folders, views):
    ensemble = RunEnsemble.from_folders(folders)
    assert ensemble.network.frozen_image_blocks > 0  # the shared-prefix path
    scores = ensemble.score(views, batch_size=2)
    for k, folder in enumerate(folders):
        alone = load_model(folder).predict(views)
        assert scores.fold_risk[k] == pytest.approx(alone.risk.double().numpy(), abs=1e-6)
        assert scores.fold_embeds[k] == pytest.approx(alone.image_embeds.double().numpy(), abs=1e-6)
    assert scores.risk == pytest.approx(scores.fold_risk.mean(axis=0))
    assert np.ptp(scores.fold_risk, axis=0).max() > 1e-4  # the folds differ: the rows are not one model thrice
    last = ensemble.score(views, folds=[2])
    assert last.folds == (2,) and last.fold_risk[0] == pytest.approx(scores.fold_risk[2], abs=1e-6)


def test_test_time_augmentation_averages_the_eight_symmetries(folders, views):
    ensemble = RunEnsemble.from_folders(folders)
    tta = ensemble.score(views, tta=True)
    turned = [ensemble.score(dihedral_views(views, torch.full((5, 9), code))) for code in range(8)]
    assert tta.fold_risk == pytest.approx(np.mean([t.fold_risk for t in turned], axis=0), abs=1e-9)
    assert np.linalg.norm(tta.fold_embeds, axis=-1) == pytest.approx(np.ones((3, 5)))
    # a nodule seen turned or mirrored gets the same averaged score
    mirrored = ensemble.score(dihedral_views(views, torch.full((5, 9), 5)), tta=True)
    assert mirrored.fold_risk == pytest.approx(tta.fold_risk, abs=1e-6)
    assert np.abs(tta.fold_risk - turned[0].fold_risk).max() > 1e-6  # and it is not the plain score
    with pytest.raises(InputError, match="test-time augmentation"):
        ensemble.score(ensemble.network.image_prefix(views), prefixed=True, tta=True)

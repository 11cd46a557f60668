"""Stored prompt embeddings: predict loads a run without its text tower and gives the same semantic profile."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from safetensors import safe_open

from noduleclip.ensemble import PROMPT_FILE, RunEnsemble
from noduleclip.errors import InputError
from noduleclip.model import create_model, load_model, save_model
from noduleclip.model.checkpoint import CONFIG_FILE
from noduleclip.predict.api import NoduleClip
from noduleclip.run_folder import fold_model_folder
from noduleclip.semantics.prompts import PAPER, build_prompts


@pytest.fixture
def run(tiny_run, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(tiny_run.run, copy)
    return copy


@pytest.fixture(scope="module")
def views():
    return torch.rand(4, 9, 50, 50, generator=torch.Generator().manual_seed(3))


def _profile(ensemble: RunEnsemble, views, features=None):
    scores = ensemble.score(views)
    return scores, ensemble.zero_shot(scores, build_prompts(PAPER, features=features))


def test_training_stores_every_paper_prompt_for_every_fold(tiny_run):
    with safe_open(str(tiny_run.run / PROMPT_FILE), framework="pt") as handle:
        texts = json.loads(handle.metadata()["texts"])
        assert sorted(handle.keys()) == [f"fold_{k}" for k in range(tiny_run.config.folds)]
        table = handle.get_tensor("fold_0")
    assert set(build_prompts(PAPER).texts) <= set(texts) and len(texts) == len(set(texts))
    assert table.shape[0] == len(texts)
    assert torch.linalg.norm(table, dim=-1) == pytest.approx(torch.ones(len(texts)), abs=1e-5)


def test_the_image_only_ensemble_gives_the_same_risks_and_profile(tiny_run, views):
    whole = RunEnsemble.load(tiny_run.run)
    image_only = RunEnsemble.load(tiny_run.run, text=False)
    assert image_only.network.text is None and image_only.network.image_only and image_only.has_text
    assert whole.network.text is not None
    assert sum(p.numel() for p in image_only.network.parameters()) < sum(p.numel() for p in whole.network.parameters())
    (a, pa), (b, pb) = _profile(whole, views), _profile(image_only, views)
    assert b.fold_risk == pytest.approx(a.fold_risk, abs=1e-7)
    assert pa.keys() == pb.keys() and pa
    for feature in pa:
        assert pb[feature][0] == pa[feature][0]
        assert pb[feature][1] == pytest.approx(pa[feature][1], abs=1e-5)
    assert image_only.network.text is None  # every prompt came from the file


def test_a_prompt_the_file_lacks_brings_the_text_tower_back(run, views):
    texts = build_prompts(PAPER, features=["margins"]).texts
    RunEnsemble.load(run).write_prompt_embeddings(texts)  # only the margins' prompts stored
    image_only = RunEnsemble.load(run, text=False)
    assert image_only.network.text is None
    _, margins = _profile(image_only, views, ["margins"])
    assert image_only.network.text is None
    _, both = _profile(image_only, views, ["margins", "consistency"])
    assert image_only.network.text is not None  # rebuilt with the text tower for the consistency prompts
    _, reference = _profile(RunEnsemble.load(run), views, ["margins", "consistency"])
    for feature in ("margins", "consistency"):
        assert both[feature][1] == pytest.approx(reference[feature][1], abs=1e-5)
    assert margins["margins"][1] == pytest.approx(reference["margins"][1], abs=1e-5)


def test_a_file_written_for_other_fold_weights_is_not_used(run, views):
    _, reference = _profile(RunEnsemble.load(run), views)
    folder = fold_model_folder(run, 1)
    model = load_model(folder)
    with torch.no_grad():
        model.text_projection.fc.weight.mul_(-1.0)
    shutil.rmtree(folder)
    save_model(model, folder)  # fold 1 trained again: its stored prompt embeddings are stale
    retrained = RunEnsemble.load(run, text=False)
    assert retrained.network.text is not None  # the file no longer fits: built with the text tower
    _, profile = _profile(retrained, views)
    _, fresh = _profile(RunEnsemble.load(run), views)
    assert any(np.abs(profile[f][1] - reference[f][1]).max() > 1e-4 for f in profile)  # the change shows
    for feature in profile:
        assert profile[feature][1] == pytest.approx(fresh[feature][1], abs=1e-6)


def test_a_damaged_file_only_costs_the_shortcut(run, views):
    _, reference = _profile(RunEnsemble.load(run), views)
    (run / PROMPT_FILE).write_bytes(b"not a safetensors file")
    ensemble = RunEnsemble.load(run, text=False)
    assert ensemble.network.text is not None
    _, profile = _profile(ensemble, views)
    for feature in profile:
        assert profile[feature][1] == pytest.approx(reference[feature][1], abs=1e-6)


def test_predict_loads_the_run_without_its_text_tower(tiny_run):
    model = NoduleClip.load(tiny_run.run)
    assert model.ensemble.network.text is None and model.prompts is not None


def test_an_image_only_model_cannot_be_saved_and_an_old_one_loads_whole(tmp_path):
    model = create_model("tiny", random_init=True)
    folder = save_model(model, tmp_path / "m")
    image_only = load_model(folder, image_only=True)
    assert image_only.text is None and image_only.config.tower_fingerprint == model.config.tower_fingerprint
    with pytest.raises(InputError, match="image-only"):
        save_model(image_only, tmp_path / "again")
    with pytest.raises(InputError, match="image-only"):
        image_only.encode_text(["a spiculated nodule"])
    document = json.loads((folder / CONFIG_FILE).read_text())
    del document["config"]["vision_fingerprint"]  # saved before the image tower had a fingerprint of its own
    (folder / CONFIG_FILE).write_text(json.dumps(document))
    assert load_model(folder, image_only=True).text is not None

"""Views that mark where the scan ends (`ViewConfig.mark_outside`, `--mark-outside`): the marked pixels, what the
model's view transform makes of them, and the setting carried from the command line through the run to predict."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from helpers import add_sphere
from noduleclip.cli import build_parser
from noduleclip.commands.train import train_config
from noduleclip.errors import InputError
from noduleclip.io.volume import Volume
from noduleclip.model import create_model
from noduleclip.plots import view_image
from noduleclip.predict import NoduleClip
from noduleclip.preprocess.cache import ViewCache
from noduleclip.preprocess.views import OUTSIDE, ViewConfig, sample_planes

MARKED = ViewConfig(mark_outside=True)


def thin_slab(slices: int = 5, slice_mm: float = 2.5) -> Volume:
    """A crop as deep as LIDC's: `slices` axial slices of lung (-800 HU), 60 x 60 pixels of 1 mm."""
    array = np.full((slices, 60, 60), -800.0, np.float32)
    return Volume(array, origin=(0.0, 0.0, 0.0), spacing=(1.0, 1.0, slice_mm))


def test_pixels_beyond_the_slab_are_marked_and_the_rest_is_unchanged():
    slab = thin_slab()
    center = slab.index_to_world([30, 30, 2])  # the middle slice
    plain, marked = sample_planes(slab, center), sample_planes(slab, center, MARKED)
    assert plain.min() >= 0.0  # without the setting the slab's surroundings are air, as before
    inside = marked >= 0
    np.testing.assert_array_equal(marked[inside], plain[inside])
    assert set(np.unique(marked[~inside])) == {OUTSIDE}
    assert inside[0].all()  # the axial plane lies within the slab
    # the coronal plane (rows along z at 1 mm): 5 slices of 2.5 mm reach 6.25 mm either side of the centre
    rows_inside = inside[1].all(axis=1)
    assert rows_inside.tolist() == [abs(row - 25) <= 6 for row in range(50)]
    assert not inside[1].all(axis=1)[[18, 32]].any()
    # every off-axial plane leaves the slab somewhere; a deeper scan marks nothing
    assert all((~inside[p]).any() for p in range(1, 9))
    deep = thin_slab(slices=40)
    assert sample_planes(deep, deep.index_to_world([30, 30, 20]), MARKED).min() >= 0.0


def test_a_marked_pixel_is_pure_blue_to_the_encoder_and_nothing_else_moves():
    model = create_model("tiny", "probe", image_size=28)
    slab = thin_slab()
    add_sphere(slab, slab.index_to_world([30, 30, 2]), 4.0, hu=300.0)
    center = slab.index_to_world([30, 30, 2])
    marked = torch.from_numpy(sample_planes(slab, center, ViewConfig(size=28, mark_outside=True)))[None]
    plain = marked.clamp_min(0.0)  # the same views filled with air
    transform = model.view_transform
    with torch.no_grad():
        seen, before = transform(marked), transform(plain)
    outside = (marked[0] < 0)
    assert outside.any() and (~outside).any()
    scale, shift = transform.scale.view(3), transform.shift.view(3)
    # red and green: the air-filled views, everywhere; blue: the same where inside, white where outside
    torch.testing.assert_close(seen[:, :2], before[:, :2])
    blue_seen, blue_before = seen[:, 2], before[:, 2]
    torch.testing.assert_close(blue_seen[~outside], blue_before[~outside])
    torch.testing.assert_close(blue_seen[outside], torch.full_like(blue_seen[outside], float(scale[2] + shift[2])))
    # views with nothing outside go through exactly as a single grey plane broadcast to three channels
    deep = thin_slab(slices=40)
    inside_only = torch.from_numpy(sample_planes(deep, deep.index_to_world([30, 30, 20]),
                                                 ViewConfig(size=28, mark_outside=True)))[None]
    grey = inside_only.reshape(9, 1, 28, 28)
    torch.testing.assert_close(transform(inside_only), grey * scale.view(1, 3, 1, 1) + shift.view(1, 3, 1, 1))


def test_pictures_show_marked_pixels_in_blue():
    view = np.array([[0.0, 0.5], [1.0, OUTSIDE]], np.float32)
    rgb = view_image(view)
    assert rgb.shape == (2, 2, 3)
    np.testing.assert_array_equal(rgb[0, 1], [0.5, 0.5, 0.5])
    np.testing.assert_array_equal(rgb[1, 1], [0.0, 0.0, 1.0])


def test_caches_made_before_the_setting_stay_current_and_marked_ones_are_kept_apart(tmp_path):
    old = tmp_path / "old"
    (old / "views").mkdir(parents=True)
    (old / "cache.json").write_text(json.dumps({"format": 1, "views": {
        "size": 50, "spacing_mm": 1.0, "hu_min": -1000.0, "hu_max": 500.0, "angle_deg": 45.0}}))
    assert ViewCache(old).config == ViewConfig()
    with pytest.raises(InputError, match="other settings"):
        ViewCache(old, MARKED)
    marked = ViewCache(tmp_path / "marked", MARKED)
    with pytest.raises(InputError, match="other settings"):
        ViewCache(marked.root, ViewConfig())


def resolved(*argv: str):
    return train_config(build_parser("train").parse_args(["train", *argv]))


def test_the_option_reaches_the_training_settings_and_overrides_a_file(tmp_path):
    assert resolved().views.mark_outside is False
    assert resolved("--mark-outside").views.mark_outside is True
    settings = tmp_path / "settings.yaml"
    settings.write_text("views:\n  mark_outside: true\n  size: 40\n")
    assert resolved("--config", str(settings)).views == ViewConfig(size=40, mark_outside=True)
    assert resolved("--config", str(settings), "--no-mark-outside").views == ViewConfig(size=40)


def test_predict_cuts_views_as_the_run_was_trained(tiny_run, tmp_path):
    run = shutil.copytree(tiny_run.run, tmp_path / "run", ignore=shutil.ignore_patterns("cache", "last", "resume"))
    config_path = run / "config.json"
    config = json.loads(config_path.read_text())
    config["train"]["views"]["mark_outside"] = True
    config_path.write_text(json.dumps(config, indent=2))
    slab = thin_slab()
    center = tuple(slab.index_to_world([30, 30, 2]))
    add_sphere(slab, center, 4.0, hu=40.0)
    plain = NoduleClip.load(tiny_run.run).predict(slab, coords=[center])[0]
    marked = NoduleClip.load(run).predict(slab, coords=[center])[0]
    assert plain.views.min() >= 0.0
    np.testing.assert_array_equal(marked.views, sample_planes(slab, center, MARKED))
    assert (marked.views < 0).any()
    assert marked.risk_uncalibrated != plain.risk_uncalibrated  # the encoder saw the slab's edge

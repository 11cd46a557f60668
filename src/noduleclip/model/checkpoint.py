"""Save and load models: the weights that train as safetensors, the configuration as JSON; never pickle.

A saved folder holds `model.safetensors` (LoRA adapters, MIL, projections, heads, logit scale; the whole
towers only when they were fine-tuned) and `model.json`. Loading rebuilds the towers from
the backbone registry and refuses a folder whose tensors or towers do not match what it rebuilt.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path

from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ..atomic import staged_dir
from ..errors import InputError
from ..typed_json import read_json_object
from .model import ModelConfig, NoduleClipModel, create_model_from_config
from .traced import load_traced_tower, trace_tower, traced_tower_path

TEXT_PREFIXES = ("text.", "text_projection.", "text_head.")  # what an image-only model leaves out of a saved one
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "model.json"
FORMAT = "noduleclip-model"
FORMAT_VERSION = 1
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
RANDOM_WARNING = "RANDOM TOWER WEIGHTS: this model's towers are not pretrained; use it for tests and timing only."


def save_model(model: NoduleClipModel, folder: str | Path) -> Path:
    """Write the model's trained weights and configuration into `folder` (atomically); return the folder."""
    if model.image_only:
        raise InputError("This model was loaded image-only, for inference, so it lacks its text path; save the "
                         "model it was loaded from instead.")
    state = {name: tensor.detach().contiguous().cpu() for name, tensor in model.saved_state_dict().items()}
    document = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "config": model.config.to_dict(),
        "towers_saved": model.towers_are_saved(),
        "tensor_count": len(state),
        "trainable_fraction": model.trainable_fraction(),
    }
    if model.config.random_init:
        document["warning"] = RANDOM_WARNING
    folder = Path(folder)
    with staged_dir(folder) as stage:
        save_file(state, str(stage / WEIGHTS_FILE), metadata={"format": "pt", "noduleclip": FORMAT})
        (stage / CONFIG_FILE).write_text(json.dumps(document, indent=2) + "\n")
    return folder


def read_model_config(folder: str | Path) -> tuple[ModelConfig, dict]:
    """The saved ModelConfig and the whole JSON document of a model folder."""
    path = Path(folder) / CONFIG_FILE
    if not path.is_file():
        raise InputError(f"{folder} is not a saved noduleclip model: {CONFIG_FILE} is missing.")
    document = read_json_object(path, "the model folder is damaged, so save or train the model again")
    if document.get("format") != FORMAT or document.get("format_version") != FORMAT_VERSION:
        raise InputError(f"{path} is not a noduleclip model file of format version {FORMAT_VERSION}.")
    if "config" not in document:
        raise InputError(f"{path} has no key 'config' (the model's settings); the model folder is damaged, so save "
                         "or train the model again")
    return ModelConfig.from_dict(document["config"], f"{path} (its 'config')"), document


def check_safetensors_weights(weights: str | Path, where: str) -> None:
    """Refuse tower weights that are PyTorch pickle files (loading them runs code), naming `where` they came from."""
    path = Path(weights)
    if path.is_dir():
        if any(path.glob("*.safetensors")):
            return
        pickled = sorted(p.name for p in path.iterdir() if p.suffix in PICKLE_SUFFIXES)
    else:
        pickled = [path.name] if path.suffix in PICKLE_SUFFIXES else []
    if pickled:
        raise InputError(f"{where} names tower weights {path}, which holds {', '.join(pickled)} but no .safetensors "
                         "file, and noduleclip never loads pickled PyTorch weights; save them as safetensors (e.g. "
                         "save_pretrained(..., safe_serialization=True)) and pass that folder.")


def without_text_path(state: dict, expected: Mapping) -> dict:
    """A saved model's tensors less the text path's ones that an image-only model (`expected`'s names) has not."""
    return {name: tensor for name, tensor in state.items() if name in expected or not name.startswith(TEXT_PREFIXES)}


def load_model(folder: str | Path, weights: str | Path | None = None, device: str = "cpu",
               image_only: bool = False) -> NoduleClipModel:
    """Rebuild a saved model (towers from the registry, `weights` or the saved weights path) in eval mode.

    `image_only`: leave the text tower out (faster to build; for risks and image embeddings). A model saved before
    the image tower had a fingerprint of its own cannot be checked without its text tower: it is built whole. On
    the CPU, an image-only load (a vision-only model always is one) reads the image tower traced by an earlier one
    where the cache holds it, and traces it otherwise (`noduleclip.model.traced`).
    """
    folder = Path(folder)
    saved, document = read_model_config(folder)
    config = ModelConfig.from_dict(saved.to_dict())
    if weights is not None:
        config.weights = str(weights)
    if config.weights is not None and not Path(config.weights).exists():
        raise InputError(f"The towers of {folder} were built from {config.weights}, which is gone; pass weights=... .")
    if config.weights is not None:
        check_safetensors_weights(config.weights, str(folder / CONFIG_FILE) if weights is None else "weights=")
    image_only = (image_only or config.tuning == "vision-only") and bool(saved.vision_fingerprint) \
        and not document.get("towers_saved")
    traced = traced_tower_path(config, device) if image_only else None
    tower = load_traced_tower(traced) if traced is not None else None  # recorded by an earlier load: no transformers
    model = create_model_from_config(config, image_only, tower)  # fills in the built fields afresh, from these towers
    built, trained = ((model.config.vision_fingerprint, saved.vision_fingerprint) if image_only
                      else (model.config.tower_fingerprint, saved.tower_fingerprint))
    if not document.get("towers_saved") and built != trained:
        raise InputError(f"The towers rebuilt for {folder} ({model.config.weights_source}) differ from those it was "
                         f"trained with ({saved.weights_source}); pass the same weights.")
    if image_only:  # the text tower's part of the description is the saved one (it was not built here)
        model.config = replace(model.config, tower_fingerprint=saved.tower_fingerprint, tokenizer=saved.tokenizer,
                               weights_source=saved.weights_source)
    try:
        state = load_file(str(folder / WEIGHTS_FILE), device=device)
    except (FileNotFoundError, SafetensorError, OSError) as error:
        raise InputError(f"Cannot read {folder / WEIGHTS_FILE} ({error}); the model folder is damaged.") from None
    expected = model.saved_state_dict()
    if model.image_only:
        state = without_text_path(state, expected)
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    if missing or unexpected:
        raise InputError(f"{folder / WEIGHTS_FILE} does not fit a {config.backbone}/{config.tuning} model "
                         f"(missing {missing[:3]}, unexpected {unexpected[:3]}); it was saved from another "
                         "configuration.")
    wrong = [name for name, tensor in state.items() if tensor.shape != expected[name].shape]
    if wrong:
        raise InputError(f"{folder / WEIGHTS_FILE} has tensors of the wrong shape ({wrong[:3]}); it was saved from "
                         "another configuration.")
    model.load_state_dict(state, strict=False)
    if traced is not None and tower is None and built == trained:
        trace_tower(model, traced)  # for the next image-only load of a model of this kind
    return model.to(device).eval()


def trace_for_inference(folder: str | Path) -> Path | None:
    """Trace the image tower of the saved model in `folder` into the cache now, unless it is there already, so that
    the first image-only load (`predict`) reads it instead of importing transformers and peft (training ends with
    this). Returns the traced file, or None where none is kept (see `noduleclip.model.traced`)."""
    path = traced_tower_path(read_model_config(folder)[0])
    if path is not None and not path.is_file():
        load_model(folder, image_only=True)
    return path if path is not None and path.is_file() else None


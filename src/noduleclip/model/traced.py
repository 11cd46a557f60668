"""The image tower recorded once as TorchScript, so that image-only inference starts without transformers or peft.

Building an image tower means importing transformers' modelling code and peft first: about 2.5 s of a
2-core machine's 7 s `predict`, before a single view is read. Inference of a finished model needs only the
image path, for views of one fixed size, so after a first image-only build on the CPU the tower (its LoRA
adapters included) is traced with `torch.jit.trace` in two parts, the frozen bottom blocks and the rest,
and kept in the user cache (`cache_dir()/traced/`). Later image-only loads of a model of the same kind read
that file instead (about 0.2 s) and load each fold's tensors into it as into the tower itself: the trace
keeps the tower's parameter names.

The trace records the operations the tower's own code ran, so it computes the same numbers (checked when it
is made, on a batch of another size than the one traced, and in the tests). A file is named by a digest of
everything its graph and frozen weights depend on: the versions of noduleclip, torch, transformers and peft,
the towers' code, the backbone, image size, tower weights and their fingerprint, and the LoRA settings. The
cache keeps the four most recently used (a DINOv2 ViT-S tower is 90 MB). A file that cannot be read is rebuilt;
where TorchScript (deprecated in recent torch) no longer traces or loads, the towers are built as before.
`NODULECLIP_TRACED_TOWER=0` turns the cache off.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import types
import warnings
from importlib import metadata
from pathlib import Path

import torch

from ..atomic import atomic_path
from ..version import __version__
from . import towers
from .backbones import get_backbone
from .convert import cache_dir
from .model import ModelConfig, NoduleClipModel, resolve_config
from .towers import TracedVisionTower, VisionTower

TRACE_ENV = "NODULECLIP_TRACED_TOWER"
TRACE_FORMAT = 1
KEEP_TRACED = 4  # traced towers kept in the cache, the most recently used (a DINOv2 ViT-S one is 90 MB)
_META = "noduleclip.json"  # the file's description, stored inside it (TorchScript's extra files)
_log = logging.getLogger(__name__)


def trace_enabled() -> bool:
    return os.environ.get(TRACE_ENV, "1").strip().lower() not in ("0", "no", "off", "false")


def traced_tower_path(config: ModelConfig, device: str = "cpu") -> Path | None:
    """Where the traced image tower of a saved model's `config` lives in the cache; None where none is kept (the
    cache is off, the model fine-tunes its whole towers, runs off the CPU or has no image-tower fingerprint)."""
    if not trace_enabled() or str(device) != "cpu" or config.tuning == "finetune" or not config.vision_fingerprint:
        return None
    resolved = resolve_config(config)
    backbone = get_backbone(resolved.backbone)
    lora = resolved.lora if resolved.tuning in ("lora", "vision-only") else None
    key = {
        "format": TRACE_FORMAT, "code": _code_versions(),
        "backbone": [backbone.name, backbone.vision_family, backbone.vision_config, backbone.image_size],
        "image_size": resolved.image_size, "weights": resolved.weights, "random_init": resolved.random_init,
        "tower_seed": resolved.tower_seed, "tuning": resolved.tuning, "fingerprint": resolved.vision_fingerprint,
        "lora": None if lora is None else [lora.rank, lora.alpha, list(lora.target_names), lora.image_blocks],
    }
    digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:24]
    return cache_dir() / "traced" / f"{backbone.name}-{digest}.pt"


def _code_versions() -> list[str]:
    """What the recorded graph depends on besides the settings: the versions of noduleclip, torch, transformers and
    peft (read from their metadata, without importing them) and a digest of the towers' own code."""
    versions = [__version__, torch.__version__]
    for package in ("transformers", "peft"):
        try:
            versions.append(metadata.version(package))
        except metadata.PackageNotFoundError:
            versions.append("")
    versions.append(hashlib.sha256(Path(towers.__file__).read_bytes()).hexdigest()[:16])
    return versions


def load_traced_tower(path: Path) -> TracedVisionTower | None:
    """The traced tower in `path`, or None when there is none or it cannot be read (it is then made again)."""
    if not path.is_file():
        return None
    extra = {_META: ""}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # TorchScript's deprecation notice: the fallback is the eager build
            script = torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
        meta = json.loads(extra[_META])
        os.utime(path)  # recently used: kept when the cache is pruned
        return TracedVisionTower(script, int(meta["dim"]), int(meta["depth"]), int(meta["split"]),
                                 str(meta["fingerprint"]), str(meta["weights_source"]))
    except (RuntimeError, OSError, ValueError, KeyError, TypeError, AttributeError) as error:
        _log.debug("traced image tower %s not used (%s: %s); building the tower", path, type(error).__name__, error)
        return None


def trace_tower(model: NoduleClipModel, path: Path) -> bool:
    """Record `model`'s image tower (split after its frozen blocks) into `path`; whether it was written.

    The trace is run again on a batch of another size and must reproduce the tower's own output, or nothing
    is written."""
    tower = model.vision
    if not isinstance(tower, VisionTower) or next(tower.parameters()).device.type != "cpu":
        return False
    split, size = model.frozen_image_blocks, model.config.image_size
    assert size is not None
    # the two parts as methods of the transformers model, which the trace records with its parameters' names
    network = tower.model
    network.traced_prefix = types.MethodType(lambda _, pixels: tower._hidden_states(pixels, split), network)
    network.traced_finish = types.MethodType(lambda _, hidden: tower._finish(hidden, split), network)
    was_training = tower.training
    tower.eval()
    try:
        generator = torch.Generator().manual_seed(0)
        pixels = torch.randn(2, 3, size, size, generator=generator)
        check = torch.randn(3, 3, size, size, generator=generator)
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # TorchScript's deprecation and its tracer's notes on shape arithmetic
            hidden = tower._hidden_states(pixels, split)
            script = torch.jit.trace_module(network, {"traced_prefix": (pixels,), "traced_finish": (hidden,)},
                                            check_trace=False)
            expected = tower._finish(tower._hidden_states(check, split), split)
            got = script.traced_finish(script.traced_prefix(check))
            if not torch.allclose(got, expected, rtol=1e-4, atol=1e-5):
                _log.debug("traced image tower differs from the tower (%.2e); not kept",
                           float((got - expected).abs().max()))
                return False
            meta = {"dim": tower.dim, "depth": tower.depth, "split": split,
                    "fingerprint": model.config.vision_fingerprint, "weights_source": model.config.weights_source}
            with atomic_path(path) as tmp:
                torch.jit.save(script, str(tmp), _extra_files={_META: json.dumps(meta)})
        _prune(path.parent, keep=KEEP_TRACED)
        return True
    except (RuntimeError, OSError, ValueError, TypeError, AttributeError) as error:
        _log.debug("image tower not traced (%s: %s)", type(error).__name__, error)
        return False
    finally:
        del network.traced_prefix, network.traced_finish
        tower.train(was_training)


def _prune(folder: Path, keep: int) -> None:
    """Remove all but the `keep` most recently used traced towers (each is the size of its tower's weights)."""
    files = sorted(folder.glob("*.pt"), key=lambda f: f.stat().st_mtime, reverse=True)
    for old in files[keep:]:
        old.unlink(missing_ok=True)


"""Run state on disk: each fold's resume file and the run's log. No pickle anywhere.

`fold_<k>/resume/state.safetensors` holds the trainable weights and the optimizer's tensors (AdamW
moments and step counts); its JSON metadata holds the optimizer's settings, the learning-rate
scheduler, the number of finished epochs and the early-stopping state. It is rewritten atomically
after every epoch, once that epoch's checkpoints and log line are written, so a run killed at any
point (even with SIGKILL) restarts from the last finished epoch and redoes at most one epoch.

No random-generator state is stored because none is carried between epochs: at the start of epoch
e, dropout, sampler and text augmentation are all seeded from (run seed, fold, e), so epoch e draws
the same numbers whether or not the run was interrupted before it.

`log.jsonl` gets one JSON line per finished epoch and one per finished fold; `rewind` drops the
lines that a resumed fold will write again (and a line cut short by a kill).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

from noduleclip.atomic import atomic_path, write_text
from noduleclip.errors import InputError

STATE_FILE = "state.safetensors"
FORMAT = "noduleclip-resume"
FORMAT_VERSION = 1


def trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The parameters that train, by name (detached CPU copies)."""
    return {name: p.detach().cpu().contiguous() for name, p in model.named_parameters() if p.requires_grad}


def _flatten_optimizer(state: dict) -> tuple[dict[str, torch.Tensor], dict]:
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict] = {}
    for index, entry in state["state"].items():
        scalars[str(index)] = {}
        for name, value in entry.items():
            if torch.is_tensor(value):
                tensors[f"optimizer/{index}/{name}"] = value.detach().cpu().contiguous()
            else:
                scalars[str(index)][name] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    state: dict[int, dict] = {int(i): dict(values) for i, values in meta["scalars"].items()}
    for key, tensor in tensors.items():
        _, index, name = key.split("/", 2)
        state.setdefault(int(index), {})[name] = tensor
    groups = [{**g, "betas": tuple(g["betas"])} if "betas" in g else g for g in meta["param_groups"]]
    return {"state": state, "param_groups": groups}


def save_resume_state(folder: str | os.PathLike, model: nn.Module, optimizer, scheduler, progress: dict) -> Path:
    """Write the state to continue training after the epoch just finished; `progress` is JSON-safe."""
    weights = {f"model/{name}": tensor for name, tensor in trainable_state(model).items()}
    optimizer_tensors, optimizer_meta = _flatten_optimizer(optimizer.state_dict())
    document = {"format": FORMAT, "format_version": FORMAT_VERSION, "progress": progress,
                "optimizer": optimizer_meta, "scheduler": scheduler.state_dict()}
    path = Path(folder) / STATE_FILE
    with atomic_path(path) as tmp:
        save_file({**weights, **optimizer_tensors}, str(tmp), metadata={"noduleclip": json.dumps(document)})
    return path


def load_resume_state(folder: str | os.PathLike, model: nn.Module, optimizer, scheduler) -> dict | None:
    """Restore weights, optimizer and scheduler from a resume file; return its `progress`, or None if there is none."""
    path = Path(folder) / STATE_FILE
    if not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="pt") as handle:
            document = json.loads(handle.metadata()["noduleclip"])
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    except (SafetensorError, OSError, KeyError, json.JSONDecodeError) as error:
        raise InputError(f"resume file {path} is damaged ({error}); delete it to restart this fold") from None
    if document.get("format") != FORMAT or document.get("format_version") != FORMAT_VERSION:
        raise InputError(f"{path} is not a noduleclip resume file of version {FORMAT_VERSION}; delete it to restart")
    weights = {key[len("model/"):]: t for key, t in tensors.items() if key.startswith("model/")}
    expected = {name for name, p in model.named_parameters() if p.requires_grad}
    if set(weights) != expected:
        raise InputError(f"resume file {path} does not fit this model's trainable weights; delete it to restart")
    parameters = dict(model.named_parameters())
    with torch.no_grad():
        for name, tensor in weights.items():
            parameters[name].copy_(tensor)
    optimizer_tensors = {key: t for key, t in tensors.items() if key.startswith("optimizer/")}
    optimizer.load_state_dict(_unflatten_optimizer(optimizer_tensors, document["optimizer"]))
    scheduler.load_state_dict(document["scheduler"])
    return document["progress"]


def resumed_epochs(folder: str | os.PathLike) -> int | None:
    """The number of finished epochs a fold's resume file records, or None without a readable one."""
    path = Path(folder) / STATE_FILE
    if not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="pt") as handle:
            return int(json.loads(handle.metadata()["noduleclip"])["progress"]["epochs_done"])
    except (SafetensorError, OSError, KeyError, TypeError, ValueError):
        return None


def remove_partial_writes(folder: str | os.PathLike, recursive: bool = True) -> None:
    """Delete the hidden temporary files and staging folders that a killed write leaves behind."""
    folder = Path(folder)
    if not folder.is_dir():
        return
    for path in list(folder.rglob(".*") if recursive else folder.glob(".*")):
        if path.name.startswith(".staging-") and path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        elif ".tmp" in path.name and path.is_file():
            path.unlink(missing_ok=True)


class RunLog:
    """log.jsonl: one JSON object a line, appended as training goes."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    def entries(self) -> list[dict]:
        """The complete lines, in order (a line cut short by a kill is skipped)."""
        if not self.path.is_file():
            return []
        entries = []
        for line in self.path.read_text().splitlines():
            try:
                entries.append(json.loads(line))
            except json.JSONDecodeError:
                continue
        return entries

    def append(self, entry: dict) -> None:
        with open(self.path, "a") as handle:
            handle.write(json.dumps(entry) + "\n")
            handle.flush()
            os.fsync(handle.fileno())

    def rewind(self, fold: int, epochs_done: int) -> None:
        """Keep what precedes epoch `epochs_done + 1` of `fold`; drop the rest (it will be written again)."""
        def keep(e: dict) -> bool:
            f = e.get("fold", -1)
            return f < fold or (f == fold and e.get("event") == "epoch" and e.get("epoch", 0) <= epochs_done)

        entries = self.entries()
        kept = [e for e in entries if keep(e)]
        text = "".join(json.dumps(e) + "\n" for e in kept)
        if not self.path.is_file() or self.path.read_text() != text:
            write_text(self.path, text)

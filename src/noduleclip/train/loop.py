"""Train one cross-validation fold: epochs of AdamW on the model's losses, validation, early stopping.

After every epoch the fold folder gets `last/` (and `best/` when the validation AUROC of the image
head improved; ties keep the earlier epoch), a line in log.jsonl and a new resume file, in that
order. When the fold ends (patience or the epoch limit) its validation predictions from the best
model go into `done.json`, which marks the fold finished.

The loop runs under Hugging Face accelerate: one CPU process by default, data-parallel under
`accelerate launch` or `torchrun`. Each global batch is split between the processes, and the
embeddings, logits and labels are gathered (with gradients) before the loss, so every process
computes the loss of the whole batch, as a single process would: the contrastive loss compares
each nodule with all others in the batch, not just those on its own process. Each process
validates on the whole validation set, so all take the same early-stopping decisions; only the
main process writes files.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.data import DataLoader

from noduleclip.atomic import write_text
from noduleclip.ensemble import RunEnsemble
from noduleclip.metrics.classification import classification_metrics
from noduleclip.model import ModelOutput, NoduleClipLoss, NoduleClipModel, create_model, save_model
from noduleclip.progress import Progress, progress_bar
from noduleclip.run_folder import DONE_FILE, FOLD_MODEL
from noduleclip.train.config import TrainConfig
from noduleclip.train.dataset import SEED_DROPOUT, SEED_INIT, EpochBatches, NoduleDataset, derive_seed
from noduleclip.train.resume import RunLog, load_resume_state, remove_partial_writes, save_resume_state


@dataclass
class FoldData:
    """What one fold trains and validates on."""

    train: NoduleDataset
    train_weights: np.ndarray | None  # sampling weights (None: plain shuffling)
    val_ids: list[str]
    val_views: torch.Tensor  # (N, 9, S, S), or their image prefix when `prefixed`
    val_labels: np.ndarray  # 1.0, 0.0 or NaN (unknown)
    prefixed: bool = False  # the datasets hold the frozen image blocks' output instead of views (see image_prefix)


def build_fold_model(config: TrainConfig, fold: int) -> NoduleClipModel:
    """The fold's freshly initialised model; the same for a seed and fold on every process and every run."""
    torch.manual_seed(derive_seed(config.seed, SEED_INIT, fold))
    return create_model(**config.model_settings())


def device_name(device: torch.device) -> str:
    """The device as load_model takes it ("cpu" for every CPU process, "cuda:1" for a GPU)."""
    return "cpu" if device.type == "cpu" else str(device)


def predict_risk(model: NoduleClipModel, views: torch.Tensor, batch_size: int = 32,
                 prefixed: bool = False) -> np.ndarray:
    """Image-head malignancy probabilities (N,) as float64 numpy, in eval mode without gradients.

    `prefixed`: `views` holds the views' image prefix (the frozen blocks' output) instead of the views.
    """
    inputs = dict(views=None, prefix=views) if prefixed else dict(views=views)
    return model.predict_risk(batch_size=batch_size, **inputs).detach().cpu().double().numpy()


def validation_scores(labels: np.ndarray, risk: np.ndarray) -> dict:
    """AUROC, AUPRC and the image head's cross-entropy on the labelled validation nodules (None when undefined)."""
    known = ~np.isnan(labels)
    scores: dict[str, float | None] = {"n": int(known.sum()), "auroc": None, "auprc": None, "loss": None}
    if known.any():
        p = np.clip(risk[known], 1e-7, 1 - 1e-7)
        y = labels[known]
        scores["loss"] = float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))
        metrics = classification_metrics(labels, risk, n_bootstrap=0, allow_single_class=True)
        scores["auroc"], scores["auprc"] = metrics["auroc"], metrics["auprc"]
    return scores


def monitored(scores: dict) -> float | None:
    """The early-stopping quantity: validation AUROC, else minus the loss when a fold lacks a class."""
    if scores["auroc"] is not None:
        return scores["auroc"]
    return None if scores["loss"] is None else -scores["loss"]


def _gather_batch(accelerator, output, labels, sizes, semantic):
    """The whole batch's embeddings, logits (with gradients), labels, size and semantic targets, when several
    processes share it."""
    if accelerator.num_processes == 1:
        return output, labels, sizes, semantic
    from torch.distributed.nn.functional import all_gather  # needs a torch built with distributed support

    def cat(tensor):
        return None if tensor is None else torch.cat(all_gather(tensor.contiguous()), dim=0)

    gathered = dataclasses.replace(output, image_embeds=cat(output.image_embeds), image_logits=cat(output.image_logits),
                                   text_embeds=cat(output.text_embeds), text_logits=cat(output.text_logits),
                                   log_diameter=cat(output.log_diameter),
                                   semantic_logits=None if output.semantic_logits is None else
                                   {name: cat(logits) for name, logits in output.semantic_logits.items()})
    return gathered, accelerator.gather(labels), accelerator.gather(sizes), accelerator.gather(semantic)


def _split_second(output: ModelOutput, count: int) -> tuple[ModelOutput, ModelOutput]:
    """A forward over the batch's views followed by their second versions, as the two versions' outputs (the texts,
    encoded once, stay with the first)."""

    def part(values, rows: slice):
        if values is None:
            return None
        return {k: v[rows] for k, v in values.items()} if isinstance(values, dict) else values[rows]

    def half(rows: slice, keep_text: bool) -> ModelOutput:
        return dataclasses.replace(
            output, image_embeds=output.image_embeds[rows], view_attention=output.view_attention[rows],
            image_logits=output.image_logits[rows], log_diameter=part(output.log_diameter, rows),
            semantic_logits=part(output.semantic_logits, rows),
            **({} if keep_text else dict(text_embeds=None, text_logits=None, logit_scale=None)))

    return half(slice(0, count), True), half(slice(count, None), False)


def _training_attention(accelerator):
    """The attention kernel of the training steps: on a CPU in bf16 the math one, whose backward pass is
    about twice as fast there as flash attention's (the frozen blocks and validation keep the default)."""
    if accelerator.device.type == "cpu" and accelerator.mixed_precision == "bf16":
        return sdpa_kernel(SDPBackend.MATH)
    return contextlib.nullcontext()


def _schedule(name: str, total_steps: int):
    if name == "cosine":
        return lambda step: 0.5 * (1.0 + math.cos(math.pi * min(step, total_steps) / max(1, total_steps)))
    return lambda step: 1.0


class _EpochLoader(Protocol):
    """The training loader after `accelerator.prepare`: accelerate's DataLoaderShard (or Dispatcher)."""

    def __iter__(self) -> Iterator[Any]: ...

    def set_epoch(self, epoch: int) -> None: ...


@dataclass
class _Fold:
    """One fold's training state: the (accelerate-prepared) model, optimiser, batches and progress counters."""

    model: torch.nn.Module  # prepared by accelerate (wrapped for data parallelism when several processes run)
    network: NoduleClipModel  # the model itself
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    batches: EpochBatches
    loader: _EpochLoader
    state: dict  # epochs_done, best_epoch, best_monitor, stale_epochs (what the resume file keeps)


def _start_fold(fold: int, config: TrainConfig, data: FoldData, folder: Path, log: RunLog, accelerator) -> _Fold:
    """The fold's fresh model and optimiser, or the state of its last finished epoch when the fold resumes."""
    model = build_fold_model(config, fold)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=config.lr, weight_decay=config.weight_decay)
    batches = EpochBatches(len(data.train), config.batch_size, config.seed, fold, data.train_weights,
                           processes=accelerator.num_processes)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _schedule(config.schedule, config.epochs * len(batches)))
    state = load_resume_state(folder / "resume", model, optimizer, scheduler) or {
        "epochs_done": 0, "best_epoch": 0, "best_monitor": None, "stale_epochs": 0}
    if accelerator.is_main_process:
        remove_partial_writes(folder)
        log.rewind(fold, state["epochs_done"])
    # the items are slices of tensors in memory; workers only pay off when views are not precomputed. On a GPU the
    # batches are pinned, so that their copy to the device can overlap the step before
    loader = DataLoader(data.train, batch_sampler=batches, num_workers=0 if data.prefixed else config.workers or 0,
                        pin_memory=accelerator.device.type == "cuda")
    prepared, optimizer, loader = accelerator.prepare(model, optimizer, loader)
    return _Fold(prepared, accelerator.unwrap_model(prepared), optimizer, scheduler, batches, loader, state)


def _train_epoch(run: _Fold, epoch: int, fold: int, config: TrainConfig, data: FoldData, accelerator,
                 bar: Progress[Any]) -> dict:
    """One pass over the fold's training batches; the mean of each loss term."""
    torch.manual_seed(derive_seed(config.seed, SEED_DROPOUT, fold, epoch))
    run.loader.set_epoch(epoch)  # accelerate's loader passes its own epoch count on to the sampler: keep them equal
    run.batches.set_epoch(epoch)
    data.train.set_epoch(epoch)
    run.model.train()
    with_text = run.network.text is not None
    loss_fn = NoduleClipLoss(size_weight=config.size_weight, semantic_weight=config.semantic_weight,
                             consistency_weight=config.consistency_weight)
    sums: dict[str, float] = {}
    count = 0
    for batch in run.loader:
        tokens = run.network.tokenize(batch["text"]) if with_text else None
        second = batch.get("second_views")  # a second version of each nodule (consistency loss): one forward for both
        views = batch["views"] if second is None else torch.cat([batch["views"], second])
        with accelerator.autocast(), _training_attention(accelerator):
            images = dict(views=None, prefix=views) if data.prefixed else dict(views=views)
            output = run.model(text=tokens, **images)
        output, pair = _split_second(output, len(batch["views"])) if second is not None else (output, None)
        output, labels, sizes, semantic = _gather_batch(accelerator, output, batch["label"], batch["log_diameter"],
                                                        batch["semantic"])
        loss = loss_fn(output, labels, sizes, semantic, pair)
        accelerator.backward(loss.total)
        run.optimizer.step()
        run.scheduler.step()
        run.optimizer.zero_grad(set_to_none=True)
        for name, value in loss.as_floats().items():
            sums[name] = sums.get(name, 0.0) + value
        count += 1
        bar.set_postfix(epoch=f"{epoch + 1}/{config.epochs}", loss=f"{loss.total.item():.3f}")
        bar.update(1)  # after the postfix, so that a plain progress line shows this step's loss
    return {k: v / max(count, 1) for k, v in sums.items()}


def _validate(run: _Fold, config: TrainConfig, data: FoldData) -> tuple[dict, bool]:
    """The epoch's validation scores, and whether they are the fold's best so far (updating the fold's state)."""
    risk = predict_risk(run.network, data.val_views, config.eval_batch_size, data.prefixed)
    scores = validation_scores(data.val_labels, risk)
    monitor, state = monitored(scores), run.state
    improved = state["best_epoch"] == 0 or (monitor is not None and (state["best_monitor"] is None
                                                                    or monitor > state["best_monitor"]))
    if improved:
        state.update(best_epoch=state["epochs_done"] + 1, best_monitor=monitor, stale_epochs=0)
    else:
        state["stale_epochs"] += 1
    state["epochs_done"] += 1
    return scores, improved


def _save_epoch(run: _Fold, fold: int, folder: Path, log: RunLog, losses: dict, scores: dict, improved: bool,
                seconds: float) -> None:
    """best/ (when improved), last/, the log line and the resume file, in that order (main process)."""
    network = run.network
    if improved:
        save_model(network, folder / FOLD_MODEL)
    save_model(network, folder / "last")
    log.append({"event": "epoch", "fold": fold, "epoch": run.state["epochs_done"], "train": losses, "val": scores,
                "best": improved, "lr": run.scheduler.get_last_lr()[0],
                "logit_scale": float(network.scale().detach()) if network.text is not None else None,
                "seconds": round(seconds, 3)})
    save_resume_state(folder / "resume", network, run.optimizer, run.scheduler, run.state)


def _finish_fold(fold: int, config: TrainConfig, data: FoldData, folder: Path, log: RunLog, state: dict,
                 device: str) -> dict:
    """done.json: the fold's summary and its best model's predictions on the validation nodules (main process)."""
    done = {"fold": fold, "best_epoch": state["best_epoch"], "best_monitor": state["best_monitor"],
            "epochs_run": state["epochs_done"], "stopped_early": state["epochs_done"] < config.epochs}
    best = RunEnsemble.from_folders([folder / FOLD_MODEL], device)
    risk = best.score(data.val_views, config.eval_batch_size, prefixed=data.prefixed).fold_risk[0]
    done["val"] = {"nodule_id": data.val_ids, "probability": risk.tolist()}
    log.append({"event": "fold_end", **{k: v for k, v in done.items() if k != "val"}})  # rewound if cut here
    write_text(folder / DONE_FILE, json.dumps(done) + "\n")
    return done


def tracked_values(fold: int, losses: dict, scores: dict, lr: float) -> dict[str, float]:
    """One epoch as the experiment tracker gets it (`log_with`; a no-op without one), under the fold's name:
    `fold_<k>/train/<loss term>`, `fold_<k>/val/<auroc, auprc, loss>` (those defined) and `fold_<k>/lr`."""
    values = {f"fold_{fold}/train/{name}": value for name, value in losses.items()}
    values |= {f"fold_{fold}/val/{name}": scores[name] for name in ("auroc", "auprc", "loss")
               if scores.get(name) is not None}
    return values | {f"fold_{fold}/lr": lr}


def train_fold(fold: int, config: TrainConfig, data: FoldData, folder: Path, log: RunLog, accelerator,
               total_folds: int) -> dict:
    """Train (or finish training) fold `fold` in `folder`; return its done.json document."""
    folder = Path(folder)
    main = accelerator.is_main_process
    run = _start_fold(fold, config, data, folder, log, accelerator)
    steps_per_epoch = len(run.batches)
    bar = progress_bar(total=config.epochs * steps_per_epoch, initial=run.state["epochs_done"] * steps_per_epoch,
                       unit="step", desc=f"fold {fold + 1}/{total_folds}", disable=not (config.progress and main),
                       dynamic_ncols=True)
    for epoch in range(run.state["epochs_done"], config.epochs):
        if config.patience and run.state["stale_epochs"] >= config.patience:
            break
        started = time.perf_counter()
        losses = _train_epoch(run, epoch, fold, config, data, accelerator, bar)
        scores, improved = _validate(run, config, data)
        if main:
            _save_epoch(run, fold, folder, log, losses, scores, improved, time.perf_counter() - started)
        accelerator.log(tracked_values(fold, losses, scores, float(run.scheduler.get_last_lr()[0])), step=epoch + 1)
        bar.set_postfix(epoch=f"{epoch + 1}/{config.epochs}", val_auroc=scores["auroc"], best=run.state["best_epoch"])
    bar.close()
    accelerator.wait_for_everyone()
    done = {"fold": fold, "best_epoch": run.state["best_epoch"], "best_monitor": run.state["best_monitor"],
            "epochs_run": run.state["epochs_done"], "stopped_early": run.state["epochs_done"] < config.epochs}
    if main:
        done = _finish_fold(fold, config, data, folder, log, run.state, device_name(accelerator.device))
    accelerator.free_memory()
    return done


def read_done(folder: Path) -> dict | None:
    """A finished fold's done.json document, or None while the fold is unfinished."""
    path = Path(folder) / DONE_FILE
    if not path.is_file():
        return None
    return json.loads(path.read_text())

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
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from noduleclip.atomic import write_text
from noduleclip.evaluate.metrics import classification_metrics
from noduleclip.model import NoduleClipLoss, NoduleClipModel, create_model, load_model, save_model
from noduleclip.train.config import TrainConfig
from noduleclip.train.dataset import SEED_DROPOUT, SEED_INIT, EpochBatches, NoduleDataset, derive_seed
from noduleclip.train.resume import RunLog, load_resume_state, remove_partial_writes, save_resume_state

DONE_FILE = "done.json"


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


def predict_risk(model: NoduleClipModel, views: torch.Tensor, batch_size: int = 32, prefixed: bool = False) -> np.ndarray:
    """Image-head malignancy probabilities (N,) as float64 numpy, in eval mode without gradients.

    `prefixed`: `views` holds the views' image prefix (the frozen blocks' output) instead of the views.
    """
    inputs = dict(views=None, prefix=views) if prefixed else dict(views=views)
    return model.predict_risk(batch_size=batch_size, **inputs).detach().cpu().double().numpy()


def validation_scores(labels: np.ndarray, risk: np.ndarray) -> dict:
    """AUROC, AUPRC and the image head's cross-entropy on the labelled validation nodules (None when undefined)."""
    known = ~np.isnan(labels)
    scores = {"n": int(known.sum()), "auroc": None, "auprc": None, "loss": None}
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


def _gather_batch(accelerator, output, labels, sizes):
    """The whole batch's embeddings, logits (with gradients), labels and size targets, when several processes share it."""
    if accelerator.num_processes == 1:
        return output, labels, sizes
    from torch.distributed.nn.functional import all_gather

    def cat(tensor):
        return None if tensor is None else torch.cat(all_gather(tensor.contiguous()), dim=0)

    gathered = dataclasses.replace(output, image_embeds=cat(output.image_embeds), image_logits=cat(output.image_logits),
                                   text_embeds=cat(output.text_embeds), text_logits=cat(output.text_logits),
                                   log_diameter=cat(output.log_diameter))
    return gathered, accelerator.gather(labels), accelerator.gather(sizes)


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


def train_fold(fold: int, config: TrainConfig, data: FoldData, folder: Path, log: RunLog, accelerator,
               total_folds: int) -> dict:
    """Train (or finish training) fold `fold` in `folder`; return its done.json document."""
    folder = Path(folder)
    main = accelerator.is_main_process
    model = build_fold_model(config, fold)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=config.lr, weight_decay=config.weight_decay)
    batches = EpochBatches(len(data.train), config.batch_size, config.seed, fold, data.train_weights,
                           processes=accelerator.num_processes)
    steps_per_epoch = len(batches)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _schedule(config.schedule, config.epochs * steps_per_epoch))
    state = load_resume_state(folder / "resume", model, optimizer, scheduler) or {
        "epochs_done": 0, "best_epoch": 0, "best_monitor": None, "stale_epochs": 0}
    if main:
        remove_partial_writes(folder)
        log.rewind(fold, state["epochs_done"])
    # the items are slices of tensors in memory; workers only pay off when views are not precomputed
    loader = DataLoader(data.train, batch_sampler=batches, num_workers=0 if data.prefixed else config.workers or 0)
    model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
    network = accelerator.unwrap_model(model)
    with_text = network.text is not None
    loss_fn = NoduleClipLoss(size_weight=config.size_weight)
    bar = tqdm(total=config.epochs * steps_per_epoch, initial=state["epochs_done"] * steps_per_epoch, unit="step",
               desc=f"fold {fold + 1}/{total_folds}", disable=not (config.progress and main), dynamic_ncols=True)
    for epoch in range(state["epochs_done"], config.epochs):
        if config.patience and state["stale_epochs"] >= config.patience:
            break
        started = time.perf_counter()
        torch.manual_seed(derive_seed(config.seed, SEED_DROPOUT, fold, epoch))
        loader.set_epoch(epoch)  # accelerate's loader passes its own epoch count on to the sampler: keep them equal
        batches.set_epoch(epoch)
        data.train.set_epoch(epoch)
        model.train()
        sums, count = {}, 0
        for batch in loader:
            tokens = network.tokenize(batch["text"]) if with_text else None
            with accelerator.autocast(), _training_attention(accelerator):
                images = dict(views=None, prefix=batch["views"]) if data.prefixed else dict(views=batch["views"])
                output = model(text=tokens, **images)
            output, labels, sizes = _gather_batch(accelerator, output, batch["label"], batch["log_diameter"])
            loss = loss_fn(output, labels, sizes)
            accelerator.backward(loss.total)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            for name, value in loss.as_floats().items():
                sums[name] = sums.get(name, 0.0) + value
            count += 1
            bar.update(1)
            bar.set_postfix(epoch=f"{epoch + 1}/{config.epochs}", loss=f"{loss.total.item():.3f}")
        risk = predict_risk(network, data.val_views, config.eval_batch_size, data.prefixed)
        scores = validation_scores(data.val_labels, risk)
        monitor = monitored(scores)
        improved = state["best_epoch"] == 0 or (monitor is not None and (state["best_monitor"] is None
                                                                        or monitor > state["best_monitor"]))
        if improved:
            state.update(best_epoch=epoch + 1, best_monitor=monitor, stale_epochs=0)
        else:
            state["stale_epochs"] += 1
        state["epochs_done"] = epoch + 1
        if main:
            if improved:
                save_model(network, folder / "best")
            save_model(network, folder / "last")
            log.append({"event": "epoch", "fold": fold, "epoch": epoch + 1, "train": {k: v / max(count, 1)
                        for k, v in sums.items()}, "val": scores, "best": improved, "lr": scheduler.get_last_lr()[0],
                        "logit_scale": float(network.scale().detach()) if with_text else None,
                        "seconds": round(time.perf_counter() - started, 3)})
            save_resume_state(folder / "resume", network, optimizer, scheduler, state)
        bar.set_postfix(epoch=f"{epoch + 1}/{config.epochs}", val_auroc=scores["auroc"], best=state["best_epoch"])
    bar.close()
    accelerator.wait_for_everyone()
    done = {"fold": fold, "best_epoch": state["best_epoch"], "best_monitor": state["best_monitor"],
            "epochs_run": state["epochs_done"], "stopped_early": state["epochs_done"] < config.epochs}
    if main:
        best = load_model(folder / "best", device=device_name(accelerator.device))
        done["val"] = {"nodule_id": data.val_ids,
                       "probability": predict_risk(best, data.val_views, config.eval_batch_size, data.prefixed).tolist()}
        log.append({"event": "fold_end", **{k: v for k, v in done.items() if k != "val"}})  # rewound if cut here
        write_text(folder / DONE_FILE, json.dumps(done) + "\n")
    accelerator.free_memory()
    return done


def read_done(folder: Path) -> dict | None:
    """A finished fold's done.json document, or None while the fold is unfinished."""
    path = Path(folder) / DONE_FILE
    if not path.is_file():
        return None
    return json.loads(path.read_text())

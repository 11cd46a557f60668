"""The training configuration: one dataclass whose fields carry their own help text.

`noduleclip train` builds its options from these fields, and a run folder stores the whole
configuration in config.json. Re-running on an existing run folder must use the same settings:
`differences` lists the ones that changed (settings that cannot change the result, such as the
number of data-loading workers, are left out of that comparison).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
import yaml  # type: ignore[import-untyped]  # PyYAML, which accelerate requires; no stubs installed

from noduleclip.errors import InputError
from noduleclip.model import DEFAULT_BACKBONE, TUNING_MODES, LoraSettings
from noduleclip.model.backbones import config_from_dict
from noduleclip.model.checkpoint import check_safetensors_weights
from noduleclip.preprocess.views import MAX_SMOOTH_MM, ViewConfig
from noduleclip.run_folder import RUN_FORMAT, RUN_FORMAT_VERSION
from noduleclip.semantics.schema import head_features

SAMPLERS = ("semantic", "class", "none")
SCHEDULES = ("constant", "cosine")
MIXED_PRECISION = ("no", "bf16", "fp16")
TRACKERS = ("none", "tensorboard", "mlflow", "wandb")  # accelerate's experiment trackers that `--log-with` names
# Settings that change how fast a run goes or where it keeps things, never its numbers.
RESULT_NEUTRAL = frozenset({"workers", "cache", "threads", "progress", "eval_batch_size", "log_with"})
LORA_SETTINGS = frozenset({"lora_rank", "lora_alpha", "lora_dropout", "lora_image_blocks", "lora_text_blocks"})


def native_bf16(cpuinfo: str | None = None) -> bool:
    """Whether this machine computes bfloat16 natively: a CUDA GPU that supports it, or a CPU with AVX512-BF16 or AMX.

    There autocast to bf16 makes a training step about 1.4x faster (benchmarks/mixed_precision.py); elsewhere
    the CPU emulates bf16 and is slower than float32. `cpuinfo`: the text of /proc/cpuinfo (read when None).
    """
    if cpuinfo is None:
        if torch.cuda.is_available():
            return torch.cuda.is_bf16_supported()
        try:
            with open("/proc/cpuinfo") as handle:
                cpuinfo = handle.read()
        except OSError:
            return False
    flags = next((line.split(":", 1)[-1].split() for line in cpuinfo.splitlines() if line.startswith("flags")), [])
    return "avx512_bf16" in flags or "amx_bf16" in flags


def _option(default: Any, help: str, **extra) -> Any:
    """A dataclass field whose metadata holds the command-line help (and optional choices/type)."""
    return field(default=default, metadata={"help": help, **extra})


@dataclass
class TrainConfig:
    """Everything that decides a training run (the paper's settings by default)."""

    # model
    backbone: str = _option(DEFAULT_BACKBONE, "backbone from the registry (dinov2-s+minilm works offline)")
    tuning: str = _option("lora", "what trains: LoRA adapters, a linear probe, all weights, or LoRA without text",
                          choices=TUNING_MODES)
    weights: str | None = _option(None, "tower weights file or folder (default: the backbone's own source)", type=str)
    random_init: bool = _option(False, "random tower weights: for tests and timing only, never for results")
    image_size: int | None = _option(None, "encoder input size in pixels (default: the backbone's)", type=int)
    lora_rank: int = _option(LoraSettings.rank, "LoRA rank")
    lora_alpha: float = _option(LoraSettings.alpha, "LoRA scale alpha")
    lora_dropout: float = _option(LoraSettings.dropout, "dropout before each LoRA adapter")
    lora_image_blocks: int | None = _option(
        None, "LoRA in the image tower's last N blocks only, the frozen blocks below computed once per nodule: "
        "a CPU speed-up (default: every block, as the paper)", type=int)
    lora_text_blocks: int | None = _option(
        None, "LoRA in the text tower's last N blocks only: the backward pass stops there, a CPU speed-up (default: "
        "every block, as the paper)", type=int)
    projection_dropout: float = _option(0.1, "dropout in the projection heads")
    field_of_view: int | None = _option(
        None, "zoom: only the central N x N mm of each 50 mm view go to the encoder (default: the whole view)",
        type=int)
    size_weight: float = _option(0.0, "weight of an auxiliary loss that regresses each nodule's log-diameter (the "
                                 "manifest's diameter) from the image embedding, so that it carries size (0: off)")
    semantic_weight: float = _option(0.0, "weight of auxiliary classifiers that predict each categorical semantic "
                                     "feature (margins, consistency, ...) from the image embedding, beside the "
                                     "contrastive loss (0: off); nodules without a feature are left out of its loss")
    consistency_weight: float = _option(
        0.0, "weight of a consistency loss: each training step also reads a second version of every nodule (another "
        "re-rendered copy or other turns of its planes) and penalises the difference of the two malignancy log-odds "
        "and embeddings, so that the risk does not follow the scanner (0: off; needs acquisition or image "
        "augmentation)")
    # protocol
    folds: int = _option(5, "cross-validation folds (patient-level, stratified by label)")
    test_fraction: float = _option(0.2, "fraction of patients held out as the test set (0: none)")
    seed: int = _option(0, "seed of the splits, initialisation, sampling, dropout and text augmentation")
    # optimisation
    epochs: int = _option(100, "maximum epochs per fold (the authors' code: 100)")
    batch_size: int = _option(4, "nodules per training step, over all processes (the authors' code: 4)")
    lr: float = _option(1e-4, "AdamW learning rate")
    weight_decay: float = _option(0.1, "AdamW weight decay")
    schedule: str = _option("constant", "learning-rate schedule over the training steps", choices=SCHEDULES)
    patience: int = _option(5, "stop a fold after this many epochs without a better validation AUROC (0: never)")
    sampler: str = _option("semantic", "training sampler: rare semantic features, balanced classes, or plain shuffling",
                           choices=SAMPLERS)
    text_augmentation: bool = _option(True, "vary the wording of the training texts every epoch")
    image_augmentation: bool = _option(False, "turn and mirror each training view at random (the eight symmetries "
                                       "of a square), as the authors' random flips")
    acquisition_augmentation: bool = _option(False, "train on copies of each nodule re-rendered as other scanners "
                                             "would (random slice thickness, kernel and noise; augment-variants - 1 "
                                             "copies, cut once and held in memory)")
    augment_variants: int = _option(4, "with acquisition augmentation, or frozen bottom image blocks and image "
                                    "augmentation: versions of each nodule computed once and held in memory (the "
                                    "first is the nodule as it is); each epoch reads one of them")
    mixed_precision: str = _option("no", "autocast precision (fp16 needs a CUDA GPU; bf16 runs on GPUs and recent "
                                   "CPUs)", choices=MIXED_PRECISION)
    # evaluation
    bootstrap: int = _option(1000, "bootstrap resamples for the 95% confidence intervals (0: none)")
    # speed and housekeeping (do not change the result)
    workers: int | None = _option(None, "data-loading workers and preprocessing processes (default: 0 and up to 4)",
                                  type=int)
    cache: str | None = _option(None, "view cache folder (default: RUN/cache)", type=str)
    threads: int | None = _option(None, "CPU threads per process (default: the cores over the local processes)",
                                  type=int)
    eval_batch_size: int = _option(32, "nodules per inference batch")
    progress: bool = _option(True, "show progress bars")
    log_with: str = _option("none", "experiment tracker (accelerate's) that gets each epoch's training losses and "
                            "validation scores; TensorBoard writes into RUN/tracking", choices=TRACKERS)
    views: ViewConfig = field(default_factory=ViewConfig, metadata={"help": "how the nine views are cut"})

    def validate(self) -> TrainConfig:
        """Raise InputError for a setting that cannot work; return self."""
        checks = [
            (self.tuning in TUNING_MODES, f"tuning {self.tuning!r} is not one of {', '.join(TUNING_MODES)}"),
            (self.sampler in SAMPLERS, f"sampler {self.sampler!r} is not one of {', '.join(SAMPLERS)}"),
            (self.schedule in SCHEDULES, f"schedule {self.schedule!r} is not one of {', '.join(SCHEDULES)}"),
            (self.mixed_precision in MIXED_PRECISION,
             f"mixed precision {self.mixed_precision!r} is not one of {', '.join(MIXED_PRECISION)}"),
            (self.log_with in TRACKERS, f"log with {self.log_with!r} is not one of {', '.join(TRACKERS)}"),
            (self.views.size >= 1 and self.views.spacing_mm > 0,
             f"views of {self.views.size} samples at {self.views.spacing_mm} mm: both must be positive"),
            (self.views.hu_max > self.views.hu_min,
             f"the views' HU window [{self.views.hu_min}, {self.views.hu_max}] is empty: hu_max must be above hu_min"),
            (0 <= self.views.smooth_mm <= MAX_SMOOTH_MM,
             f"the views' blur of {self.views.smooth_mm} mm is not between 0 and {MAX_SMOOTH_MM:g} mm"),
            (self.seed >= 0, f"seed {self.seed} must not be negative"),
            (self.folds >= 2, f"folds={self.folds}: cross-validation needs at least 2 folds"),
            (0 <= self.test_fraction < 1, f"test fraction {self.test_fraction} is not in [0, 1)"),
            (self.epochs >= 1, f"epochs={self.epochs}: train for at least 1 epoch"),
            (self.batch_size >= 2, f"batch size {self.batch_size}: the contrastive loss needs at least 2 nodules"),
            (self.lr > 0, f"learning rate {self.lr} must be positive"),
            (self.weight_decay >= 0, f"weight decay {self.weight_decay} must not be negative"),
            (self.patience >= 0, f"patience {self.patience} must not be negative"),
            (self.bootstrap >= 0, f"bootstrap {self.bootstrap} must not be negative"),
            (self.size_weight >= 0, f"size weight {self.size_weight} must not be negative"),
            (self.semantic_weight >= 0, f"semantic weight {self.semantic_weight} must not be negative"),
            (self.consistency_weight >= 0, f"consistency weight {self.consistency_weight} must not be negative"),
            (self.consistency_weight == 0 or self.acquisition_augmentation or self.image_augmentation,
             "a consistency loss compares two versions of each nodule: turn on --acquisition-augmentation or "
             "--image-augmentation"),
            (self.consistency_weight == 0 or self.augment_variants >= 2 or not self.acquisition_augmentation,
             "a consistency loss between re-rendered copies needs at least 2 augment variants"),
            (self.field_of_view is None or 8 <= self.field_of_view <= self.views.size,
             f"field of view {self.field_of_view} must be between 8 and the views' {self.views.size} pixels"),
            (self.eval_batch_size >= 1, f"eval batch size {self.eval_batch_size} must be at least 1"),
            (self.augment_variants >= 1, f"augment variants {self.augment_variants} must be at least 1"),
            (self.augment_variants >= 2 or not self.acquisition_augmentation,
             f"acquisition augmentation needs at least 2 augment variants (the nodule as it is and a re-rendered "
             f"copy), not {self.augment_variants}"),
            (self.lora_rank >= 1, f"LoRA rank {self.lora_rank} must be at least 1"),
            (self.lora_image_blocks is None or self.lora_image_blocks >= 1,
             f"LoRA image blocks {self.lora_image_blocks} must be at least 1"),
            (self.lora_text_blocks is None or self.lora_text_blocks >= 1,
             f"LoRA text blocks {self.lora_text_blocks} must be at least 1"),
            (0 <= self.lora_dropout < 1 and 0 <= self.projection_dropout < 1, "dropout rates must be in [0, 1)"),
            (self.workers is None or self.workers >= 0, f"workers={self.workers} must not be negative"),
            (self.threads is None or self.threads >= 1, f"threads={self.threads} must be at least 1"),
        ]
        for ok, message in checks:
            if not ok:
                raise InputError(f"{message}; fix the training option")
        if self.weights is not None:
            check_safetensors_weights(self.weights, "--weights")
        return self

    def semantic_heads(self) -> tuple[str, ...]:
        """The features that get a semantic head: every categorical and binary one when the weight is not 0."""
        return tuple(f.name for f in head_features()) if self.semantic_weight > 0 else ()

    def model_settings(self) -> dict:
        """Keyword arguments of `create_model` for this configuration."""
        return dict(
            name=self.backbone, tuning=self.tuning, image_size=self.image_size, weights=self.weights,
            random_init=self.random_init, projection_dropout=self.projection_dropout,
            field_of_view=self.field_of_view, size_head=self.size_weight > 0,
            semantic_heads=self.semantic_heads(),
            lora=LoraSettings(rank=self.lora_rank, alpha=self.lora_alpha, dropout=self.lora_dropout,
                              image_blocks=self.lora_image_blocks, text_blocks=self.lora_text_blocks),
        )

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping, where: str = "the run's training configuration",
                  remedy: str = "train the run again, or use the noduleclip version that wrote it") -> TrainConfig:
        """Rebuild a configuration from `to_dict` output (e.g. a run's config.json), refusing unknown keys, values
        of the wrong type, an unknown backbone and settings that cannot work in one sentence naming `where`."""
        config = config_from_dict(cls, data, where, remedy)
        try:
            return config.validate()
        except InputError as error:
            raise InputError(f"{where} has a setting that cannot work ({str(error).rsplit('; ', 1)[0]}); "
                             f"{remedy}") from None

    def differences(self, other: TrainConfig) -> list[str]:
        """'name: this -> other' for each result-changing setting that differs.

        A probe has no adapters: between two probes the LoRA settings change nothing and are left out."""
        mine, theirs = self.to_dict(), other.to_dict()
        neutral = RESULT_NEUTRAL | (LORA_SETTINGS if self.tuning == other.tuning == "probe" else frozenset())
        return [f"{name}: {mine[name]!r} -> {theirs[name]!r}" for name in mine
                if name not in neutral and mine[name] != theirs[name]]


FILE_REMEDY = "fix the file (its keys are `noduleclip train --print-config`'s)"


class _SettingsLoader(yaml.SafeLoader):
    """PyYAML's safe loader, reading `1e-4` as a number (YAML 1.1 wants `1.0e-4`; JSON and people write `1e-4`)."""


_SettingsLoader.yaml_implicit_resolvers = {k: list(v) for k, v in yaml.SafeLoader.yaml_implicit_resolvers.items()}
_SettingsLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?|[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)"
               r"|\.[0-9_]+(?:[eE][-+]?[0-9]+)?|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"),
    list("-+0123456789."))


RECIPES = {path.stem: path for path in sorted((Path(__file__).parent / "recipes").glob("*.yaml"))}
"""Settings files that ship with noduleclip, by name (`train --config real-ct`): `real-ct` holds what cross-validation
on real CT chose."""


def recipe(name: str) -> TrainConfig:
    """The TrainConfig of a recipe that ships with noduleclip (`RECIPES`), validated."""
    if name not in RECIPES:
        raise InputError(f"there is no recipe {name!r}; the recipes are {', '.join(RECIPES)}")
    config, where = read_settings_file(RECIPES[name])
    return with_overrides(config, where)


def read_settings_file(path: str | os.PathLike) -> tuple[TrainConfig, str]:
    """The training settings of a YAML or JSON file, and how messages name it; not yet validated (`with_overrides`
    does that, once the command line's settings are on top).

    The file holds TrainConfig's names (`--print-config`'s output; any of them may be left out for its default), or
    is a run's config.json (its `train` settings), or names a run folder (its config.json). Unknown keys and values
    of the wrong type are refused as in a run's config.json (`config_from_dict`), in one sentence naming the key and
    the file."""
    path = Path(path)
    if path.is_dir():
        path = path / "config.json"
    name = str(path)
    if not path.is_file() and name in RECIPES:
        path = RECIPES[name]
    if not path.is_file():
        raise InputError(f"config file {path} does not exist; give a YAML or JSON file of training settings, a run's "
                         f"config.json, a run folder or a recipe ({', '.join(RECIPES)})")
    try:
        text = path.read_text()
    except UnicodeDecodeError:
        raise InputError(f"config file {path} is not a text file; give a YAML or JSON file of training "
                         "settings") from None
    try:
        data = json.loads(text) if path.suffix.lower() == ".json" else yaml.load(text, Loader=_SettingsLoader)
    except json.JSONDecodeError as error:
        raise InputError(f"config file {path} is not valid JSON ({error.msg} at line {error.lineno}); "
                         "fix the file") from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark is not None else ""
        raise InputError(f"config file {path} is not valid YAML ({getattr(error, 'problem', None) or error}{at}); "
                         "fix the file") from None
    data = {} if data is None else data
    if not isinstance(data, dict):
        raise InputError(f"config file {path} holds a {type(data).__name__}, not a mapping of training settings "
                         "(name: value); fix the file")
    where = f"recipe {name} ({path})" if path == RECIPES.get(name) else f"config file {path}"
    if "format" in data:  # a run's config.json: its training settings, if the format is one this version reads
        if data.get("format") != RUN_FORMAT or data.get("format_version") != RUN_FORMAT_VERSION:
            raise InputError(f"config file {path} is a {data.get('format')!r} document of format version "
                             f"{data.get('format_version')!r}, not a {RUN_FORMAT!r} version {RUN_FORMAT_VERSION} run "
                             "configuration nor a mapping of training settings; give one of those")
        if not isinstance(data.get("train"), dict):
            raise InputError(f"config file {path} has no object under the key 'train' (the run's training settings); "
                             "give a run's config.json or a mapping of training settings")
        data, where = data["train"], f"config file {path} (its 'train' settings)"
    return config_from_dict(TrainConfig, data, where, FILE_REMEDY), where


def with_overrides(config: TrainConfig, where: str, **changes: Any) -> TrainConfig:
    """`config` (read from the file `where` names) with `changes` (settings given on the command line) on top,
    validated. A setting that cannot work is reported naming the file when the file alone has it."""
    merged = dataclasses.replace(config, **changes)
    try:
        return merged.validate()
    except InputError:
        try:
            config.validate()
        except InputError as error:
            raise InputError(f"{where} has a setting that cannot work ({str(error).rsplit('; ', 1)[0]}); fix it in "
                             "the file or give that option on the command line") from None
        raise


def settings_yaml(config: TrainConfig) -> str:
    """`config` as YAML that `read_settings_file` reads back to the same configuration (`--print-config`)."""
    plain = json.loads(json.dumps(config.to_dict()))  # tuples as lists: safe_dump writes only plain types
    return yaml.safe_dump(plain, sort_keys=False, default_flow_style=False)


def cli_fields() -> list:
    """The dataclass fields that become `--options` of `noduleclip train` (view settings come separately)."""
    return [f for f in fields(TrainConfig) if f.name != "views"]

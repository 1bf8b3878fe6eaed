"""Model zoo: the lab VGG8, CIFAR ResNet-20/56, and any torchvision classifier by name.

The CIFAR models reproduce exactly the state-dict keys of the shared checkpoints
(``../shared/models/README.md``). ``load_checkpoint`` reads weights without pickle
(``weights_only=True`` or safetensors) and turns every failure into one ``CheckpointError``.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import zipfile
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from amc.errors import CheckpointError

VGG8_CFG: tuple[int | str, ...] = (64, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M")


class VGG(nn.Module):
    """The seed lab's VGG: conv3x3-BN-ReLU blocks with max pools, global mean, one Linear."""

    def __init__(self, cfg: tuple[int | str, ...] = VGG8_CFG, num_classes: int = 10, in_channels: int = 3):
        super().__init__()
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        c_in, k, j = in_channels, 0, 0
        for v in cfg:
            if v == "M":
                layers[f"pool{j}"] = nn.MaxPool2d(2)
                j += 1
            else:
                assert isinstance(v, int)
                layers[f"conv{k}"] = nn.Conv2d(c_in, v, 3, padding=1, bias=False)
                layers[f"bn{k}"] = nn.BatchNorm2d(v)
                layers[f"relu{k}"] = nn.ReLU(inplace=True)
                c_in, k = v, k + 1
        self.backbone = nn.Sequential(layers)
        self.classifier = nn.Linear(c_in, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.backbone(x).mean([2, 3]))


class BasicBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.relu = nn.ReLU(inplace=True)
        self.downsample: nn.Module | None = None
        if stride != 1 or c_in != c_out:
            self.downsample = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False),
                                            nn.BatchNorm2d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        shortcut = x if self.downsample is None else self.downsample(x)
        return self.relu(out + shortcut)


class CifarResNet(nn.Module):
    """ResNet-(6n+2) for 32x32 inputs, widths 16/32/64."""

    def __init__(self, depth: int = 20, num_classes: int = 10, widths: tuple[int, int, int] = (16, 32, 64)):
        super().__init__()
        if (depth - 2) % 6:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2, got {depth}")
        n = (depth - 2) // 6
        self.conv1 = nn.Conv2d(3, widths[0], 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        c_in = widths[0]
        stages = []
        for i, w in enumerate(widths):
            blocks = []
            for b in range(n):
                blocks.append(BasicBlock(c_in, w, stride=2 if (i > 0 and b == 0) else 1))
                c_in = w
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.fc = nn.Linear(c_in, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(x.mean([2, 3]))


MODELS: dict[str, Callable[..., nn.Module]] = {
    "vgg8": lambda num_classes=10: VGG(VGG8_CFG, num_classes),
    "resnet20": lambda num_classes=10: CifarResNet(20, num_classes),
    "resnet56": lambda num_classes=10: CifarResNet(56, num_classes),
}


def build_model(name: str, num_classes: int = 10) -> nn.Module:
    """A model by name: the CIFAR zoo above, else any torchvision classification model."""
    if name in MODELS:
        return MODELS[name](num_classes=num_classes)
    import torchvision

    try:
        return torchvision.models.get_model(name, weights=None, num_classes=num_classes)
    except ValueError:
        known = [*sorted(MODELS), "<any torchvision classification model>"]
        raise CheckpointError(f"unknown model {name!r}; known: {', '.join(known)}") from None


def guess_model_name(path: str | os.PathLike) -> str | None:
    """``vgg8_dense.pt`` -> ``vgg8``: the zoo name a checkpoint's file name starts with, if any."""
    stem = Path(path).name.lower()
    for name in sorted(MODELS, key=len, reverse=True):
        if stem.startswith(name):
            return name
    return None


def file_sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _verify_zip_crc(path: Path) -> None:
    """torch.load does not check the zip's CRC32s, so a flipped bit in tensor data loads silently."""
    try:
        with zipfile.ZipFile(path) as z:
            bad = z.testzip()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as e:
        raise CheckpointError(f"cannot read checkpoint {path}: corrupt, truncated or not a weights file "
                              f"({e})") from None
    if bad is not None:
        raise CheckpointError(f"checkpoint {path} is corrupt: CRC check failed for record {bad!r} (damaged copy?)")


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a state dict (``.pt`` via ``weights_only=True``, or ``.safetensors``); floats to fp32."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint not found: {path}")
    if path.is_dir():
        raise CheckpointError(f"checkpoint path is a directory: {path}")
    if zipfile.is_zipfile(path):
        _verify_zip_crc(path)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            sd = load_file(str(path))
        else:
            sd = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, zipfile.BadZipFile, RuntimeError, EOFError, OSError, ValueError,
            KeyError, AttributeError, TypeError, IndexError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(
            f"cannot read checkpoint {path}: corrupt, truncated or not a weights file ({first[:160]})"
        ) from None
    if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise CheckpointError(f"checkpoint {path} does not hold a state dict of tensors")
    return {k: (v.float() if v.is_floating_point() else v) for k, v in sd.items()}


def load_state_dict_checked(model: nn.Module, sd: dict[str, torch.Tensor], where: str = "checkpoint") -> None:
    """Load strictly, turning missing/unexpected keys and shape mismatches into one clear error."""
    own = model.state_dict()
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    shapes = [f"{k} {tuple(sd[k].shape)} vs model {tuple(own[k].shape)}"
              for k in own if k in sd and sd[k].shape != own[k].shape]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing keys (e.g. {', '.join(missing[:3])})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys (e.g. {', '.join(unexpected[:3])})")
        if shapes:
            parts.append(f"{len(shapes)} shape mismatches (e.g. {shapes[0]})")
        raise CheckpointError(
            f"{where} does not fit model {type(model).__name__}: " + "; ".join(parts)
            + " — is it a checkpoint of another architecture?"
        )
    model.load_state_dict(sd, strict=True)


def load_checkpoint(model: nn.Module, path: str | os.PathLike) -> nn.Module:
    load_state_dict_checked(model, read_state_dict(path), where=f"checkpoint {path}")
    return model


def resolve_arch(name: str | None, checkpoint: str | os.PathLike | None) -> str:
    """``name``, or the zoo name guessed from the checkpoint's file name; a clear error if neither."""
    if name is not None:
        return name
    if checkpoint is None:
        raise CheckpointError("give a model name or a checkpoint")
    guessed = guess_model_name(checkpoint)
    if guessed is None:
        raise CheckpointError(f"cannot tell the architecture of {checkpoint}; pass --model NAME")
    return guessed


def load_model(name: str | None, checkpoint: str | os.PathLike | None, num_classes: int = 10) -> nn.Module:
    """Build ``name`` (guessed from the checkpoint's file name if None) and load the checkpoint."""
    model = build_model(resolve_arch(name, checkpoint), num_classes)
    if checkpoint is not None:
        load_checkpoint(model, checkpoint)
    return model.eval()

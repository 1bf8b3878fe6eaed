"""The CIFAR zoo: the lab VGG8 and CIFAR ResNet-20/56, one model source among others.

The models reproduce exactly the state-dict keys of the shared checkpoints
(``../shared/models/README.md``).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

import torch
from torch import nn

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

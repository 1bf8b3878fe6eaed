"""A tiny model the service tests name by reference (``tests.service_models:tiny_resnet``), so that
server and worker subprocesses build it the way a user's ``package.module:factory`` is built."""

from __future__ import annotations

from torch import nn

from amc.models import CifarResNet

REF = "tests.service_models:tiny_resnet"


def tiny_resnet(num_classes: int = 10) -> nn.Module:
    return CifarResNet(8, widths=(8, 16, 16), num_classes=num_classes)

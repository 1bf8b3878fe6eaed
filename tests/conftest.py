"""Shared fixtures: tiny models (widths 8/16) and a small slice of the shared CIFAR-10."""

from __future__ import annotations

import struct
import zipfile
from pathlib import Path

import pytest
import torch

from amc.data import Cifar10, Splits, load_cifar10, make_splits, subset
from amc.models import VGG, CifarResNet

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
CIFAR = SHARED / "datasets" / "cifar10-jpeg.tar.xz"
MODELS = SHARED / "models"


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def cifar() -> Cifar10:
    if not CIFAR.exists():
        pytest.skip(f"shared data set not found at {CIFAR}")
    return load_cifar10(CIFAR)


@pytest.fixture(scope="session")
def tiny_cifar(cifar: Cifar10) -> Cifar10:
    """1,024 train and 512 test images."""
    return subset(cifar, train=1024, test=512)


@pytest.fixture(scope="session")
def tiny_splits(tiny_cifar: Cifar10) -> Splits:
    """768 train, 256 held-out, 512 test images on the CPU."""
    return make_splits(tiny_cifar, heldout=256)


def make_tiny_vgg() -> VGG:
    torch.manual_seed(0)
    return VGG((8, "M", 16, "M", 16, "M"), num_classes=10).eval()


def make_tiny_resnet() -> CifarResNet:
    torch.manual_seed(0)
    return CifarResNet(8, widths=(8, 16, 16)).eval()


@pytest.fixture
def tiny_vgg() -> VGG:
    return make_tiny_vgg()


@pytest.fixture
def tiny_resnet() -> CifarResNet:
    return make_tiny_resnet()


def flip_bit(path: Path, record_suffix: str, offset: int, bit: int = 0x10) -> None:
    """Flip ``bit`` ``offset`` bytes into the stored data of the zip record ending in ``record_suffix``
    of a ``torch.save`` checkpoint (torch.load itself would load flipped tensor bytes silently)."""
    with zipfile.ZipFile(path) as z:
        info = next(i for i in z.infolist() if i.filename.endswith(record_suffix))
    data = bytearray(path.read_bytes())
    name_len, extra_len = struct.unpack("<HH", data[info.header_offset + 26 : info.header_offset + 30])
    data[info.header_offset + 30 + name_len + extra_len + offset] ^= bit
    path.write_bytes(bytes(data))

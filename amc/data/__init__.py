"""Image-classification data: decoded once and cached, split three ways, delivered as device batches.

Sources: an ImageFolder directory (any classes, any image size, grayscale or RGB) with ``train/``
and ``test/`` (optionally ``val/``), a ``.tar[.gz|.xz]`` of one, a torchvision CIFAR-10 root, or
the user's own ``Dataset`` / ``DataLoader``.

Lifecycle: ``load_images(path) -> ImageSet`` (``load_cifar10`` for CIFAR-10's fixed class order)
-> ``make_splits(data, heldout=5000) -> Splits`` -> ``Splits.loader("train" | "heldout" | "test", ...)``
-> iterate ``(x, y)`` batches. ``stream_images`` (data too big for memory), ``splits_from_torch``
(the user's datasets) and ``open_data`` (picks in-memory or streaming) give other ``DataSource``
implementations with the same ``loader`` interface. On CUDA the in-memory set lives on the GPU and
augmentation runs there; on CPU the same loader slices CPU tensors.
"""

from amc.data.batches import Batches, DeviceBatches, Loader, crop_flip, crop_pad
from amc.data.images import (
    CLASSES,
    IMAGE_EXTS,
    MEAN,
    STD,
    Cifar10,
    ImageSet,
    cache_dir,
    channel_stats,
    load_cifar10,
    load_images,
    subset,
)
from amc.data.splits import DataSource, Splits, default_device, make_splits
from amc.data.streaming import STREAM_ABOVE, StreamingSplits, decoded_bytes, open_data, stream_images
from amc.data.torch_source import TorchSplits, splits_from_torch

__all__ = [
    "CLASSES", "IMAGE_EXTS", "MEAN", "STD", "STREAM_ABOVE", "Batches", "Cifar10", "DataSource", "DeviceBatches",
    "ImageSet", "Loader", "Splits", "StreamingSplits", "TorchSplits", "cache_dir", "channel_stats", "crop_flip",
    "crop_pad", "decoded_bytes", "default_device", "load_cifar10", "load_images", "make_splits", "open_data",
    "splits_from_torch", "stream_images", "subset",
]

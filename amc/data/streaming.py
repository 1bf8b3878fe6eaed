"""An ImageFolder read by DataLoader workers, for data too large to decode into memory.

``stream_images(path) -> StreamingSplits``: the same splits, order, shapes and normalisation as
``make_splits(load_images(path))`` (the same seed gives the same batches), but files are decoded
per batch by ``torch.utils.data.DataLoader`` workers. The image size, channel count and (unless
given) normalisation come from a seeded sample of up to ``PROBE_IMAGES`` train images.
``open_data(path)`` picks this path by itself above ``STREAM_ABOVE`` decoded bytes.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from amc.data.batches import PIXEL_SCALE, DeviceBatches, Permutation
from amc.data.images import (
    IMAGE_EXTS,
    Size,
    as_size,
    channel_stats,
    check_classes,
    common_shape,
    decode,
    fit,
    load_images,
    published_normalisation,
)
from amc.data.splits import HELDOUT, DataSource, carve_and_shuffle, check_split, loader_flags, make_splits
from amc.errors import DataError

STREAM_ABOVE = 2 * 2**30  # decoded bytes (uint8 pixels of every split) above which open_data streams
PROBE_IMAGES = 1000  # train images decoded up front: size, channels and normalisation (mean to ~1e-3)
SIZE_PROBE = 16  # images decoded to estimate the decoded size of a folder
DEFAULT_WORKERS = min(8, os.cpu_count() or 1)  # DataLoader worker processes (8: enough to feed a GPU)

Sample = tuple[str, int]  # (image file, label)


class ImageFiles(torch.utils.data.Dataset):
    """``(uint8 HWC tensor, label)`` items decoded from files and fitted to one size and channel count."""

    def __init__(self, samples: Sequence[Sample], size: Size, channels: int) -> None:
        self.samples, self.image_size, self.channels = list(samples), size, channels

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        path, label = self.samples[i]
        img = fit(decode(Path(path).read_bytes(), path), self.image_size, self.channels)
        return torch.from_numpy(np.require(img, requirements=["C", "W"])), label  # torch wants writable memory


def dataloader_batches(dataset: torch.utils.data.Dataset, n: int, batch_size: int, flags: tuple[bool, bool, bool],
                       seed: int, device: torch.device, mean: Sequence[float], std: Sequence[float],
                       scale: float, nhwc_uint8: bool, num_workers: int, collate_fn=None) -> DeviceBatches:
    """A ``DataLoader`` over ``dataset`` (``n`` items) wrapped to deliver normalised batches on
    ``device``; ``flags`` = (shuffle, augment, drop_last) from ``loader_flags``. One CPU generator
    seeded with ``seed`` draws the order and then the crops, as ``Loader`` does."""
    shuffle, augment, drop_last = flags
    generator = torch.Generator(device="cpu").manual_seed(seed)
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, sampler=Permutation(n, generator) if shuffle else None,
        drop_last=drop_last, num_workers=num_workers, collate_fn=collate_fn, pin_memory=device.type == "cuda")
    return DeviceBatches(loader, device, mean, std, scale, augment, generator, nhwc_uint8)


@dataclass(frozen=True)
class StreamingSplits:
    """Train / held-out / test as ordered lists of files, decoded per batch (see the module doc)."""

    samples: Mapping[str, tuple[Sample, ...]]  # "train" | "heldout" | "test" -> (file, label), in order
    classes: tuple[str, ...]
    image_size: Size
    channels: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    device: torch.device
    num_workers: int = DEFAULT_WORKERS

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return (self.channels, *self.image_size)

    def size(self, split: str) -> int:
        check_split(split)
        return len(self.samples[split])

    def loader(self, split: str, batch_size: int = 256, shuffle: bool | None = None,
               augment: bool | None = None, seed: int = 0, limit: int | None = None) -> DeviceBatches:
        """``train`` shuffles and augments by default; ``heldout`` and ``test`` do neither."""
        check_split(split)
        items = self.samples[split][:limit]
        flags = loader_flags(split, len(items), batch_size, shuffle, augment)
        return dataloader_batches(ImageFiles(items, self.image_size, self.channels), len(items), batch_size,
                                  flags, seed, self.device, self.mean, self.std, PIXEL_SCALE,
                                  nhwc_uint8=True, num_workers=self.num_workers)


def _scan(root: Path) -> list[tuple[str, str]]:
    """(file, class folder) of every image under ``root/<class>/``, as torchvision sorts them
    (class folders without images are left out, as ``load_images`` leaves them out)."""
    from torchvision.datasets import ImageFolder

    try:
        folder = ImageFolder(str(root), is_valid_file=lambda p: p.lower().endswith(IMAGE_EXTS), allow_empty=True)
    except (FileNotFoundError, OSError) as e:
        raise DataError(f"cannot read ImageFolder {root}: {e}") from None
    return [(f, folder.classes[label]) for f, label in folder.samples]


def _check_root(path: Path) -> None:
    if not (path / "train").is_dir() or not (path / "test").is_dir():
        raise DataError(f"streaming reads an ImageFolder directory with train/ and test/ (not {path}); "
                        "extract an archive first")


def stream_images(path: str | os.PathLike, heldout: int = HELDOUT, device: str | torch.device = "cpu",
                  seed: int = 0, image_size: int | Sequence[int] | None = None, channels: int | None = None,
                  val: str | os.PathLike | None = None, mean: Sequence[float] | None = None,
                  std: Sequence[float] | None = None, num_workers: int = DEFAULT_WORKERS) -> StreamingSplits:
    """Streaming splits of the ImageFolder at ``path`` (``train/``, ``test/``, optional ``val/``
    or ``val``); the arguments mean what they mean for ``load_images`` and ``make_splits``."""
    path = Path(path)
    _check_root(path)
    val_root = Path(val) if val is not None else (path / "val" if (path / "val").is_dir() else None)
    scans = {"train": _scan(path / "train"), "test": _scan(path / "test")}
    if val_root is not None:
        scans["val"] = _scan(val_root)
    classes = check_classes({s: {c for _, c in files} for s, files in scans.items()}, str(path))
    labelled = {s: [(f, classes.index(c)) for f, c in files] for s, files in scans.items()}
    train, test = labelled["train"], labelled["test"]
    rng = np.random.default_rng(seed)
    probe_idx = np.sort(rng.choice(len(train), PROBE_IMAGES, replace=False)) if len(train) > PROBE_IMAGES \
        else np.arange(len(train))
    probe = [decode(Path(train[i][0]).read_bytes(), train[i][0]) for i in probe_idx]
    size, chans = common_shape(probe, as_size(image_size), channels)
    norm = (tuple(mean), tuple(std)) if mean is not None and std is not None else \
        published_normalisation(classes, (chans, *size)) or \
        channel_stats(np.stack([fit(img, size, chans) for img in probe]))
    val_samples = labelled.get("val")
    tr, ho, te = carve_and_shuffle(len(train), len(test), None if val_samples is None else len(val_samples),
                                   heldout, seed)
    ho_from = train if val_samples is None else val_samples
    samples = {"train": tuple(train[i] for i in tr), "heldout": tuple(ho_from[i] for i in ho),
               "test": tuple(test[i] for i in te)}
    return StreamingSplits(samples, classes, size, chans, norm[0], norm[1], torch.device(device), num_workers)


def decoded_bytes(path: str | os.PathLike, image_size: int | Sequence[int] | None = None,
                  channels: int | None = None) -> int:
    """Estimated uint8 bytes of every image under ``path``'s splits once decoded (a few decoded)."""
    files = [os.path.join(d, f) for split in ("train", "val", "test")
             for d, _, names in os.walk(Path(path) / split) for f in sorted(names)
             if f.lower().endswith(IMAGE_EXTS)]
    if not files:
        return 0
    probe = [decode(Path(f).read_bytes(), f) for f in files[:SIZE_PROBE]]
    (h, w), c = common_shape(probe, as_size(image_size), channels)
    return len(files) * h * w * c


def open_data(path: str | os.PathLike, heldout: int = HELDOUT, device: str | torch.device = "cpu",
              seed: int = 0, image_size: int | Sequence[int] | None = None, channels: int | None = None,
              val: str | os.PathLike | None = None, streaming: bool | None = None,
              num_workers: int = DEFAULT_WORKERS) -> DataSource:
    """In-memory ``Splits`` or, for an ImageFolder above ``STREAM_ABOVE`` decoded bytes (or with
    ``streaming=True``), ``StreamingSplits``."""
    p = Path(path)
    if streaming is None:
        streaming = p.is_dir() and (p / "train").is_dir() and decoded_bytes(p, image_size, channels) > STREAM_ABOVE
    if streaming:
        return stream_images(p, heldout, device, seed, image_size, channels, val, num_workers=num_workers)
    return make_splits(load_images(p, image_size, channels, val), heldout, device, seed)

"""The three splits the pipeline uses, behind one small protocol (``DataSource``).

``train`` (finetuning; minus the held-out part), ``heldout`` (search rewards, BN recalibration,
sensitivity; a fixed seeded carve-out of train, or the validation set the user gave) and
``test`` (final numbers only; never used for choices). Implementations: ``Splits`` (uint8
tensors in memory, on the GPU when there is one), ``StreamingSplits`` (an ImageFolder read by
DataLoader workers) and ``TorchSplits`` (the user's own Dataset / DataLoader).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np
import torch

from amc.data.batches import Batches, Loader
from amc.data.images import CLASSES, MEAN, STD, ImageSet
from amc.errors import DataError

SPLIT_NAMES = ("train", "heldout", "test")
HELDOUT = 5000  # default held-out images carved out of train (CIFAR-10: a tenth)


@runtime_checkable
class DataSource(Protocol):
    """What the rest of the code may rely on about data.

    Lifecycle: build once (``make_splits``, ``stream_images``, ``splits_from_torch`` or
    ``open_data``) -> read ``num_classes`` / ``input_shape`` to check the model and build
    example inputs -> ``loader(split, ...)`` as often as needed (each call starts from ``seed``).
    """

    @property
    def classes(self) -> tuple[str, ...]: ...

    @property
    def num_classes(self) -> int: ...

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of one image as the model sees it."""
        ...

    @property
    def mean(self) -> tuple[float, ...]: ...

    @property
    def std(self) -> tuple[float, ...]: ...

    @property
    def device(self) -> torch.device:
        """Where the batches are delivered."""
        ...

    def size(self, split: str) -> int:
        """Images in ``split`` ("train", "heldout" or "test")."""
        ...

    def loader(self, split: str, batch_size: int = 256, shuffle: bool | None = None,
               augment: bool | None = None, seed: int = 0, limit: int | None = None) -> Batches:
        """``train`` shuffles and augments by default; ``heldout`` and ``test`` do neither.
        ``limit``: only the first ``limit`` images of the split (a fixed subset)."""
        ...


def check_split(split: str) -> None:
    if split not in SPLIT_NAMES:
        raise ValueError(f"unknown split {split!r}")


def loader_flags(split: str, n: int, batch_size: int, shuffle: bool | None,
                 augment: bool | None) -> tuple[bool, bool, bool]:
    """(shuffle, augment, drop_last): training shuffles, augments and drops a last partial batch
    (when there is more than one batch); the other splits do none of these."""
    check_split(split)
    is_train = split == "train"
    return (is_train if shuffle is None else shuffle, is_train if augment is None else augment,
            is_train and n > batch_size)


@dataclass(frozen=True)
class Splits:
    """Train (minus the held-out part), held-out and test as uint8 NHWC tensors on one device."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    heldout_x: torch.Tensor
    heldout_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    classes: tuple[str, ...] = CLASSES
    mean: tuple[float, ...] = MEAN
    std: tuple[float, ...] = STD

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        _, h, w, c = self.train_x.shape
        return int(c), int(h), int(w)

    @property
    def device(self) -> torch.device:
        return self.train_x.device

    def size(self, split: str) -> int:
        check_split(split)
        return len(getattr(self, f"{split}_y"))

    def loader(self, split: str, batch_size: int = 256, shuffle: bool | None = None,
               augment: bool | None = None, seed: int = 0, limit: int | None = None) -> Loader:
        """``train`` shuffles and augments by default; ``heldout`` and ``test`` do neither."""
        check_split(split)
        x, y = getattr(self, f"{split}_x"), getattr(self, f"{split}_y")
        if limit is not None:
            x, y = x[:limit], y[:limit]
        shuffle, augment, drop_last = loader_flags(split, len(y), batch_size, shuffle, augment)
        return Loader(x, y, batch_size, shuffle=shuffle, augment=augment, seed=seed, drop_last=drop_last,
                      mean=self.mean, std=self.std)


def carve(n: int, heldout: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(held-out indices, train indices): a permutation of ``range(n)`` from ``rng``, split in two."""
    if not 0 <= heldout < n:
        raise DataError(f"held-out size {heldout} must be in [0, {n})")
    perm = rng.permutation(n)
    return perm[:heldout], perm[heldout:]


def carve_and_shuffle(n_train: int, n_test: int, n_val: int | None, heldout: int, seed: int
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(train, held-out, test) orders shared by the in-memory and streaming splits: the held-out
    part is a seeded carve-out of train, or (``n_val`` given) the whole validation set, shuffled;
    the test order is shuffled too (folders are sorted by class: slices must mix classes)."""
    rng = np.random.default_rng(seed)
    if n_val is None:
        ho, tr = carve(n_train, heldout, rng)
        return tr, ho, rng.permutation(n_test)
    tr, te = rng.permutation(n_train), rng.permutation(n_test)
    return tr, rng.permutation(n_val), te


def make_splits(data: ImageSet, heldout: int = HELDOUT, device: str | torch.device = "cpu", seed: int = 0,
                mean: Sequence[float] | None = None, std: Sequence[float] | None = None) -> Splits:
    """Carve a deterministic held-out split out of train (the test set stays for final numbers);
    with a validation set (``data.val_x``) that set is the held-out split and ``heldout`` is unused.
    Normalisation: ``mean``/``std`` if given, else ``data.normalisation()``."""
    n_val = None if data.val_y is None else len(data.val_y)
    tr, ho, te = carve_and_shuffle(len(data.train_y), len(data.test_y), n_val, heldout, seed)
    ho_x, ho_y = (data.train_x, data.train_y) if data.val_x is None or data.val_y is None else (data.val_x, data.val_y)
    dev = torch.device(device)
    norm = data.normalisation() if mean is None or std is None else (tuple(mean), tuple(std))

    def t(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(a)).to(dev)

    return Splits(t(data.train_x[tr]), t(data.train_y[tr]), t(ho_x[ho]), t(ho_y[ho]),
                  t(data.test_x[te]), t(data.test_y[te]), classes=data.class_names, mean=norm[0], std=norm[1])


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")

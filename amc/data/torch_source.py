"""The user's own ``torch.utils.data.Dataset`` or ``DataLoader`` as the pipeline's data.

``splits_from_torch(train, val=None, test=None) -> TorchSplits``. Items are ``(image, label)``
with ``image`` a CHW tensor (already transformed by the user's dataset, in the user's units) and
``label`` an int. The held-out split is ``val`` when given, else a fixed seeded carve-out of
``train``; it never comes from ``test``. Batches are the user's tensors as they are, unless
``mean``/``std`` are given (then normalised with them); ``augment=True`` on a loader adds the
crop-and-flip of ``amc.data.batches`` on top of whatever the dataset does itself (the default
for these sources is no extra augmentation).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Subset, TensorDataset

from amc.data.batches import DeviceBatches
from amc.data.splits import HELDOUT, carve, check_split, default_device, loader_flags
from amc.data.streaming import dataloader_batches
from amc.errors import DataError

HELDOUT_FRACTION = 10  # without a validation set, hold out a tenth of train (at most HELDOUT images)


@dataclass(frozen=True)
class TorchSplits:
    """Train / held-out / test datasets of the user's, delivered as batches on ``device``."""

    datasets: Mapping[str, Dataset]  # "train", "heldout" and (when given) "test"
    classes: tuple[str, ...]
    input_shape: tuple[int, int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    device: torch.device
    num_workers: int = 0
    collate_fn: Callable | None = None

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def _dataset(self, split: str) -> Dataset:
        check_split(split)
        if split not in self.datasets:
            raise DataError(f"no {split} data given (pass {split}= to splits_from_torch)")
        return self.datasets[split]

    def size(self, split: str) -> int:
        check_split(split)
        return len(self.datasets[split]) if split in self.datasets else 0  # type: ignore[arg-type]

    def loader(self, split: str, batch_size: int = 256, shuffle: bool | None = None,
               augment: bool | None = None, seed: int = 0, limit: int | None = None) -> DeviceBatches:
        """``train`` shuffles by default; nothing is augmented unless ``augment=True``."""
        ds = self._dataset(split)
        n = len(ds)  # type: ignore[arg-type]
        if limit is not None and limit < n:
            ds, n = Subset(ds, range(limit)), limit
        flags = loader_flags(split, n, batch_size, shuffle, bool(augment))
        return dataloader_batches(ds, n, batch_size, flags, seed, self.device, self.mean, self.std, 1.0,
                                  nhwc_uint8=False, num_workers=self.num_workers, collate_fn=self.collate_fn)


def _unwrap(data: Dataset | DataLoader) -> tuple[Dataset, DataLoader | None]:
    if isinstance(data, DataLoader):
        return data.dataset, data
    if isinstance(data, torch.utils.data.IterableDataset) or not hasattr(data, "__len__"):
        raise DataError("splits_from_torch needs map-style datasets (with __len__ and __getitem__)")
    return data, None


def _labels(ds: Dataset) -> np.ndarray:
    """Every label of ``ds``: from a TensorDataset's tensors or ``targets`` when there, else read item by item."""
    if isinstance(ds, TensorDataset):
        return ds.tensors[1].cpu().numpy()
    if isinstance(ds, Subset):
        return _labels(ds.dataset)[np.asarray(ds.indices)]
    targets = getattr(ds, "targets", None)
    if targets is not None:
        return np.asarray(targets)
    return np.array([int(ds[i][1]) for i in range(len(ds))])  # type: ignore[arg-type]


def _class_names(ds: Dataset, num_classes: int | None, classes: Sequence[str] | None) -> tuple[str, ...]:
    if classes is not None:
        return tuple(classes)
    named = getattr(ds.dataset if isinstance(ds, Subset) else ds, "classes", None)
    if num_classes is None and named is not None:
        return tuple(str(c) for c in named)
    n = num_classes if num_classes is not None else int(_labels(ds).max()) + 1
    return tuple(str(i) for i in range(n))


def splits_from_torch(train: Dataset | DataLoader, val: Dataset | DataLoader | None = None,
                      test: Dataset | DataLoader | None = None, *, heldout: int | None = None,
                      num_classes: int | None = None, classes: Sequence[str] | None = None,
                      mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                      device: str | torch.device | None = None, seed: int = 0) -> TorchSplits:
    """Splits over the user's datasets (or the datasets of their DataLoaders, whose ``num_workers``
    and ``collate_fn`` are reused; batch size and order are the pipeline's).

    ``heldout``: images carved out of ``train`` when no ``val`` is given (default: a tenth, at most
    5,000). ``num_classes``/``classes``: default ``train.classes`` when the dataset has it, else
    the largest label + 1. ``mean``/``std``: normalisation to apply, in the data's units (default:
    none). ``device``: where batches go (default: CUDA when present)."""
    train_ds, train_dl = _unwrap(train)
    n = len(train_ds)  # type: ignore[arg-type]
    first = train_ds[0][0] if n else None
    if not isinstance(first, torch.Tensor) or first.dim() != 3:
        raise DataError("splits_from_torch: train items must be (CHW image tensor, int label); "
                        f"got {type(first).__name__}{'' if first is None else tuple(getattr(first, 'shape', ()))}")
    datasets: dict[str, Dataset] = {}
    if val is not None:
        datasets["train"], datasets["heldout"] = train_ds, _unwrap(val)[0]
    else:
        count = min(HELDOUT, n // HELDOUT_FRACTION) if heldout is None else heldout
        ho, tr = carve(n, count, np.random.default_rng(seed))
        if count < 1:
            raise DataError(f"train has {n} items: too few to hold some out; pass val=")
        datasets["train"], datasets["heldout"] = Subset(train_ds, tr.tolist()), Subset(train_ds, ho.tolist())
    if test is not None:
        datasets["test"] = _unwrap(test)[0]
    names = _class_names(train_ds, num_classes, classes)
    if len(names) < 2:
        raise DataError(f"classification needs at least 2 classes, got {len(names)}")
    c = int(first.shape[0])
    shape = (c, int(first.shape[1]), int(first.shape[2]))
    return TorchSplits(datasets, names, shape,
                       tuple(mean) if mean is not None else (0.0,) * c, tuple(std) if std is not None else (1.0,) * c,
                       torch.device(device) if device is not None else default_device(),
                       num_workers=train_dl.num_workers if train_dl is not None else 0,
                       collate_fn=train_dl.collate_fn if train_dl is not None else None)

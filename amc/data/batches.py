"""Batches of normalised float NCHW images: in-memory tensors or a DataLoader, augmented on the device.

Augmentation (any size, any channel count): a random crop of the reflect-padded image back to its
size, pad = an eighth of the shorter side (4 px for CIFAR's 32) and at least 1, and a random
horizontal flip; it runs where the batch lives (the GPU when there is one).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Protocol

import torch
import torch.nn.functional as F

from amc.data.images import MEAN, STD

FLIP_P = 0.5  # probability of a horizontal flip
PIXEL_SCALE = 255  # uint8 pixels: mean/std in [0, 1] are scaled to pixel units


class Batches(Protocol):
    """What a split's loader is: re-iterable, sized (batches per epoch), yielding ``(x, y)``
    with ``x`` float NCHW normalised on the source's device and ``y`` int64 labels."""

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]: ...

    def __len__(self) -> int: ...


def crop_pad(height: int, width: int) -> int:
    """Reflect padding of the random crop: an eighth of the shorter side, at least 1 (4 for 32 px)."""
    return max(1, min(height, width) // 8)


def crop_flip(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random crop of the reflect-padded float NCHW batch back to its size, and random flips.

    Random numbers come from the CPU ``generator`` (x offsets, y offsets, flips, in that order),
    so a seed gives the same crops on any device."""
    b, c, h, w = x.shape
    if min(h, w) < 2:  # reflect padding needs two pixels; nothing to crop
        return x
    pad = crop_pad(h, w)
    dev = x.device
    padded = F.pad(x, (pad, pad, pad, pad), mode="reflect")
    dx = torch.randint(0, 2 * pad + 1, (b,), generator=generator).to(dev)
    dy = torch.randint(0, 2 * pad + 1, (b,), generator=generator).to(dev)
    flip = (torch.rand(b, generator=generator) < FLIP_P).to(dev)
    rows = (dy[:, None] + torch.arange(h, device=dev))[:, None, :, None]  # b,1,h,1
    cols = dx[:, None] + torch.arange(w, device=dev)  # b,w
    cols = torch.where(flip[:, None], cols.flip(1), cols)[:, None, None, :]  # b,1,1,w
    bi = torch.arange(b, device=dev)[:, None, None, None]
    ci = torch.arange(c, device=dev)[None, :, None, None]
    return padded[bi, ci, rows, cols]


def norm_tensors(mean: Sequence[float], std: Sequence[float], scale: float,
                 device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(1, C, 1, 1) mean and std tensors in the units of the pixels (``scale`` x the given ones)."""
    m = torch.tensor(tuple(mean), device=device).view(1, -1, 1, 1) * scale
    s = torch.tensor(tuple(std), device=device).view(1, -1, 1, 1) * scale
    return m, s


def finish(x: torch.Tensor) -> torch.Tensor:
    """The memory layout models run fastest in: channels_last on CUDA."""
    return x.contiguous(memory_format=torch.channels_last) if x.device.type == "cuda" else x


class Loader:
    """Batches of normalised float NCHW images from uint8 NHWC tensors held on ``device``.

    ``augment`` applies ``crop_flip`` on the device. The order is reshuffled per epoch from ``seed``.
    ``mean``/``std`` are per channel in [0, 1] (default: CIFAR-10's)."""

    def __init__(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        batch_size: int = 256,
        shuffle: bool = False,
        augment: bool = False,
        seed: int = 0,
        drop_last: bool = False,
        mean: Sequence[float] = MEAN,
        std: Sequence[float] = STD,
    ) -> None:
        self.x, self.y = x, y
        self.batch_size, self.shuffle, self.augment, self.drop_last = batch_size, shuffle, augment, drop_last
        self.device = x.device
        self.generator = torch.Generator(device="cpu").manual_seed(seed)
        self.mean, self.std = norm_tensors(mean, std, PIXEL_SCALE, self.device)

    def __len__(self) -> int:
        n = len(self.y)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    @property
    def num_samples(self) -> int:
        return len(self.y)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n = len(self.y)
        if self.shuffle:
            order = torch.randperm(n, generator=self.generator).to(self.device)
        else:
            order = torch.arange(n, device=self.device)
        stop = n - n % self.batch_size if self.drop_last else n
        for i in range(0, stop, self.batch_size):
            idx = order[i : i + self.batch_size]
            x = self.x[idx].permute(0, 3, 1, 2).float()
            if self.augment:
                x = crop_flip(x, self.generator)
            yield finish((x - self.mean) / self.std), self.y[idx]


class Permutation(torch.utils.data.Sampler[int]):
    """A fresh ``randperm`` from ``generator`` each epoch (as ``Loader`` shuffles; torch's
    ``RandomSampler`` draws one extra permutation per epoch)."""

    def __init__(self, n: int, generator: torch.Generator) -> None:
        self.n, self.generator = n, generator

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator[int]:
        yield from torch.randperm(self.n, generator=self.generator).tolist()


class DeviceBatches:
    """Batches from a ``DataLoader`` moved to ``device``, augmented there and normalised.

    ``nhwc_uint8``: the loader yields uint8 NHWC pixels (the streaming ImageFolder); otherwise
    float NCHW tensors in the user's units (``mean``/``std`` in those units, ``scale`` 1)."""

    def __init__(self, loader: torch.utils.data.DataLoader, device: torch.device, mean: Sequence[float],
                 std: Sequence[float], scale: float, augment: bool, generator: torch.Generator,
                 nhwc_uint8: bool) -> None:
        self.loader, self.device = loader, device
        self.augment, self.generator, self.nhwc_uint8 = augment, generator, nhwc_uint8
        self.mean, self.std = norm_tensors(mean, std, scale, device)

    def __len__(self) -> int:
        return len(self.loader)

    @property
    def num_samples(self) -> int:
        return len(self.loader.dataset)  # type: ignore[arg-type]

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        non_blocking = self.device.type == "cuda"
        for x, y in self.loader:
            x = x.to(self.device, non_blocking=non_blocking)
            x = x.permute(0, 3, 1, 2).float() if self.nhwc_uint8 else x.float()
            if self.augment:
                x = crop_flip(x, self.generator)
            yield finish((x - self.mean) / self.std), y.to(self.device, non_blocking=non_blocking).long()

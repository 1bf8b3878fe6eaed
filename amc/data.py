"""CIFAR-10 as uint8 arrays, a deterministic held-out split of train, and tensor batch loaders.

Sources: a torchvision ``cifar-10-batches-py`` root (downloaded when online), an ImageFolder
directory with ``train/`` and ``test/``, or a ``.tar``/``.tar.gz``/``.tar.xz`` archive of one.
Images are decoded once and cached as uint8 arrays (``$AMC_CACHE`` or ``~/.cache/amc``).

Lifecycle: ``load_cifar10(path) -> Cifar10`` -> ``make_splits(data, heldout=5000) -> Splits``
-> ``Splits.loader("train" | "heldout" | "test", ...)`` -> iterate ``(x, y)`` batches.
On CUDA the whole set lives on the GPU and augmentation runs there; on CPU the same loader
slices CPU tensors.
"""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from amc.errors import DataError

CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
MEAN = (0.4914, 0.4822, 0.4465)
STD = (0.2470, 0.2435, 0.2616)
IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp")


@dataclass(frozen=True)
class Cifar10:
    """Decoded images as uint8 NHWC arrays and int64 labels."""

    train_x: np.ndarray
    train_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray


def cache_dir() -> Path:
    return Path(os.environ.get("AMC_CACHE", Path.home() / ".cache" / "amc"))


def _cache_key(path: Path) -> str:
    st = path.stat()
    ident = f"{path.resolve()}|{st.st_size}|{int(st.st_mtime)}|v1"
    return hashlib.sha256(ident.encode()).hexdigest()[:16]


def _decode(data: bytes) -> np.ndarray:
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        arr = np.asarray(im.convert("RGB"), dtype=np.uint8)
    if arr.shape != (32, 32, 3):
        raise DataError(f"expected 32x32 RGB images, found one of shape {arr.shape}")
    return arr


def _split_class(parts: tuple[str, ...]) -> tuple[str, str] | None:
    """Find ``train|test/<class>/file`` inside a member path, whatever prefix it has."""
    for i in range(len(parts) - 2):
        if parts[i] in ("train", "test"):
            return parts[i], parts[i + 1]
    return None


def _stack(items: dict[str, list[tuple[str, str, np.ndarray]]], where: str) -> Cifar10:
    out = []
    for split in ("train", "test"):
        rows = sorted(items.get(split, []), key=lambda r: (r[0], r[1]))
        if not rows:
            raise DataError(f"no {split} images found in {where} (expected {split}/<class>/<image>)")
        classes = sorted({r[0] for r in rows})
        unknown = set(classes) - set(CLASSES)
        if unknown:
            raise DataError(f"unknown class folders in {where}: {sorted(unknown)}")
        x = np.stack([r[2] for r in rows])
        y = np.array([CLASSES.index(r[0]) for r in rows], dtype=np.int64)
        out += [x, y]
    return Cifar10(*out)


def _read_archive(path: Path) -> Cifar10:
    items: dict[str, list[tuple[str, str, np.ndarray]]] = {}
    try:
        with tarfile.open(path, "r|*") as tar:  # streaming: xz archives do not seek cheaply
            for member in tar:
                if not member.isfile() or not member.name.lower().endswith(IMAGE_EXTS):
                    continue
                parts = Path(member.name).parts
                sc = _split_class(parts)
                if sc is None:
                    continue
                f = tar.extractfile(member)
                assert f is not None
                items.setdefault(sc[0], []).append((sc[1], parts[-1], _decode(f.read())))
    except (tarfile.TarError, EOFError, OSError) as e:
        raise DataError(f"cannot read archive {path}: {e}") from None
    return _stack(items, str(path))


def _read_folder(path: Path) -> Cifar10:
    items: dict[str, list[tuple[str, str, np.ndarray]]] = {}
    for split in ("train", "test"):
        root = path / split
        if not root.is_dir():
            continue
        for cls_dir in sorted(p for p in root.iterdir() if p.is_dir()):
            for f in sorted(cls_dir.iterdir()):
                if f.suffix.lower() in IMAGE_EXTS:
                    items.setdefault(split, []).append((cls_dir.name, f.name, _decode(f.read_bytes())))
    return _stack(items, str(path))


def _read_torchvision(path: Path, download: bool) -> Cifar10:
    from torchvision.datasets import CIFAR10

    try:
        tr = CIFAR10(str(path), train=True, download=download)
        te = CIFAR10(str(path), train=False, download=download)
    except RuntimeError as e:  # torchvision: "Dataset not found or corrupted"
        raise DataError(f"no CIFAR-10 in torchvision format at {path}: {e}") from None
    return Cifar10(
        np.asarray(tr.data, dtype=np.uint8),
        np.asarray(tr.targets, dtype=np.int64),
        np.asarray(te.data, dtype=np.uint8),
        np.asarray(te.targets, dtype=np.int64),
    )


def load_cifar10(path: str | os.PathLike, download: bool = False, use_cache: bool = True) -> Cifar10:
    """Load CIFAR-10 from an archive, an ImageFolder directory or a torchvision root (cached)."""
    path = Path(path)
    if not path.exists() and not download:
        raise DataError(f"data path does not exist: {path}")
    if path.is_dir() and not any(path.iterdir()) and not download:
        raise DataError(f"data folder is empty: {path}")
    cache = cache_dir() / f"cifar10-{_cache_key(path)}.npz" if path.exists() and use_cache else None
    if cache is not None and cache.exists():
        with np.load(cache) as z:
            return Cifar10(z["train_x"], z["train_y"], z["test_x"], z["test_y"])
    if path.is_file():
        data = _read_archive(path)
    elif (path / "cifar-10-batches-py").is_dir() or download:
        data = _read_torchvision(path, download)
    else:
        data = _read_folder(path)
    if cache is not None:
        from amc.io import atomic_open

        with atomic_open(cache, "wb") as f:
            np.savez(f, train_x=data.train_x, train_y=data.train_y, test_x=data.test_x, test_y=data.test_y)
    return data


def subset(data: Cifar10, train: int | None = None, test: int | None = None, seed: int = 0) -> Cifar10:
    """A class-balanced-in-expectation random slice, for tests and quick runs."""
    rng = np.random.default_rng(seed)
    tr = rng.permutation(len(data.train_y))[:train] if train else slice(None)
    te = rng.permutation(len(data.test_y))[:test] if test else slice(None)
    return Cifar10(data.train_x[tr], data.train_y[tr], data.test_x[te], data.test_y[te])


class Loader:
    """Batches of normalised float NCHW images from uint8 NHWC tensors held on ``device``.

    ``augment`` applies a random 32x32 crop of the 4-pixel reflect-padded image and a random
    horizontal flip, on the device. The order is reshuffled per epoch from ``seed``.
    """

    def __init__(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        batch_size: int = 256,
        shuffle: bool = False,
        augment: bool = False,
        seed: int = 0,
        drop_last: bool = False,
    ) -> None:
        self.x, self.y = x, y
        self.batch_size, self.shuffle, self.augment, self.drop_last = batch_size, shuffle, augment, drop_last
        self.device = x.device
        self.generator = torch.Generator(device="cpu").manual_seed(seed)
        self.mean = torch.tensor(MEAN, device=self.device).view(1, 3, 1, 1) * 255
        self.std = torch.tensor(STD, device=self.device).view(1, 3, 1, 1) * 255

    def __len__(self) -> int:
        n = len(self.y)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    @property
    def num_samples(self) -> int:
        return len(self.y)

    def _augment(self, x: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        padded = F.pad(x, (4, 4, 4, 4), mode="reflect")
        g = self.generator
        dx = torch.randint(0, 9, (b,), generator=g).to(self.device)
        dy = torch.randint(0, 9, (b,), generator=g).to(self.device)
        flip = (torch.rand(b, generator=g) < 0.5).to(self.device)
        ar = torch.arange(32, device=self.device)
        rows = (dy[:, None] + ar)[:, None, :, None]  # b,1,32,1
        cols = dx[:, None] + ar  # b,32
        cols = torch.where(flip[:, None], cols.flip(1), cols)[:, None, None, :]  # b,1,1,32
        bi = torch.arange(b, device=self.device)[:, None, None, None]
        ci = torch.arange(3, device=self.device)[None, :, None, None]
        return padded[bi, ci, rows, cols]

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
                x = self._augment(x)
            x = (x - self.mean) / self.std
            if self.device.type == "cuda":
                x = x.contiguous(memory_format=torch.channels_last)
            yield x, self.y[idx]


@dataclass
class Splits:
    """Train (minus the held-out part), held-out (search rewards, BN recalibration) and test."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    heldout_x: torch.Tensor
    heldout_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor

    def loader(self, split: str, batch_size: int = 256, shuffle: bool | None = None,
               augment: bool | None = None, seed: int = 0, limit: int | None = None) -> Loader:
        """``train`` shuffles and augments by default; ``heldout`` and ``test`` do neither."""
        if split not in ("train", "heldout", "test"):
            raise ValueError(f"unknown split {split!r}")
        x, y = getattr(self, f"{split}_x"), getattr(self, f"{split}_y")
        if limit is not None:
            x, y = x[:limit], y[:limit]
        is_train = split == "train"
        return Loader(
            x, y, batch_size,
            shuffle=is_train if shuffle is None else shuffle,
            augment=is_train if augment is None else augment,
            seed=seed,
            drop_last=is_train and len(y) > batch_size,
        )


def make_splits(data: Cifar10, heldout: int = 5000, device: str | torch.device = "cpu", seed: int = 0) -> Splits:
    """Carve a deterministic held-out split out of train (the test set stays for final numbers)."""
    n = len(data.train_y)
    if not 0 <= heldout < n:
        raise DataError(f"held-out size {heldout} must be in [0, {n})")
    rng = np.random.default_rng(seed)
    perm = rng.permutation(n)
    ho, tr = perm[:heldout], perm[heldout:]
    te = rng.permutation(len(data.test_y))  # the archive is sorted by class: shuffle so slices mix classes
    dev = torch.device(device)

    def t(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(a)).to(dev)

    return Splits(t(data.train_x[tr]), t(data.train_y[tr]), t(data.train_x[ho]), t(data.train_y[ho]),
                  t(data.test_x[te]), t(data.test_y[te]))


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")

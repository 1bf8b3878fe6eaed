"""Image-classification data as uint8 arrays: decode once, cache, describe (classes, shape, normalisation).

Sources: an ImageFolder directory with ``train/`` and ``test/`` (optionally ``val/``) holding
``<class>/<image>`` files, a ``.tar``/``.tar.gz``/``.tar.xz`` archive of one, or a torchvision
``cifar-10-batches-py`` root (downloaded when online). Class names are the folder names, sorted;
images of other sizes are resized to a common one (``image_size``, else the most common size);
all-grayscale sets keep one channel. Decoded arrays are cached as uint8 ``.npz`` files
(``$AMC_CACHE`` or ``~/.cache/amc``), keyed by the path and the decode settings.

Lifecycle: ``load_images(path) -> ImageSet`` (or ``load_cifar10(path) -> Cifar10``) ->
``amc.data.make_splits`` -> loaders.
"""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
from collections import Counter
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TypeVar

import numpy as np

from amc.errors import DataError

CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
MEAN = (0.4914, 0.4822, 0.4465)  # CIFAR-10's published per-channel train mean (RGB, in [0, 1])
STD = (0.2470, 0.2435, 0.2616)  # ... and standard deviation
IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
SPLIT_DIRS = ("train", "val", "test")  # the sub-folders of an ImageFolder root (val/ optional)
GRAY_MODES = ("1", "L", "LA", "I", "I;16", "F")  # PIL modes decoded to one channel
STATS_CHUNK = 4096  # images per float64 chunk when computing channel statistics (bounds memory)
MIN_STD = 1 / 255  # floor for a channel's std: a constant channel would otherwise divide by zero

Size = tuple[int, int]  # (height, width)
D = TypeVar("D", bound="ImageSet")


@dataclass(frozen=True)
class ImageSet:
    """Decoded images as uint8 NHWC arrays (C = 1 or 3) and int64 labels indexing ``classes``.

    ``mean``/``std`` (per channel, in [0, 1]) are the normalisation; ``None`` means computed
    from the training images (``normalisation()``). ``val_x``/``val_y``: an optional validation
    set the user gave, used as the held-out split instead of a carve-out of train."""

    train_x: np.ndarray
    train_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray
    classes: tuple[str, ...] = ()
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    val_x: np.ndarray | None = None
    val_y: np.ndarray | None = None

    @property
    def channels(self) -> int:
        return int(self.train_x.shape[3])

    @property
    def image_size(self) -> Size:
        return int(self.train_x.shape[1]), int(self.train_x.shape[2])

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """(C, H, W), as a model sees one image."""
        return (self.channels, *self.image_size)

    @property
    def num_classes(self) -> int:
        if self.classes:
            return len(self.classes)
        return int(max(self.train_y.max(initial=0), self.test_y.max(initial=0))) + 1

    @property
    def class_names(self) -> tuple[str, ...]:
        """``classes``, or "0", "1", ... when the set was built from bare arrays."""
        return self.classes or tuple(str(i) for i in range(self.num_classes))

    def normalisation(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """(mean, std) per channel: the given ones, else computed from the training images."""
        if self.mean is not None and self.std is not None:
            return self.mean, self.std
        mean, std = channel_stats(self.train_x)
        return self.mean or mean, self.std or std


@dataclass(frozen=True)
class Cifar10(ImageSet):
    """CIFAR-10: its fixed class order and published normalisation constants."""

    classes: tuple[str, ...] = CLASSES
    mean: tuple[float, ...] | None = MEAN
    std: tuple[float, ...] | None = STD


def channel_stats(x: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std, in [0, 1], of uint8 NHWC images (exact float64 sums, any order)."""
    c = x.shape[-1]
    total, squares, count = np.zeros(c), np.zeros(c), 0
    for i in range(0, len(x), STATS_CHUNK):
        part = x[i : i + STATS_CHUNK].reshape(-1, c).astype(np.float64)
        total += part.sum(0)
        squares += (part * part).sum(0)
        count += len(part)
    if count == 0:
        raise DataError("no training images to compute the normalisation from")
    mean = total / count
    std = np.sqrt(np.maximum(squares / count - mean * mean, 0))
    return tuple(float(m) / 255 for m in mean), tuple(max(float(s) / 255, MIN_STD) for s in std)


def published_normalisation(classes: Sequence[str], shape: tuple[int, int, int]
                            ) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    """CIFAR-10's constants for a set that is CIFAR-10 (its ten classes, 32x32 RGB), else None."""
    return (MEAN, STD) if tuple(classes) == CLASSES and tuple(shape) == (3, 32, 32) else None


# -- decoding --------------------------------------------------------------------------------------
def decode(data: bytes, name: str) -> np.ndarray:
    """One image as uint8 HWC: one channel for grayscale files, three for the rest (alpha dropped)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as im:
            arr = np.asarray(im.convert("L" if im.mode in GRAY_MODES else "RGB"), dtype=np.uint8)
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise DataError(f"cannot read image {name}: {e}") from None
    return arr[..., None] if arr.ndim == 2 else arr


def fit(img: np.ndarray, size: Size, channels: int) -> np.ndarray:
    """``img`` (uint8 HWC) resized to ``size`` (bilinear) and converted to ``channels`` (1 or 3)."""
    from PIL import Image

    if img.shape[:2] != size:
        pil = Image.fromarray(img[..., 0] if img.shape[2] == 1 else img)
        img = np.asarray(pil.resize((size[1], size[0]), Image.Resampling.BILINEAR), dtype=np.uint8)
        img = img[..., None] if img.ndim == 2 else img
    if img.shape[2] == channels:
        return img
    if channels == 3:
        return np.repeat(img, 3, axis=2)
    return np.asarray(Image.fromarray(img).convert("L"), dtype=np.uint8)[..., None]  # ITU-R 601 luma


def common_shape(images: Sequence[np.ndarray], image_size: Size | None, channels: int | None
                 ) -> tuple[Size, int]:
    """The size and channel count to bring every image to: the given ones, else the most common
    size and one channel only when every image is grayscale."""
    if channels is not None and channels not in (1, 3):
        raise DataError(f"channels must be 1 or 3, got {channels}")
    size = image_size or Counter(img.shape[:2] for img in images).most_common(1)[0][0]
    return (int(size[0]), int(size[1])), channels or (1 if all(img.shape[2] == 1 for img in images) else 3)


def as_size(image_size: int | Sequence[int] | None) -> Size | None:
    """``32`` or ``(32, 32)`` -> ``(32, 32)``; ``None`` stays ``None``."""
    if image_size is None:
        return None
    h, w = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    if h < 1 or w < 1:
        raise DataError(f"image size must be positive, got {image_size}")
    return int(h), int(w)


# -- reading ---------------------------------------------------------------------------------------
Row = tuple[str, str, np.ndarray]  # (class folder, file name, decoded image)


def _split_class(parts: tuple[str, ...]) -> tuple[str, str] | None:
    """Find ``train|val|test/<class>/file`` inside a member path, whatever prefix it has."""
    for i in range(len(parts) - 2):
        if parts[i] in SPLIT_DIRS:
            return parts[i], parts[i + 1]
    return None


def _read_archive(path: Path) -> dict[str, list[Row]]:
    items: dict[str, list[Row]] = {}
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
                items.setdefault(sc[0], []).append((sc[1], parts[-1], decode(f.read(), member.name)))
    except (tarfile.TarError, EOFError, OSError) as e:
        raise DataError(f"cannot read archive {path}: {e}") from None
    return items


def _read_classes(root: Path) -> list[Row]:
    """Every image of ``root/<class>/<image>``."""
    return [(cls_dir.name, f.name, decode(f.read_bytes(), str(f)))
            for cls_dir in sorted(p for p in root.iterdir() if p.is_dir())
            for f in sorted(cls_dir.iterdir()) if f.suffix.lower() in IMAGE_EXTS]


def _read_folder(path: Path) -> dict[str, list[Row]]:
    items = {split: _read_classes(path / split) for split in SPLIT_DIRS if (path / split).is_dir()}
    return {split: rows for split, rows in items.items() if rows}


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


def check_classes(found: Mapping[str, Collection[str]], where: str) -> tuple[str, ...]:
    """The sorted class folders of train, after checking there are at least two and that every
    other split has the same ones."""
    train = tuple(sorted(found["train"]))
    if len(train) < 2:
        raise DataError(f"{where}: train has {len(train)} class folder ({', '.join(train)}); "
                        "classification needs at least 2 (train/<class>/<image>)")
    for split, names in found.items():
        if set(names) != set(train):
            only_train, only_split = sorted(set(train) - set(names)), sorted(set(names) - set(train))
            raise DataError(f"{where}: class folders of {split} differ from train's "
                            f"(only in train: {only_train}, only in {split}: {only_split})")
    return train


def _assemble(items: dict[str, list[Row]], where: str, image_size: Size | None, channels: int | None) -> ImageSet:
    for split in ("train", "test"):
        if not items.get(split):
            raise DataError(f"no {split} images found in {where} (expected {split}/<class>/<image>)")
    classes = check_classes({s: {r[0] for r in rows} for s, rows in items.items()}, where)
    size, chans = common_shape([r[2] for rows in items.values() for r in rows], image_size, channels)
    arrays: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for split, rows in items.items():
        rows.sort(key=lambda r: (r[0], r[1]))
        x = np.empty((len(rows), *size, chans), dtype=np.uint8)
        for i, r in enumerate(rows):
            x[i] = fit(r[2], size, chans)
        arrays[split] = x, np.array([classes.index(r[0]) for r in rows], dtype=np.int64)
    val = arrays.get("val", (None, None))
    return ImageSet(*arrays["train"], *arrays["test"], classes=classes, val_x=val[0], val_y=val[1])


def _refit(data: ImageSet, image_size: Size | None, channels: int | None) -> ImageSet:
    """``data`` with every array brought to the requested size and channels (a torchvision root)."""
    size, chans = image_size or data.image_size, channels or data.channels
    if (size, chans) == (data.image_size, data.channels):
        return data

    def f(x: np.ndarray | None) -> np.ndarray | None:
        return None if x is None else np.stack([fit(img, size, chans) for img in x])

    return ImageSet(f(data.train_x), data.train_y, f(data.test_x), data.test_y,  # type: ignore[arg-type]
                    classes=data.class_names, val_x=f(data.val_x), val_y=data.val_y)


# -- cache -----------------------------------------------------------------------------------------
def cache_dir() -> Path:
    return Path(os.environ.get("AMC_CACHE", Path.home() / ".cache" / "amc"))


def _identity(path: Path) -> str:
    st = path.stat()
    return f"{path.resolve()}|{st.st_size}|{int(st.st_mtime)}"


def _cache_key(path: Path, settings: str = "") -> str:
    """Default settings keep the key of the CIFAR-only loader, so its cache files still hit."""
    ident = f"{_identity(path)}|v1" + (f"|{settings}" if settings else "")
    return hashlib.sha256(ident.encode()).hexdigest()[:16]


def _save(cache: Path, data: ImageSet) -> None:
    from amc.io import atomic_open

    arrays = {k: getattr(data, k) for k in ("train_x", "train_y", "test_x", "test_y", "val_x", "val_y")}
    with atomic_open(cache, "wb") as f:
        np.savez(f, classes=np.array(data.class_names), **{k: v for k, v in arrays.items() if v is not None})


def _load_cached(cache: Path) -> ImageSet:
    with np.load(cache) as z:
        val = (z["val_x"], z["val_y"]) if "val_x" in z else (None, None)
        # a file without classes was written by the CIFAR-only loader: labels index CIFAR's classes
        classes = tuple(str(c) for c in z["classes"]) if "classes" in z else CLASSES
        return ImageSet(z["train_x"], z["train_y"], z["test_x"], z["test_y"], classes=classes,
                        val_x=val[0], val_y=val[1])


# -- entry points ----------------------------------------------------------------------------------
def load_images(path: str | os.PathLike, image_size: int | Sequence[int] | None = None,
                channels: int | None = None, val: str | os.PathLike | None = None,
                mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                download: bool = False, use_cache: bool = True) -> ImageSet:
    """Load an image-classification set from an archive, an ImageFolder or a torchvision root (cached).

    ``image_size`` (an int or (H, W)) and ``channels`` (1 or 3) force the decoded shape; ``val``
    is an optional folder of ``<class>/<image>`` used as the held-out split (instead of
    ``path/val/``); ``mean``/``std`` override the normalisation (default: computed from train, or
    CIFAR-10's published constants for CIFAR-10). Returns a ``Cifar10`` for CIFAR-10."""
    path, size = Path(path), as_size(image_size)
    val_path = Path(val) if val is not None else None
    if not path.exists() and not download:
        raise DataError(f"data path does not exist: {path}")
    if path.is_dir() and not any(path.iterdir()) and not download:
        raise DataError(f"data folder is empty: {path}")
    if val_path is not None and not val_path.is_dir():
        raise DataError(f"validation folder does not exist: {val_path}")
    settings = "" if (size, channels, val_path) == (None, None, None) else \
        f"size={size}|channels={channels}|val={_identity(val_path) if val_path else ''}"
    cache = cache_dir() / f"cifar10-{_cache_key(path, settings)}.npz" if path.exists() and use_cache else None
    if cache is not None and cache.exists():
        data = _load_cached(cache)
    else:
        data = _decode_source(path, size, channels, val_path, download)
        if cache is not None:
            _save(cache, data)
    if mean is not None or std is not None:
        return replace(data, mean=tuple(mean) if mean is not None else None,
                       std=tuple(std) if std is not None else None)
    if published_normalisation(data.class_names, data.input_shape) is not None:
        return Cifar10(data.train_x, data.train_y, data.test_x, data.test_y, val_x=data.val_x, val_y=data.val_y)
    return data


def _decode_source(path: Path, size: Size | None, channels: int | None, val: Path | None,
                   download: bool) -> ImageSet:
    if path.is_file():
        items = _read_archive(path)
    elif (path / "cifar-10-batches-py").is_dir() or download:
        if val is not None:
            raise DataError("--val is for ImageFolder data, not a torchvision CIFAR-10 root")
        return _refit(_read_torchvision(path, download), size, channels)
    else:
        items = _read_folder(path)
    if val is not None:
        items["val"] = _read_classes(val)
        if not items["val"]:
            raise DataError(f"no images found in validation folder {val} (expected <class>/<image>)")
    return _assemble(items, str(path), size, channels)


def load_cifar10(path: str | os.PathLike, download: bool = False, use_cache: bool = True) -> Cifar10:
    """CIFAR-10 (or any subset of its class folders) with CIFAR's fixed class order and constants."""
    data = load_images(path, download=download, use_cache=use_cache)
    if isinstance(data, Cifar10):
        return data
    unknown = sorted(set(data.class_names) - set(CLASSES))
    if unknown:
        raise DataError(f"unknown class folders in {path}: {unknown}")
    index = np.array([CLASSES.index(c) for c in data.class_names], dtype=np.int64)

    def rgb(x: np.ndarray) -> np.ndarray:
        return np.repeat(x, 3, axis=3) if x.shape[3] == 1 else x

    return Cifar10(rgb(data.train_x), index[data.train_y], rgb(data.test_x), index[data.test_y],
                   val_x=None if data.val_x is None else rgb(data.val_x),
                   val_y=None if data.val_y is None else index[data.val_y])


def subset(data: D, train: int | None = None, test: int | None = None, seed: int = 0) -> D:
    """A class-balanced-in-expectation random slice, for tests and quick runs (same type and metadata)."""
    rng = np.random.default_rng(seed)
    tr = rng.permutation(len(data.train_y))[:train] if train else slice(None)
    te = rng.permutation(len(data.test_y))[:test] if test else slice(None)
    return replace(data, train_x=data.train_x[tr], train_y=data.train_y[tr],
                   test_x=data.test_x[te], test_y=data.test_y[te])

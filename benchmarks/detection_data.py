"""A synthetic detection data set, deterministic from a seed: coloured shapes on textured backgrounds.

Each image (``size`` x ``size``, RGB; 96 by default) has a smooth random background (a colour gradient plus a few
sinusoidal stripes plus pixel noise) and 1 to ``max_objects`` shapes of three classes, ``circle``,
``square`` and ``triangle``, each a random size and colour; a new shape overlaps the ones already
drawn by at most ``MAX_IOU`` (so every object stays visible). Boxes are the tight pixel boxes of
what was drawn, ``xyxy`` with exclusive right / bottom edges.

Lifecycle::

    split = make_split(3000, seed=0)            # a DetSplit: uint8 images, boxes, classes, image index
    split.targets(i)                            # image i's boxes (float xyxy) and classes
    splits = load_or_make(cache_folder, {"train": 3000, "val": 300, "test": 300}, seed=0)   # cached .npz

``python benchmarks/detection_data.py`` generates the default splits into the cache and prints their
counts (``benchmarks/detection.py`` does the same on first use). Each split has its own generator
(``seed`` and the split's name), so the validation and test images
are never the training images. The cache is plain ``.npz`` arrays (read with ``allow_pickle=False``).
Needs numpy and torch only (no optional extras), so the tests run it in CI.
"""

from __future__ import annotations

import hashlib
import io
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout, for `python benchmarks/x.py`

from amc.io import atomic_write_bytes

CLASSES = ("circle", "square", "triangle")
MAX_IOU = 0.2
SPLIT_SALT = {"train": 0, "val": 1, "test": 2}
VERSION = 1  # bump when the drawing changes: the cache key includes it


@dataclass(frozen=True)
class DetSplit:
    """``images``: uint8 (N, 3, H, W); ``boxes``: float32 (M, 4) pixel xyxy; ``classes``: int64 (M,);
    ``index``: int64 (M,), the image each box belongs to (sorted)."""

    images: torch.Tensor
    boxes: torch.Tensor
    classes: torch.Tensor
    index: torch.Tensor

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def targets(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Image ``i``'s boxes (pixel xyxy) and classes."""
        sel = self.index == i
        return self.boxes[sel], self.classes[sel]

    def batch_targets(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The boxes, classes and position in the batch (0..len(idx)-1) of the images ``idx``, sorted by
        that position."""
        pos = torch.full((len(self),), -1, dtype=torch.long)
        pos[idx] = torch.arange(len(idx))
        sel = torch.nonzero(pos[self.index] >= 0).flatten()
        where = pos[self.index[sel]]
        order = torch.argsort(where, stable=True)
        sel = sel[order]
        return self.boxes[sel], self.classes[sel], where[order]


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _background(rng: np.random.Generator, size: int, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
    """A (size, size, 3) float image in [0, 1]: a gradient between two colours, stripes, noise."""
    c0, c1 = rng.uniform(0.1, 0.9, 3), rng.uniform(0.1, 0.9, 3)
    angle = rng.uniform(0, 2 * np.pi)
    t = ((np.cos(angle) * xx + np.sin(angle) * yy) / size + 1) / 2
    img = c0 + (c1 - c0) * t[..., None]
    for _ in range(rng.integers(1, 4)):
        f, phase, amp = rng.uniform(0.02, 0.25), rng.uniform(0, 2 * np.pi), rng.uniform(0.03, 0.12)
        a = rng.uniform(0, 2 * np.pi)
        img = img + amp * np.sin(f * (np.cos(a) * xx + np.sin(a) * yy) + phase)[..., None] * rng.uniform(-1, 1, 3)
    return img + rng.normal(0, rng.uniform(0.01, 0.06), img.shape)


def _mask(cls: int, cx: float, cy: float, s: float, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
    """The pixels of a shape of class ``cls`` centred at (cx, cy) with size ``s``."""
    h = s / 2
    if cls == 0:  # circle
        return (xx - cx) ** 2 + (yy - cy) ** 2 <= h * h
    if cls == 1:  # square
        return (np.abs(xx - cx) <= h) & (np.abs(yy - cy) <= h)
    top = cy - h  # triangle: apex up, base down
    frac = (yy - top) / s
    return (yy >= top) & (yy <= cy + h) & (np.abs(xx - cx) <= frac * h)


def make_image(rng: np.random.Generator, size: int = 96, max_objects: int = 4) -> tuple[np.ndarray, np.ndarray,
                                                                                       np.ndarray]:
    """One image (uint8, (3, size, size)), its boxes (float32 (k, 4), pixel xyxy) and classes (int64 (k,));
    shapes span an eighth to nearly half of the image side (12 to 44 pixels at 96)."""
    min_size, max_size = max(4, size // 8), max(8, round(size * 0.46))
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    img = _background(rng, size, yy, xx)
    boxes: list[np.ndarray] = []
    classes: list[int] = []
    for _ in range(int(rng.integers(1, max_objects + 1))):
        for _try in range(30):
            cls, s = int(rng.integers(0, len(CLASSES))), float(rng.uniform(min_size, max_size))
            cx, cy = rng.uniform(s / 2, size - s / 2, 2)
            m = _mask(cls, cx, cy, s, yy, xx)
            if m.sum() < 16:
                continue
            ys, xs = np.nonzero(m)
            box = np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=np.float32)
            if all(_iou(box, b) <= MAX_IOU for b in boxes):
                break
        else:
            continue
        colour = rng.uniform(0, 1, 3)
        colour[rng.integers(0, 3)] = rng.choice([0.05, 0.95])  # saturated, so shapes stand out somewhat
        shade = 1 - 0.25 * (yy[m] - box[1]) / max(float(box[3] - box[1]), 1.0)  # a little shading
        img[m] = colour * shade[:, None] + rng.normal(0, 0.02, (int(m.sum()), 3))
        boxes.append(box)
        classes.append(cls)
    out = (np.clip(img, 0, 1) * 255).round().astype(np.uint8).transpose(2, 0, 1)
    return out, np.stack(boxes) if boxes else np.zeros((0, 4), np.float32), np.array(classes, dtype=np.int64)


def make_split(n: int, seed: int = 0, size: int = 96, max_objects: int = 4) -> DetSplit:
    """``n`` images drawn from ``np.random.default_rng(seed)``."""
    rng = np.random.default_rng(seed)
    images, boxes, classes, index = [], [], [], []
    for i in range(n):
        img, b, c = make_image(rng, size, max_objects)
        images.append(img)
        boxes.append(b)
        classes.append(c)
        index.append(np.full(len(c), i, dtype=np.int64))
    return DetSplit(torch.from_numpy(np.stack(images)), torch.from_numpy(np.concatenate(boxes)),
                    torch.from_numpy(np.concatenate(classes)), torch.from_numpy(np.concatenate(index)))


def split_seed(seed: int, name: str) -> int:
    """The generator seed of split ``name`` (a different stream per split)."""
    return seed * 1000 + SPLIT_SALT.get(name, 0)


def _save(path: Path, split: DetSplit) -> None:
    buf = io.BytesIO()
    np.savez_compressed(buf, images=split.images.numpy(), boxes=split.boxes.numpy(),
                        classes=split.classes.numpy(), index=split.index.numpy())
    atomic_write_bytes(path, buf.getvalue())


def _load(path: Path) -> DetSplit:
    with np.load(path, allow_pickle=False) as z:
        return DetSplit(*(torch.from_numpy(z[k].copy()) for k in ("images", "boxes", "classes", "index")))


def load_or_make(folder: str | Path, sizes: dict[str, int], seed: int = 0, size: int = 96,
                 max_objects: int = 4) -> dict[str, DetSplit]:
    """The splits ``sizes`` (name -> image count), read from ``folder`` or generated and saved there."""
    folder = Path(folder)
    out = {}
    for name, n in sizes.items():
        key = hashlib.sha256(f"v{VERSION}-{name}-{n}-{seed}-{size}-{max_objects}".encode()).hexdigest()[:12]
        path = folder / f"shapes-{name}-{n}-{key}.npz"
        if path.exists():
            out[name] = _load(path)
        else:
            out[name] = make_split(n, split_seed(seed, name), size, max_objects)
            _save(path, out[name])
    return out


def main() -> None:
    from benchmarks.harness import parser

    ap = parser(__doc__, cache="runs/detection", out=None, data=False, device=False, report_only=False)
    ap.add_argument("--size", type=int, default=96)
    ap.add_argument("--train", type=int, default=3000)
    ap.add_argument("--val", type=int, default=200)
    ap.add_argument("--test", type=int, default=500)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    splits = load_or_make(Path(args.cache) / "data", {"train": args.train, "val": args.val, "test": args.test},
                          seed=args.seed, size=args.size)
    for name, split in splits.items():
        counts = torch.bincount(split.classes, minlength=len(CLASSES)).tolist()
        print(f"{name}: {len(split)} images, {len(split.classes)} objects "
              + ", ".join(f"{c} {n}" for c, n in zip(CLASSES, counts, strict=True)))


if __name__ == "__main__":
    main()

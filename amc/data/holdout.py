"""The honest protocol: the search's score and the final numbers on images the checkpoint never saw.

Checkpoints trained on every training image (the shared CIFAR-10 ones: all 50,000) score near
100% on any held-out carve-out of train, so that carve-out cannot rank policies honestly. Here
the test set is split once, stratified by class with a seeded permutation, into a validation
half (the search's rewards, BN-free choices, the final selection: the ``heldout`` split) and a
final-test half (reported only: the ``test`` split). Train stays whole (finetuning, BN
recalibration). The split is fixed by ``seed`` alone and recorded by a hash of each index list,
so a recipe or report names exactly which images it used.

Lifecycle: ``halve_test(images) -> (images', record)`` -> ``make_splits(images')`` (the validation
half is a given validation set there, so the whole train set is used) -> ``record`` into the
recipe / report. ``PROTOCOLS`` names the choices; ``"heldout"`` keeps the old carve-out of train.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, replace

import numpy as np

from amc.data.images import ImageSet
from amc.errors import DataError

PROTOCOLS = ("auto", "test-halves", "heldout")
SPLIT_SEED = 0  # the one fixed split of every run (independent of the search and finetune seeds)


@dataclass(frozen=True)
class ProtocolRecord:
    """Which images scored the search and which gave the final numbers."""

    protocol: str  # "test-halves" or "heldout"
    val_images: int
    test_images: int
    seed: int | None = None  # the split's seed (test-halves)
    val_sha256: str | None = None  # of the validation half's indices into the test set (int64, sorted)
    test_sha256: str | None = None  # of the final-test half's indices

    def row(self) -> dict[str, object]:
        return asdict(self)


def index_hash(idx: np.ndarray) -> str:
    """sha256 of the sorted indices as little-endian int64: the same set gives the same hash."""
    return hashlib.sha256(np.sort(np.asarray(idx, dtype="<i8")).tobytes()).hexdigest()


def split_halves(labels: np.ndarray, seed: int = SPLIT_SEED) -> tuple[np.ndarray, np.ndarray]:
    """(validation indices, final-test indices) into a test set with these labels: per class a
    seeded permutation, its first half (rounded down) to validation, the rest to final test; each
    list then shuffled with the same generator so that slices mix classes. Disjoint, covering,
    and a function of ``labels`` and ``seed`` alone."""
    y = np.asarray(labels)
    if y.ndim != 1 or len(y) < 2:
        raise DataError(f"splitting the test set needs at least 2 labelled images, got {len(y)}")
    rng = np.random.default_rng(seed)
    val, test = [], []
    for c in np.unique(y):
        members = rng.permutation(np.flatnonzero(y == c))
        half = len(members) // 2
        val.append(members[:half])
        test.append(members[half:])
    v, t = np.concatenate(val), np.concatenate(test)
    if len(v) == 0:
        raise DataError("every class has a single test image: the test set is too small to split in halves")
    return rng.permutation(v), rng.permutation(t)


def halve_test(data: ImageSet, seed: int = SPLIT_SEED) -> tuple[ImageSet, ProtocolRecord]:
    """``data`` with its test set split into a validation half (``val_x``/``val_y``: the search's
    held-out split) and a final-test half (the new test set), and the record of the split."""
    if data.val_y is not None:
        raise DataError("the data already has a validation set: it is the held-out split, do not halve the test set")
    v, t = split_halves(data.test_y, seed)
    out = replace(data, val_x=data.test_x[v], val_y=data.test_y[v], test_x=data.test_x[t], test_y=data.test_y[t])
    return out, ProtocolRecord("test-halves", len(v), len(t), seed, index_hash(v), index_hash(t))


def resolve_protocol(protocol: str, has_val: bool, has_test: bool) -> str:
    """``auto``: the test halves when the data has a test set and no validation set of its own
    (a checkpoint trained on all of train never saw the test images); else the held-out split
    (the user's validation set, or a carve-out of train)."""
    if protocol not in PROTOCOLS:
        raise DataError(f"unknown protocol {protocol!r}; known: {', '.join(PROTOCOLS)}")
    if protocol == "auto":
        return "test-halves" if has_test and not has_val else "heldout"
    if protocol == "test-halves" and has_val:
        raise DataError("protocol test-halves halves the test set; the data has its own validation set already")
    if protocol == "test-halves" and not has_test:
        raise DataError("protocol test-halves needs a test set")
    return protocol


def split_for_search(images: ImageSet, protocol: str = "auto", heldout: int | None = None,
                     device: object = "cpu", seed: int = 0) -> tuple[object, ProtocolRecord]:
    """``images`` as the search's splits and the record of the protocol: ``auto`` halves the test set
    (``halve_test``) unless ``heldout`` is given, then ``heldout`` train images are held out (default
    5,000, or a tenth of a smaller train set)."""
    from amc.data.splits import HELDOUT, make_splits

    if protocol == "auto" and heldout is not None:  # the caller asked for that many held-out train images
        protocol = "heldout"
    if resolve_protocol(protocol, images.val_y is not None, len(images.test_y) > 0) == "test-halves":
        halved, record = halve_test(images)
        return make_splits(halved, 0, device, seed), record  # type: ignore[arg-type]
    if heldout is None:
        heldout = min(HELDOUT, max(1, len(images.train_y) // 10))
    return make_splits(images, heldout, device, seed), ProtocolRecord("heldout", heldout, len(images.test_y))  # type: ignore[arg-type]

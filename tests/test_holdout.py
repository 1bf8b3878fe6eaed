"""The honest protocol: the test set halved into a fixed validation half and a final-test half."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from amc.data import make_splits
from amc.data.holdout import halve_test, index_hash, resolve_protocol, split_halves
from amc.data.images import ImageSet
from amc.errors import DataError


def _images(n_train: int = 40, n_test: int = 30, classes: int = 3) -> ImageSet:
    """Each test image's pixel (0, 0, 0) and (0, 0, 1) spell its index, so a split's images name themselves."""
    rng = np.random.default_rng(1)
    test_x = rng.integers(0, 255, (n_test, 4, 4, 3), dtype=np.uint8)
    test_x[:, 0, 0, 0], test_x[:, 0, 0, 1] = np.arange(n_test) % 256, np.arange(n_test) // 256
    return ImageSet(rng.integers(0, 255, (n_train, 4, 4, 3), dtype=np.uint8),
                    rng.integers(0, classes, n_train).astype(np.int64), test_x,
                    (np.arange(n_test) % classes).astype(np.int64), tuple(f"c{i}" for i in range(classes)))


def _ids(x: np.ndarray | torch.Tensor) -> set[int]:
    a = np.asarray(x)
    return set((a[:, 0, 0, 0].astype(int) + 256 * a[:, 0, 0, 1].astype(int)).tolist())


@pytest.mark.parametrize("n", [20, 31, 10000])
def test_halves_are_disjoint_cover_the_test_set_and_stay_fixed(n):
    labels = np.arange(n) % 10
    v, t = split_halves(labels)
    assert set(v.tolist()).isdisjoint(t.tolist())
    assert sorted([*v.tolist(), *t.tolist()]) == list(range(n))
    v2, t2 = split_halves(labels)
    assert np.array_equal(v, v2) and np.array_equal(t, t2)  # fixed across calls
    for c in range(10):  # stratified: each class split in halves (the odd one to final test)
        members = int((labels == c).sum())
        assert int((labels[v] == c).sum()) == members // 2
    other = split_halves(labels, seed=1)[0]
    assert index_hash(other) != index_hash(v)  # the seed, and only it, picks the split


def test_the_10000_test_images_give_5000_and_5000():
    v, t = split_halves(np.repeat(np.arange(10), 1000))
    assert len(v) == len(t) == 5000


def test_halved_splits_score_on_validation_and_report_on_final_test():
    data = _images()
    halved, record = halve_test(data)
    splits = make_splits(halved, 0, "cpu")
    val, final = _ids(splits.heldout_x), _ids(splits.test_x)
    assert val.isdisjoint(final) and val | final == set(range(30))
    assert splits.size("train") == 40  # train stays whole
    assert record.protocol == "test-halves" and record.val_images == len(val) == 15
    assert record.val_sha256 == index_hash(np.array(sorted(val)))
    assert record.test_sha256 == index_hash(np.array(sorted(final)))
    # the loaders the pipeline reads: final numbers ("test") never see a validation image
    seen = set()
    for x, _ in splits.loader("test", batch_size=7):
        raw = torch.round(x * torch.tensor(splits.std).view(1, -1, 1, 1) * 255
                          + torch.tensor(splits.mean).view(1, -1, 1, 1) * 255)
        seen |= set((raw[:, 0, 0, 0].long() + 256 * raw[:, 1, 0, 0].long()).tolist())
    assert seen == final
    again = make_splits(halve_test(data)[0], 0, "cpu")
    assert _ids(again.heldout_x) == val  # the same halves on every call


def test_protocol_choice_and_bad_input():
    assert resolve_protocol("auto", has_val=False, has_test=True) == "test-halves"
    assert resolve_protocol("auto", has_val=True, has_test=True) == "heldout"
    assert resolve_protocol("heldout", has_val=False, has_test=True) == "heldout"
    with pytest.raises(DataError, match="unknown protocol"):
        resolve_protocol("nope", False, True)
    with pytest.raises(DataError, match="validation set"):
        resolve_protocol("test-halves", True, True)
    with pytest.raises(DataError, match="at least 2"):
        split_halves(np.zeros(1, dtype=np.int64))
    data = _images()
    with pytest.raises(DataError, match="validation set"):
        halve_test(halve_test(data)[0])


def test_open_dataset_defaults_to_the_halves_and_keeps_the_heldout_protocol(tmp_path):
    from PIL import Image

    from amc.api import open_dataset_recorded

    rng = np.random.default_rng(0)
    for split, n in (("train", 8), ("test", 4)):
        for c in range(2):
            d = tmp_path / "data" / split / f"class_{c}"
            d.mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(d / f"{i}.png")
    source, record = open_dataset_recorded(tmp_path / "data", device="cpu")
    assert record is not None and record.protocol == "test-halves"
    assert (source.size("train"), source.size("heldout"), source.size("test")) == (16, 4, 4)
    for protocol in ("heldout", "auto"):  # an explicit heldout= asks for the carve-out of train
        source, record = open_dataset_recorded(tmp_path / "data", device="cpu", protocol=protocol, heldout=4)
        assert record is not None and record.protocol == "heldout"
        assert (source.size("train"), source.size("heldout"), source.size("test")) == (12, 4, 8)

"""Any image-classification data: ImageFolders of any classes, sizes and channels, streaming, the
user's own datasets; CIFAR-10's normalisation and crops unchanged."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from amc.data import (
    CLASSES,
    Cifar10,
    DataSource,
    Loader,
    Splits,
    StreamingSplits,
    TorchSplits,
    crop_flip,
    load_cifar10,
    load_images,
    make_splits,
    open_data,
    splits_from_torch,
    stream_images,
)
from amc.errors import DataError

FIVE = ("cat", "cow", "dog", "fox", "owl")


def write_folder(root: Path, classes, per_class=(4, 2), size=(64, 64), mode="RGB", seed=0) -> Path:
    """``root/{train,test}/<class>/<i>.png`` of random pixels; ``size`` is (H, W)."""
    rng = np.random.default_rng(seed)
    for split, n in zip(("train", "test"), per_class, strict=True):
        for c in classes:
            (root / split / c).mkdir(parents=True, exist_ok=True)
            for i in range(n):
                shape = (*size, 3) if mode == "RGB" else size
                Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode).save(root / split / c / f"{i}.png")
    return root


@pytest.fixture
def five(tmp_path) -> Path:
    return write_folder(tmp_path / "five", FIVE)


def test_five_class_folder_loads_with_its_own_classes_and_normalisation(five):
    data = load_images(five, use_cache=False)
    assert data.classes == FIVE and data.num_classes == 5 and data.input_shape == (3, 64, 64)
    assert data.train_x.shape == (20, 64, 64, 3) and data.test_x.shape == (10, 64, 64, 3)
    assert np.bincount(data.train_y).tolist() == [4] * 5
    mean, std = data.normalisation()
    px = data.train_x.reshape(-1, 3) / 255
    assert np.allclose(mean, px.mean(0)) and np.allclose(std, px.std(0))
    splits = make_splits(data, heldout=5)
    assert splits.classes == FIVE and splits.num_classes == 5 and splits.input_shape == (3, 64, 64)
    assert splits.mean == mean and splits.device == torch.device("cpu")
    assert (splits.size("train"), splits.size("heldout"), splits.size("test")) == (15, 5, 10)
    x, y = next(iter(splits.loader("train", 4)))
    assert x.shape == (4, 3, 64, 64) and x.dtype == torch.float32 and y.shape == (4,)
    plain = torch.cat([b for b, _ in splits.loader("train", 15, shuffle=False, augment=False)])
    aug = next(iter(splits.loader("train", 15, shuffle=False, augment=True)))[0]
    assert aug.shape == plain.shape and not torch.equal(aug, plain)
    assert abs(float(plain.mean())) < 0.1  # normalised with train's own statistics


def test_grayscale_digits_keep_one_channel(tmp_path):
    digits = pytest.importorskip("sklearn.datasets").load_digits()
    root = tmp_path / "digits"
    for split, lo, hi in (("train", 0, 60), ("test", 60, 90)):
        for i in range(lo, hi):
            d = root / split / str(digits.target[i])
            d.mkdir(parents=True, exist_ok=True)
            img = (digits.images[i] * 255 / 16).astype(np.uint8)  # pixel values 0..16
            Image.fromarray(img, "L").save(d / f"{i}.png")
    data = load_images(root, image_size=32, use_cache=False)
    assert data.channels == 1 and data.input_shape == (1, 32, 32) and len(data.normalisation()[0]) == 1
    splits = make_splits(data, heldout=10)
    assert splits.num_classes == len(set(digits.target[:60].tolist()))
    for batch, _ in splits.loader("train", 8):
        assert batch.shape == (8, 1, 32, 32)
    assert next(iter(splits.loader("test", 8)))[0].shape == (8, 1, 32, 32)


def test_mixed_sizes_are_resized_to_the_common_one(tmp_path):
    root = write_folder(tmp_path / "m", ("a", "b"), per_class=(3, 1), size=(16, 16))
    Image.new("RGB", (12, 20), (10, 20, 30)).save(root / "train" / "a" / "odd.png")  # 20 high, 12 wide
    Image.new("L", (16, 16), 128).save(root / "train" / "b" / "gray.png")  # one gray image in RGB data
    data = load_images(root, use_cache=False)
    assert data.train_x.shape == (8, 16, 16, 3)
    assert load_images(root, image_size=(24, 20), use_cache=False).train_x.shape == (8, 24, 20, 3)
    assert load_images(root, channels=1, use_cache=False).input_shape == (1, 16, 16)


@pytest.mark.parametrize("case", ["one class", "mismatch", "unreadable"])
def test_bad_folders_are_one_clear_error(tmp_path, case):
    if case == "one class":
        root, match = write_folder(tmp_path / "f", ("only",), per_class=(2, 1), size=(8, 8)), "at least 2"
    elif case == "mismatch":
        root = write_folder(tmp_path / "f", ("a", "b"), per_class=(2, 1), size=(8, 8))
        write_folder(tmp_path / "f", ("c",), per_class=(0, 1), size=(8, 8))
        match = r"differ from train's .*only in test: \['c'\]"
    else:
        root, match = write_folder(tmp_path / "f", ("a", "b"), per_class=(2, 1), size=(8, 8)), "cannot read image"
        (root / "train" / "a" / "broken.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match=match):
        load_images(root, use_cache=False)
    with pytest.raises(DataError, match=match):  # the streaming path checks the folders the same way
        stream_images(root, heldout=1, num_workers=0)


def test_cache_is_keyed_by_the_settings(five, tmp_path, monkeypatch):
    monkeypatch.setenv("AMC_CACHE", str(tmp_path / "cache"))
    first = load_images(five)
    again = load_images(five)
    small = load_images(five, image_size=32)
    assert np.array_equal(first.train_x, again.train_x) and again.classes == FIVE
    assert small.input_shape == (3, 32, 32) and len(list((tmp_path / "cache").glob("*.npz"))) == 2


def test_validation_folder_is_the_heldout_split(five, tmp_path):
    val = write_folder(tmp_path / "v", FIVE, per_class=(1, 0), size=(64, 64), seed=1) / "train"
    data = load_images(five, val=val, use_cache=False)
    splits = make_splits(data, heldout=5)
    assert splits.size("heldout") == 5 and splits.size("train") == 20  # all of train is kept
    assert sorted(splits.heldout_y.tolist()) == [0, 1, 2, 3, 4]


def batches(loader):
    return [(x.clone(), y.clone()) for x, y in loader]


@pytest.mark.parametrize("workers", [0, 1])
def test_streaming_matches_in_memory(five, workers):
    mem = make_splits(load_images(five, use_cache=False), heldout=5)
    stream = stream_images(five, heldout=5, num_workers=workers)
    assert (stream.classes, stream.input_shape, stream.num_classes) == (mem.classes, mem.input_shape, 5)
    assert np.allclose(stream.mean, mem.mean, rtol=0, atol=1e-12) and np.allclose(stream.std, mem.std, atol=1e-12)
    for split, kw in (("heldout", {}), ("test", {"limit": 7}), ("train", {"seed": 3})):  # train: shuffled, augmented
        a, b = mem.loader(split, 4, **kw), stream.loader(split, 4, **kw)
        assert len(a) == len(b) and stream.size(split) == mem.size(split)
        for _ in range(2):  # re-iterable: a second epoch reshuffles the same way
            for (xa, ya), (xb, yb) in zip(batches(a), batches(b), strict=True):
                assert xb.shape == xa.shape and torch.equal(ya, yb) and torch.allclose(xa, xb, atol=1e-6)


def test_open_data_streams_above_the_threshold(five, monkeypatch):
    assert isinstance(open_data(five, heldout=5), Splits)
    assert isinstance(open_data(five, heldout=5, streaming=True, num_workers=0), StreamingSplits)
    monkeypatch.setattr("amc.data.streaming.STREAM_ABOVE", 30 * 64 * 64 * 3 - 1)  # 30 images of 64x64x3
    assert isinstance(open_data(five, heldout=5), StreamingSplits)


def test_user_dataset_heldout_is_carved_from_train_never_test():
    n, c = 100, 2
    ids = torch.arange(n, dtype=torch.float32)
    x = ids.view(n, 1, 1, 1).expand(n, c, 6, 6).clone()  # each image carries its index
    train = torch.utils.data.TensorDataset(x, torch.arange(n) % 4)
    test = torch.utils.data.TensorDataset(x[:20] + 1000, torch.arange(20) % 4)
    splits = splits_from_torch(train, test=test, device="cpu")
    assert isinstance(splits, TorchSplits) and splits.num_classes == 4 and splits.input_shape == (2, 6, 6)
    assert (splits.size("train"), splits.size("heldout"), splits.size("test")) == (90, 10, 20)

    def seen(split):
        return {int(v) for xb, _ in splits.loader(split, 10, shuffle=False) for v in xb[:, 0, 0, 0]}

    tr, ho = seen("train"), seen("heldout")
    assert not tr & ho and tr | ho == set(range(n)) and min(seen("test")) >= 1000
    again = splits_from_torch(train, test=test, device="cpu")  # a fixed, seeded carve-out
    assert {int(v) for xb, _ in again.loader("heldout", 16) for v in xb[:, 0, 0, 0]} == ho
    xb, yb = next(iter(splits.loader("train", 16)))
    assert xb.shape == (16, 2, 6, 6) and xb.dtype == torch.float32 and yb.dtype == torch.int64
    assert len(splits.loader("train", 16)) == 90 // 16  # drop_last for training

    val = torch.utils.data.TensorDataset(x[:8] + 500, torch.arange(8) % 4)
    given = splits_from_torch(torch.utils.data.DataLoader(train, batch_size=7), val=val, device="cpu")
    assert given.size("train") == n and given.size("heldout") == 8 and given.size("test") == 0
    assert min(int(v) for xb, _ in given.loader("heldout", 4) for v in xb[:, 0, 0, 0]) >= 500
    with pytest.raises(DataError, match="no test data"):
        given.loader("test")
    with pytest.raises(DataError, match="CHW image tensor"):
        splits_from_torch(torch.utils.data.TensorDataset(torch.zeros(10, 4), torch.zeros(10)))


def test_every_source_is_a_data_source(five):
    train = torch.utils.data.TensorDataset(torch.zeros(20, 1, 4, 4), torch.arange(20) % 2)
    for source in (make_splits(load_images(five, use_cache=False), heldout=5),
                   stream_images(five, heldout=5, num_workers=0), splits_from_torch(train, device="cpu")):
        assert isinstance(source, DataSource)
        with pytest.raises(ValueError, match="unknown split"):
            source.loader("validation")


def old_augment(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """The CIFAR-only loader's augmentation, verbatim: crops of the 4-px reflect-padded image, flips."""
    b = x.shape[0]
    padded = F.pad(x, (4, 4, 4, 4), mode="reflect")
    dx = torch.randint(0, 9, (b,), generator=g)
    dy = torch.randint(0, 9, (b,), generator=g)
    flip = torch.rand(b, generator=g) < 0.5
    ar = torch.arange(32)
    rows = (dy[:, None] + ar)[:, None, :, None]
    cols = dx[:, None] + ar
    cols = torch.where(flip[:, None], cols.flip(1), cols)[:, None, None, :]
    return padded[torch.arange(b)[:, None, None, None], torch.arange(3)[None, :, None, None], rows, cols]


def test_cifar_normalisation_and_crops_are_unchanged(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (40, 32, 32, 3), dtype=np.uint8)
    data = Cifar10(x[:30], np.arange(30) % 10, x[30:], np.arange(10))
    splits = make_splits(data, heldout=6)
    assert splits.mean == (0.4914, 0.4822, 0.4465) and splits.std == (0.2470, 0.2435, 0.2616)
    assert splits.classes == CLASSES
    xf = torch.from_numpy(x[:8]).permute(0, 3, 1, 2).float()
    seeded = torch.Generator().manual_seed
    assert torch.equal(crop_flip(xf, seeded(5)), old_augment(xf, seeded(5)))
    # a whole training batch, against the old formula
    loader = splits.loader("train", 8, seed=2)
    got = next(iter(loader))[0]
    g = torch.Generator().manual_seed(2)
    order = torch.randperm(24, generator=g)[:8]
    ref = old_augment(splits.train_x[order].permute(0, 3, 1, 2).float(), g)
    mean = torch.tensor((0.4914, 0.4822, 0.4465)).view(1, 3, 1, 1) * 255
    std = torch.tensor((0.2470, 0.2435, 0.2616)).view(1, 3, 1, 1) * 255
    assert torch.equal(got, (ref - mean) / std)
    assert torch.equal(Loader(splits.train_x, splits.train_y).mean, mean)
    # a folder of CIFAR's ten classes at 32x32 RGB is CIFAR-10: published constants, fixed order
    write_folder(tmp_path / "c", CLASSES, per_class=(1, 1), size=(32, 32))
    folder = load_images(tmp_path / "c", use_cache=False)
    assert isinstance(folder, Cifar10) and folder.mean == splits.mean and folder.classes == CLASSES
    sub = write_folder(tmp_path / "s", ("dog", "cat"), per_class=(1, 1), size=(32, 32))
    assert sorted(load_cifar10(sub, use_cache=False).train_y.tolist()) == [3, 5]  # CIFAR's indices


def test_cli_data_flags(five, tmp_path, monkeypatch):
    import argparse

    from amc.commands import common
    from amc.errors import AmcError

    p = argparse.ArgumentParser()
    common.add_data_args(p)
    args = p.parse_args(["--data", str(five), "--image-size", "32", "--heldout", "5", "--device", "cpu"])
    splits = common.load_splits(args)
    assert splits.input_shape == (3, 32, 32) and splits.num_classes == 5
    assert isinstance(common.load_source(args), Splits)
    monkeypatch.setenv("AMC_DATA", str(five))
    assert common.default_data() == five
    monkeypatch.delenv("AMC_DATA")
    import amc.paths

    monkeypatch.delenv("AMC_SHARED", raising=False)
    monkeypatch.chdir(tmp_path)  # no ../shared beside it
    monkeypatch.setattr(amc.paths, "_SOURCE_SHARED", tmp_path / "not-installed")
    with pytest.raises(AmcError, match="pass --data"):
        common.default_data()

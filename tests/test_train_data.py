import numpy as np
import pytest
import torch

from amc.data import CLASSES, load_cifar10, make_splits
from amc.errors import DataError, TrainingDiverged
from amc.train import FinetuneConfig, evaluate, finetune, recalibrate_bn


def test_shared_archive_decodes(cifar):
    assert cifar.train_x.shape == (50_000, 32, 32, 3) and cifar.train_x.dtype == np.uint8
    assert cifar.test_x.shape == (10_000, 32, 32, 3)
    assert np.bincount(cifar.train_y, minlength=10).tolist() == [5000] * 10
    assert np.bincount(cifar.test_y, minlength=10).tolist() == [1000] * 10


def test_heldout_split_is_deterministic_and_disjoint(tiny_cifar):
    a, b = make_splits(tiny_cifar, heldout=256), make_splits(tiny_cifar, heldout=256)
    assert torch.equal(a.heldout_x, b.heldout_x) and torch.equal(a.test_y, b.test_y)
    assert len(a.train_y) + len(a.heldout_y) == len(tiny_cifar.train_y)
    tr = {bytes(x.numpy().tobytes()) for x in a.train_x}
    assert not any(bytes(x.numpy().tobytes()) in tr for x in a.heldout_x)


def test_loader_batches_and_augments(tiny_splits):
    loader = tiny_splits.loader("train", 100)
    xs = list(loader)
    assert len(xs) == len(loader) == 768 // 100  # drop_last for training
    x, y = xs[0]
    assert x.shape == (100, 3, 32, 32) and x.dtype == torch.float32 and y.shape == (100,)
    assert abs(float(x.mean())) < 0.5
    plain = next(iter(tiny_splits.loader("train", 100, shuffle=False, augment=False)))[0]
    aug = next(iter(tiny_splits.loader("train", 100, shuffle=False, augment=True)))[0]
    assert not torch.equal(plain, aug)
    assert torch.allclose(plain.mean(), aug.mean(), atol=0.1)


def test_image_folder_and_missing_paths(tmp_path):
    from PIL import Image

    for split in ("train", "test"):
        for c in CLASSES[:2]:
            d = tmp_path / "f" / split / c
            d.mkdir(parents=True)
            for i in range(3):
                Image.new("RGB", (32, 32), (i * 40, 0, 0)).save(d / f"{i}.png")
    data = load_cifar10(tmp_path / "f", use_cache=False)
    assert data.train_x.shape == (6, 32, 32, 3) and sorted(set(data.train_y.tolist())) == [0, 1]
    with pytest.raises(DataError, match="does not exist"):
        load_cifar10(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="empty"):
        load_cifar10(tmp_path / "empty")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "x.txt").write_text("hi")
    with pytest.raises(DataError, match="no train images"):
        load_cifar10(tmp_path / "other", use_cache=False)


def test_corrupt_archive(tmp_path):
    bad = tmp_path / "bad.tar.xz"
    bad.write_bytes(b"not an archive")
    with pytest.raises(DataError, match="cannot read archive"):
        load_cifar10(bad, use_cache=False)


def test_finetune_improves_and_evaluate_is_in_range(tiny_vgg, tiny_splits):
    test = tiny_splits.loader("test", 256)
    before = evaluate(tiny_vgg, test)
    finetune(tiny_vgg, tiny_splits.loader("train", 64), FinetuneConfig(epochs=3, lr=0.05))
    after = evaluate(tiny_vgg, test)
    assert 0 <= before <= 1 and after > before


def test_nan_loss_raises(tiny_vgg, tiny_splits):
    with torch.no_grad():
        tiny_vgg.classifier.weight.fill_(float("nan"))
    with pytest.raises(TrainingDiverged, match="loss became nan"):
        finetune(tiny_vgg, tiny_splits.loader("train", 64), FinetuneConfig(epochs=1))


def test_bn_recalibration_sets_running_stats(tiny_vgg, tiny_splits):
    bn = tiny_vgg.backbone.bn0
    assert torch.all(bn.running_mean == 0)
    recalibrate_bn(tiny_vgg, tiny_splits.loader("heldout", 64))
    assert not torch.all(bn.running_mean == 0)
    assert bn.momentum == 0.1 and not tiny_vgg.training


def test_distillation_from_a_teacher_trains(tiny_vgg, tiny_splits):
    from tests.conftest import make_tiny_vgg

    teacher = make_tiny_vgg()
    finetune(teacher, tiny_splits.loader("train", 64), FinetuneConfig(epochs=2, lr=0.05))
    test = tiny_splits.loader("test", 256)
    before = evaluate(tiny_vgg, test)
    cfg = FinetuneConfig(epochs=2, lr=0.05, distill_weight=0.5)
    stats = finetune(tiny_vgg, tiny_splits.loader("train", 64), cfg, teacher=teacher)
    assert evaluate(tiny_vgg, test) > before and stats["last_loss"] > 0
    assert not teacher.training

"""The detection benchmark's synthetic data set (numpy and torch only) and, where the optional extras
are installed, its mAP glue (ultralytics' NMS + torchmetrics) on predictions built from the truth."""

import pytest
import torch

from benchmarks.detection_data import CLASSES, load_or_make, make_split


def test_split_is_deterministic_per_seed():
    a, b, c = make_split(6, seed=3, size=64), make_split(6, seed=3, size=64), make_split(6, seed=4, size=64)
    assert torch.equal(a.images, b.images) and torch.equal(a.boxes, b.boxes) and torch.equal(a.classes, b.classes)
    assert not torch.equal(a.images, c.images)


def test_boxes_classes_and_index_are_consistent():
    s = make_split(20, seed=0, size=64, max_objects=4)
    assert s.images.shape == (20, 3, 64, 64) and s.images.dtype == torch.uint8
    assert len(s.boxes) == len(s.classes) == len(s.index)
    assert torch.all(s.boxes[:, 0] >= 0) and torch.all(s.boxes[:, 1] >= 0)
    assert torch.all(s.boxes[:, 2] <= 64) and torch.all(s.boxes[:, 3] <= 64)
    assert torch.all(s.boxes[:, 2] > s.boxes[:, 0]) and torch.all(s.boxes[:, 3] > s.boxes[:, 1])
    assert set(s.classes.tolist()) <= set(range(len(CLASSES)))
    per_image = torch.bincount(s.index, minlength=20)
    assert torch.all(per_image >= 1) and torch.all(per_image <= 4)
    assert torch.all(s.index[1:] >= s.index[:-1])
    boxes, classes = s.targets(5)
    assert len(boxes) == int(per_image[5]) and len(classes) == len(boxes)


def test_batch_targets_are_sorted_by_position_in_the_batch():
    s = make_split(10, seed=1, size=64)
    idx = torch.tensor([7, 2, 9])
    boxes, classes, where = s.batch_targets(idx)
    assert torch.all(where[1:] >= where[:-1])
    for pos, i in enumerate(idx.tolist()):
        b, c = s.targets(i)
        assert torch.equal(boxes[where == pos], b) and torch.equal(classes[where == pos], c)


def test_splits_are_cached_and_read_back(tmp_path):
    first = load_or_make(tmp_path, {"train": 4, "val": 3}, seed=0, size=32)
    files = sorted(p.name for p in tmp_path.glob("*.npz"))
    assert len(files) == 2
    again = load_or_make(tmp_path, {"train": 4, "val": 3}, seed=0, size=32)
    assert torch.equal(first["train"].images, again["train"].images)
    assert torch.equal(first["val"].boxes, again["val"].boxes)
    assert not torch.equal(first["train"].images[:3], first["val"].images)  # each split its own stream


def test_map_of_the_truth_is_one():
    pytest.importorskip("ultralytics")
    pytest.importorskip("torchmetrics")
    pytest.importorskip("pycocotools")
    from torch import nn

    from benchmarks.detection import mean_ap

    split = make_split(8, seed=2, size=64)

    class Oracle(nn.Module):
        """Returns YOLOv8's decoded format (batch, 4 + classes, anchors): the true boxes as xywh, one
        anchor per object with its class at 0.9, the other anchors empty."""

        def forward(self, x):
            n = x.shape[0]
            out = torch.zeros(n, 4 + len(CLASSES), 8)
            for i in range(n):
                b, c = split.targets(self.offset + i)
                xywh = torch.stack([(b[:, 0] + b[:, 2]) / 2, (b[:, 1] + b[:, 3]) / 2, b[:, 2] - b[:, 0],
                                    b[:, 3] - b[:, 1]], 1)
                out[i, :4, :len(b)] = xywh.T
                out[i, 4 + c, torch.arange(len(b))] = 0.9
            self.offset += n
            return out

    oracle = Oracle()
    oracle.offset = 0
    got = mean_ap(oracle, split, batch=8)
    assert got["map50"] == pytest.approx(1.0) and got["map50_95"] == pytest.approx(1.0)


def test_folded_sppf_computes_the_same_function():
    pytest.importorskip("ultralytics")
    from ultralytics.nn.modules.block import SPPF

    from benchmarks.detection import SPPFSum

    torch.manual_seed(0)
    sppf = SPPF(16, 24).eval()
    for bn in (sppf.cv1.bn, sppf.cv2.bn):
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
    for attr, v in (("f", -1), ("i", 9), ("type", "SPPF"), ("np", 0)):
        setattr(sppf, attr, v)
    folded = SPPFSum(sppf).eval()
    x = torch.randn(2, 16, 12, 12)
    with torch.no_grad():
        assert torch.allclose(sppf(x), folded(x), atol=1e-5)
    assert len(folded.parts) == 4 and all(p.in_channels == 8 for p in folded.parts)

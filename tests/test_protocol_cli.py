"""The command line's data loading records its protocol, and ``amc compress`` hands it to the recipe."""

from __future__ import annotations

import argparse

import torch
from torch import nn

import amc.api
from amc.commands.common import load_source_recorded
from tests.test_data_any import write_folder

CLASSES = ("a", "b", "c")


def _args(path, **kw) -> argparse.Namespace:
    base = dict(data=str(path), image_size=None, val=None, heldout=None, protocol="auto", device="cpu")
    return argparse.Namespace(**{**base, **kw})


def test_auto_halves_the_test_set_and_says_so(tmp_path):
    root = write_folder(tmp_path / "d", CLASSES, per_class=(6, 4), size=(16, 16))
    source, record = load_source_recorded(_args(root))
    assert record is not None and record.protocol == "test-halves" and record.val_sha256 and record.test_sha256
    assert (record.val_images, record.test_images) == (source.size("heldout"), source.size("test"))
    assert record.val_images + record.test_images == 12  # 4 test images x 3 classes, train untouched
    assert source.size("train") == 18


def test_an_explicit_heldout_is_the_heldout_protocol(tmp_path):
    root = write_folder(tmp_path / "d", CLASSES, per_class=(6, 4), size=(16, 16))
    source, record = load_source_recorded(_args(root, heldout=3))
    assert record is not None and record.protocol == "heldout" and record.val_sha256 is None
    assert (record.val_images, record.test_images) == (3, 12) == (source.size("heldout"), source.size("test"))


def test_compress_puts_the_given_record_into_the_recipe_data(tmp_path, monkeypatch):
    root = write_folder(tmp_path / "d", CLASSES, per_class=(6, 4), size=(16, 16))
    source, record = load_source_recorded(_args(root))
    seen = {}
    monkeypatch.setattr(amc.api, "compress_model", lambda *a, **kw: seen.update(kw))
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3))
    amc.api.compress(model, "macs=0.5", data=source, run_dir=tmp_path / "run", data_record=record,
                     example_inputs=torch.zeros(1, 3, 16, 16))
    info = seen["data"]
    assert (info.protocol, info.val_sha256, info.test_sha256) == ("test-halves", record.val_sha256, record.test_sha256)

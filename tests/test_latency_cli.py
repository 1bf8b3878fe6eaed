"""``amc latency`` on a fake runtime: the target's description, the paired line, one clear error."""

from __future__ import annotations

import pytest
import torch

from amc.cli import main
from amc.latency import FakeRuntime, use_runtime
from amc.models import resolve_model


@pytest.fixture
def ckpt(tmp_path):
    path = tmp_path / "resnet20.pt"
    torch.save(resolve_model("resnet20").state_dict(), path)
    return str(path)


def test_latency_paired_against_itself(ckpt, capsys):
    fake = FakeRuntime(ms_per_mmac=0.1, overhead_ms=0.5)
    with use_runtime(fake):
        assert main(["latency", ckpt, "--model", "resnet20", "--runs", "2", "--warmup", "0",
                     "--against", ckpt, "--rounds", "3"]) == 0
    out = capsys.readouterr().out
    assert "cpu torch 1 thread bs1 3x32x32 contiguous" in out
    assert "1.00x faster (1.000 of dense, +-0.000 over 3 paired rounds" in out
    assert fake.calls == 1 + 2 + 2 * 3  # the model once, then warm-up and 3 rounds of both sides


def test_latency_rejects_a_bad_shape(ckpt, capsys):
    assert main(["latency", ckpt, "--model", "resnet20", "--input-shape", "3,x"]) != 0
    assert "--input-shape" in capsys.readouterr().err

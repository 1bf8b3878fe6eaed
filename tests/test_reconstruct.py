import copy
import json

import pytest
import torch
from torch import nn

from amc.models import build_model
from amc.pruners.channel import ChannelPlan, plan_channels, prune_channels, uniform_policy
from amc.pruners.reconstruct import _rows, reconstruct
from tests.conftest import make_tiny_resnet, make_tiny_vgg
from tests.test_channel import _cli, image_folder, randomise_bn  # noqa: F401  (image_folder: a fixture)


def _batches(n: int, seed: int, bs: int = 32):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(bs, 3, 32, 32, generator=g), torch.zeros(bs, dtype=torch.long)) for _ in range(n)]


@pytest.mark.parametrize(("stride", "dilation", "padding", "bias"),
                         [(1, 1, 1, False), (2, 1, 1, True), (1, 2, 2, False), (2, 1, 0, True)])
def test_sampled_rows_reproduce_the_convolution(stride, dilation, padding, bias):
    """Each sampled patch times the flattened filters is the conv's output at that position."""
    torch.manual_seed(0)
    conv = nn.Conv2d(5, 7, 3, stride=stride, padding=padding, dilation=dilation, bias=bias)
    x = torch.randn(4, 5, 11, 11)
    y = conv(x).detach()
    a, b = _rows(conv, x, y, positions=9, gen=torch.Generator().manual_seed(0))
    assert a.shape == (36, 5 * 9) and b.shape == (36, 7)
    pred = a @ conv.weight.detach().reshape(7, -1).T + (conv.bias.detach() if bias else 0)
    torch.testing.assert_close(pred, b, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("make", [make_tiny_vgg, make_tiny_resnet], ids=["vgg", "resnet"])
def test_reconstruction_brings_the_pruned_model_closer_to_dense(make):
    dense = randomise_bn(make())
    plan = plan_channels(dense, uniform_policy(dense, 0.5), "l2", round_to=1)
    small = prune_channels(dense, plan)
    fixed = copy.deepcopy(small)
    rep = reconstruct(dense, fixed, plan, _batches(4, seed=0), images=128, positions=16)
    # every layer that lost input channels was refitted, with a lower error on its samples
    lost = [n for n, m in small.named_modules()
            if isinstance(m, nn.Conv2d) and m.in_channels < dense.get_submodule(n).in_channels]
    assert lost and set(lost) <= set(rep.layers)
    for before, after in rep.layers.values():
        assert after < before
    # on fresh inputs the logits move towards the dense model's
    x = _batches(1, seed=1, bs=64)[0][0]
    with torch.no_grad():
        ref = dense(x)
        err_plain = (small(x) - ref).pow(2).mean()
        err_fixed = (fixed(x) - ref).pow(2).mean()
    assert err_fixed < 0.7 * err_plain


def test_nothing_pruned_refits_nothing():
    dense = make_tiny_vgg()
    small = copy.deepcopy(dense)
    rep = reconstruct(dense, small, ChannelPlan({}), _batches(1, seed=0), images=32)
    assert rep.layers == {}
    for a, b in zip(dense.state_dict().values(), small.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_grouped_convolutions_are_left_alone_with_a_note():
    torch.manual_seed(0)
    dense = build_model("mobilenet_v2").eval()
    plan = plan_channels(dense, uniform_policy(dense, 0.25), "l2", round_to=8)
    small = prune_channels(dense, plan)
    depthwise = {n: m.weight.clone() for n, m in small.named_modules()
                 if isinstance(m, nn.Conv2d) and m.groups > 1}
    rep = reconstruct(dense, small, plan, _batches(1, seed=0, bs=4), images=4, positions=4)
    assert rep.layers and all(n not in rep.layers for n in depthwise)
    for n, w in depthwise.items():
        assert torch.equal(small.get_submodule(n).weight, w)


def test_cli_reconstruct(capsys, tmp_path, image_folder, monkeypatch):  # noqa: F811
    monkeypatch.setenv("AMC_CACHE", str(tmp_path / "cache"))
    ckpt = tmp_path / "vgg8_random.pt"
    torch.manual_seed(0)
    torch.save(randomise_bn(build_model("vgg8")).state_dict(), ckpt)
    args = ["prune", ckpt, "--granularity", "channel", "--macs", "0.5", "--data", image_folder,
            "--heldout", "50", "--device", "cpu", "--batch-size", "64"]
    rc, stdout, err = _cli(capsys, *args, "--reconstruct", "64", "--out", tmp_path / "run")
    assert rc == 0, err
    rec = json.loads((tmp_path / "run" / "summary.json").read_text())["reconstruction"]
    assert rec["images"] == 64 and "backbone.conv1" in rec["layers"]
    assert all(v["rel_error_after"] < v["rel_error_before"] for v in rec["layers"].values())
    assert "least-squares reconstruction from 64 images" in stdout
    rc, _, err = _cli(capsys, *args, "--reconstruct", "-1", "--out", tmp_path / "bad")
    assert rc == 2 and "--reconstruct" in err and len(err.strip().splitlines()) == 1


def test_too_few_samples_leave_the_layer_as_pruned_with_a_note():
    dense = randomise_bn(make_tiny_vgg())
    plan = plan_channels(dense, uniform_policy(dense, 0.5), "l2", round_to=1)
    small = prune_channels(dense, plan)
    before = {k: v.clone() for k, v in small.state_dict().items()}
    # one image: the last conv (2x2 feature map, 4 positions) has 8 x 9 = 72 unknowns
    rep = reconstruct(dense, small, plan, _batches(1, seed=0, bs=1), images=1)
    assert "backbone.conv2" not in rep.layers
    assert any(n.startswith("backbone.conv2: left as pruned") for n in rep.notes)
    assert torch.equal(small.get_submodule("backbone.conv2").weight, before["backbone.conv2.weight"])

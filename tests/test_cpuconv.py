"""The guard around oneDNN's strided 1x1 backward bug (see amc/cpuconv.py).

The gradient check runs in a subprocess with a timeout: without the guard the broken kernel can
hang (one OpenMP thread spinning, the others at a barrier), and a hang must fail this test in
seconds instead of stalling the suite.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from torch import nn

from amc.cpuconv import guarded, hazards, is_hazard, training_layout

ROOT = Path(__file__).resolve().parents[1]

# A channel-pruned tiny ResNet: round_to=4 at 50% turns layer2.0's downsample into Conv2d(4, 8, 1, stride=2),
# the shape that hung and gave wrong weight gradients on an AVX2 CPU. One finetune step of plain SGD (lr 1,
# no momentum, decay or label smoothing) moves each weight by minus its gradient: compared with the gradient
# of a float64 contiguous copy of the same model on the same batch.
SCRIPT = textwrap.dedent("""
    import copy, json, sys
    import torch
    from torch import nn
    from amc.pruners.channel import plan_channels, prune_channels
    from amc.layers import prunable_names
    from amc.models import CifarResNet
    from amc.train import FinetuneConfig, finetune

    torch.manual_seed(0)
    dense = CifarResNet(8, widths=(8, 16, 16)).eval()
    policy = dict.fromkeys([n for n in prunable_names(dense) if n != "fc"], 0.5)
    x = torch.randn(8, 3, 32, 32)
    plan = plan_channels(dense, policy, round_to=4, example_inputs=x[:2])
    small = prune_channels(dense, plan, example_inputs=x[:2])
    shortcut = small.get_submodule("layer2.0.downsample.0")
    y = torch.randint(0, 10, (8,))

    ref = copy.deepcopy(small).double().train()
    nn.functional.cross_entropy(ref(x.double()), y).backward()
    before = {k: v.detach().clone() for k, v in small.named_parameters()}
    cfg = FinetuneConfig(epochs=1, lr=1.0, momentum=0.0, nesterov=False, weight_decay=0.0, label_smoothing=0.0,
                         schedule="constant")
    finetune(small, [(x, y)], cfg)
    errors = {}
    for name, p in ref.named_parameters():
        step = (before[name] - dict(small.named_parameters())[name].detach()).double()
        errors[name] = float((step - p.grad).abs().max() / p.grad.abs().max().clamp_min(1e-12))
    print(json.dumps({"shortcut": [shortcut.in_channels, shortcut.out_channels, list(shortcut.stride)],
                      "errors": errors}))
""")


def _run(env_extra: dict[str, str], timeout: float = 60) -> dict:
    env = {**os.environ, **env_extra, "PYTHONPATH": str(ROOT)}
    try:
        out = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=timeout,
                             env=env, cwd=ROOT)
    except subprocess.TimeoutExpired:
        pytest.fail(f"one finetune step did not finish in {timeout} s: the oneDNN strided 1x1 hang")
    assert out.returncode == 0, f"finetune step crashed (rc {out.returncode}): {out.stderr[-2000:]}"
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_finetune_gradients_of_a_pruned_strided_shortcut_match_float64():
    res = _run({"AMC_CONV_GUARD": "1"})
    assert res["shortcut"] == [4, 8, [2, 2]]  # the hazardous shape is really there
    worst = max(res["errors"], key=res["errors"].get)
    # float32 vs float64 through BN in train mode: relative errors ~1e-6; the broken kernel gives 0.5-100
    assert res["errors"][worst] < 1e-3, f"{worst}: weight step off the reference by {res['errors'][worst]:.3g}"
    assert "layer2.0.downsample.0.weight" in res["errors"]


@pytest.mark.parametrize(("conv", "hazard"), [
    (nn.Conv2d(4, 16, 1, stride=2), True),
    (nn.Conv2d(15, 16, 1, stride=2), True),
    (nn.Conv2d(4, 16, 1, padding=1), True),  # padding also takes oneDNN's reduce-to-unit-stride path
    (nn.Conv2d(16, 16, 1, stride=2), False),
    (nn.Conv2d(4, 16, 1), False),  # unit stride: no rtus workspace
    (nn.Conv2d(4, 16, 3, stride=2), False),
    (nn.Conv2d(32, 32, 1, stride=2, groups=4), True),  # 8 input channels per group
])
def test_is_hazard(conv, hazard):
    assert is_hazard(conv) is hazard


def _net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 16, 1, stride=2),
                         nn.Conv2d(16, 8, 3)).train()


def test_training_layout_keeps_the_hazard_contiguous_and_shares_storage_on_a_second_call():
    net = training_layout(_net())
    assert hazards(net) == ["3"]
    assert net[3].weight.stride() == (4, 1, 1, 1)  # a 1x1 kernel is "contiguous" in both formats: strides tell
    for i in (0, 4):
        assert net[i].weight.is_contiguous(memory_format=torch.channels_last)
    ptrs = [p.data_ptr() for p in net.parameters()]
    training_layout(net)
    assert [p.data_ptr() for p in net.parameters()] == ptrs


def test_guarded_feeds_the_hazard_contiguous_inputs_and_removes_its_hooks():
    net = _net()
    seen: list[bool] = []
    net[3].register_forward_hook(lambda m, args, out: seen.append(args[0].is_contiguous()))
    x = torch.randn(2, 3, 16, 16).contiguous(memory_format=torch.channels_last)
    with guarded(net):
        net(x)
    assert seen == [True]
    net(x)
    assert seen == [True, False]  # the pre-hook is gone after the block


def test_guard_off_leaves_the_hazard_in_channels_last(monkeypatch):
    monkeypatch.setenv("AMC_CONV_GUARD", "0")
    net = _net()
    seen: list[bool] = []
    net[3].register_forward_hook(lambda m, args, out: seen.append(args[0].is_contiguous()))
    with guarded(net):
        net(torch.randn(2, 3, 16, 16))
    assert seen == [False]
    assert net[0].weight.is_contiguous(memory_format=torch.channels_last)

"""The latency table on depthwise-separable networks: a depthwise conv's groups follow its channels."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from amc.latency import LatencyTable, _block
from amc.pruners.channel import channel_table, plan_channels, prune_channels, uniform_policy


def make_tiny_mobile() -> nn.Module:
    """Stem, an inverted residual (1x1 expand, 3x3 depthwise, 1x1 project, residual add), a strided
    depthwise-separable block and a linear head: the layer kinds of MobileNetV2, widths 8-24."""

    class Tiny(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU6())
            self.expand = nn.Sequential(nn.Conv2d(8, 24, 1, bias=False), nn.BatchNorm2d(24), nn.ReLU6())
            self.dw = nn.Sequential(nn.Conv2d(24, 24, 3, padding=1, groups=24, bias=False), nn.BatchNorm2d(24),
                                    nn.ReLU6())
            self.project = nn.Sequential(nn.Conv2d(24, 8, 1, bias=False), nn.BatchNorm2d(8))
            self.dw2 = nn.Sequential(nn.Conv2d(8, 8, 3, stride=2, padding=1, groups=8, bias=False),
                                     nn.BatchNorm2d(8), nn.ReLU6(), nn.Conv2d(8, 16, 1, bias=False),
                                     nn.BatchNorm2d(16), nn.ReLU6())
            self.head = nn.Linear(16, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = self.stem(x)
            x = x + self.project(self.dw(self.expand(x)))
            return self.head(self.dw2(x).mean((2, 3)))

    torch.manual_seed(0)
    return Tiny().eval()


@pytest.mark.parametrize("ratio", [0.3, 0.5, 0.75])
def test_every_key_of_a_pruned_depthwise_model_builds_and_runs(ratio):
    model = make_tiny_mobile()
    x = torch.zeros(1, 3, 16, 16)
    table = channel_table(model, x)
    plan = plan_channels(model, uniform_policy(table, ratio), example_inputs=x)
    keys = LatencyTable.layer_keys(table, plan.counts())
    dw = [k for k in keys if k[0] == "dwconv"]
    assert dw and all(k[1] == k[2] == k[7] for k in dw)  # in = out = groups after pruning
    assert any(k[2] < 24 for k in dw)  # and the depthwise layers were really pruned
    for key in keys:  # each block is a valid module that runs on its input (no timing here)
        kind, cin, _, h, w, *_ = key
        _block(key)(torch.zeros(1, cin) if kind == "linear" else torch.zeros(1, cin, h, w))
    # the plan's keys are the pruned model's own keys
    small = prune_channels(model, plan, x)
    assert keys == LatencyTable.layer_keys(channel_table(small, x))


def test_the_table_predicts_a_pruned_depthwise_model(monkeypatch):
    model = make_tiny_mobile()
    x = torch.zeros(1, 3, 16, 16)
    table = channel_table(model, x)
    lut = LatencyTable(None, "cpu")
    monkeypatch.setattr(lut, "_measure_key", lambda key: 0.001 * key[1] * key[2] / key[7] + 0.01)
    cost = lut.counts_cost(table)
    plan = plan_channels(model, uniform_policy(table, 0.5), example_inputs=x)
    assert 0 < cost(plan.counts()) < cost({})
    assert lut.predict(model, plan, input_shape=(3, 16, 16)) == pytest.approx(cost(plan.counts()))

"""The analytic cost model against the pruned model's counted MACs and parameters, on graphs where a
group maps onto a module through a concatenation of itself (an SPPF block) or of several groups."""

import torch
from torch import nn

from amc.layers import count_macs, count_params
from amc.pruners.channel import channel_table, plan_channels, plan_cost, prune_channels, uniform_policy


def _cbr(i: int, o: int, k: int = 3) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(i, o, k, padding=k // 2, bias=False), nn.BatchNorm2d(o), nn.ReLU())


class SppfNeck(nn.Module):
    """YOLO's SPPF (one group's channels concatenated four times after max-pools) and a neck that
    concatenates two groups before a convolution."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = _cbr(3, 16)
        self.a, self.b = _cbr(16, 16), _cbr(16, 24)
        self.cv1 = _cbr(40, 16, 1)
        self.pool = nn.MaxPool2d(5, 1, 2)
        self.cv2 = _cbr(64, 32, 1)
        self.head = nn.Conv2d(32, 10, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = self.cv1(torch.cat([self.a(x), self.b(x)], 1))
        y1 = self.pool(x)
        y2 = self.pool(y1)
        return self.head(self.cv2(torch.cat([x, y1, y2, self.pool(y2)], 1)))


def test_cost_model_matches_the_pruned_model_through_repeated_and_mixed_concatenations() -> None:
    torch.manual_seed(0)
    model = SppfNeck().eval()
    x = torch.randn(1, 3, 16, 16)
    table = channel_table(model, x)
    for ratio in (0.25, 0.5, 0.75):
        plan = plan_channels(model, uniform_policy(table, ratio), round_to=1, example_inputs=x)
        pruned = prune_channels(model, plan, x)
        predicted = plan_cost(table, plan)
        assert predicted["macs"] == count_macs(pruned, tuple(x.shape))[0]
        assert predicted["params"] == count_params(pruned)

"""The prunability check, the one-shot pruner to a budget, and ``amc inspect``."""

import pytest
import torch
from torch import nn

from amc.cli import main
from amc.errors import AmcError
from amc.inspect import inspect_model
from amc.layers import count_macs, layer_table
from amc.pruners.oneshot import prune_to_budget


class Mixed(nn.Module):
    """A residual add, a depthwise conv, a concat and a flatten + linear head, widths 8/16."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.a = nn.Conv2d(8, 8, 3, padding=1)  # added to the stem's output: coupled with it
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)  # depthwise: pruned with its producer
        self.b = nn.Conv2d(8, 16, 1)
        self.c = nn.Conv2d(8, 16, 1)  # concatenated with b
        self.head = nn.Linear(32 * 4 * 4, 5)

    def forward(self, x):
        s = torch.relu(self.stem(x))
        r = torch.relu(self.a(s) + s)
        d = self.dw(r)
        y = torch.cat([self.b(d), self.c(r)], 1)
        return self.head(nn.functional.adaptive_avg_pool2d(y, 4).flatten(1))


def test_inspect_lists_held_layers_with_reasons():
    report = inspect_model(Mixed(), torch.randn(1, 3, 16, 16))
    by = {la.name: la for la in report.layers}
    assert set(by) == {"stem", "a", "dw", "b", "c", "head"}
    assert not by["head"].prunable and "output layer" in by["head"].reason
    assert by["a"].prunable and by["a"].group == by["stem"].group and "coupled group with" in by["a"].reason
    assert by["dw"].prunable and "depthwise" in by["dw"].reason
    # torch-pruning 1.6 maps the concat before the flatten as if b and c were added: pruning them
    # would break the head, so the check holds them, naming the error it saw
    assert not by["b"].prunable and "breaks the forward pass" in by["b"].reason
    assert set(report.held()) == {"head", "b", "c"}
    assert report.dense_macs == count_macs(Mixed(), (1, 3, 16, 16))[0]
    assert by["stem"].out_hw == (16, 16) and by["stem"].macs == 3 * 8 * 9 * 16 * 16


def test_layer_table_uses_the_given_shape_not_32x32():
    table = {li.name: li for li in layer_table(Mixed(), (1, 3, 24, 24))}
    assert table["stem"].in_hw == (24, 24)
    x = torch.randn(1, 3, 40, 40)
    assert {li.name: li for li in layer_table(Mixed(), example_inputs=x)}["stem"].out_hw == (40, 40)


def test_a_model_that_fails_on_its_inputs_is_one_clear_error():
    with pytest.raises(AmcError, match=r"fails on example inputs of shape \(1, 4, 16, 16\): RuntimeError"):
        inspect_model(Mixed(), torch.randn(1, 4, 16, 16))


class OnlyHead(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(12, 3)

    def forward(self, x):
        return self.fc(x.flatten(1))


def test_a_model_with_nothing_prunable_is_one_clear_error():
    with pytest.raises(AmcError, match=r"no layer whose output channels can be pruned.*fc: output layer"):
        inspect_model(OnlyHead(), torch.randn(1, 3, 2, 2))


@pytest.mark.parametrize("mode", ["uniform", "global"])
def test_prune_to_budget_meets_half_the_macs_at_64px(mode):
    import torchvision

    model = torchvision.models.mobilenet_v3_small(num_classes=10).eval()
    x = torch.randn(1, 3, 64, 64)
    small, info = prune_to_budget(model, x, "macs=0.5", mode=mode)
    assert info.met and info.macs_fraction <= 0.5
    assert info.macs == count_macs(small, example_inputs=x)[0]  # measured on the pruned model itself
    assert info.dense_macs == count_macs(model, example_inputs=x)[0]  # at 64x64, not 32x32
    assert small.eval()(x).shape == model(x).shape == (1, 10)


def test_prune_to_budget_says_when_the_budget_is_out_of_reach():
    _, info = prune_to_budget(Mixed(), torch.randn(1, 3, 16, 16), "macs=0.05")
    assert not info.met and "not met" in info.notes[-1]
    assert "largest held: " in info.notes[-1]  # the layers that keep the cost up, with their reasons
    held = info.notes[-1].split("largest held: ")[1]
    assert any(name in held and why in held for name, why in info.held.items())


def test_amc_inspect_command(capsys):
    assert main(["inspect", "resnet20", "--input-size", "3,16,16"]) == 0
    out = capsys.readouterr().out
    assert "fc" in out and "output layer" in out
    assert main(["inspect", "tests.test_inspect:Mixed", "--input-size", "3,16,16", "--json"]) == 0
    assert '"prunable_macs_share"' in capsys.readouterr().out


@pytest.mark.parametrize("argv", [["inspect", "no_such_net"], ["inspect", "resnet20", "--input-size", "3,abc"],
                                  ["inspect", "tests.test_inspect:OnlyHead", "--input-size", "3,2,2"]])
def test_amc_inspect_bad_input_exits_2(argv, capsys):
    assert main(argv) == 2
    assert capsys.readouterr().err.count("\n") == 1


def test_detached_ends_and_groupnorm_holds_are_named():
    from tests.test_channel_ends import GroupNormAfterConcat, ProposalDetector

    held = inspect_model(ProposalDetector().eval(), torch.randn(1, 3, 32, 32)).held()
    assert held["rpn_score"].startswith("detached end (") and "rpn_conv" not in held
    held = inspect_model(GroupNormAfterConcat().eval(), torch.randn(1, 3, 16, 16)).held()
    assert held["a"].startswith("group normalisation: ")

"""How the channel tracer copes with graphs torch-pruning cannot map: held with a reason, quickly."""

from collections import OrderedDict

import pytest
import torch
from torch import nn

from amc.errors import PolicyError
from amc.pruners import channel
from amc.pruners.channel import graph


class ConvFlattenHead(nn.Module):
    """conv -> conv -> flatten -> linear: the second conv's channels reach the head through a flatten."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3, padding=1)
        self.b = nn.Conv2d(8, 8, 3, padding=1)
        self.fc = nn.Linear(8 * 8 * 8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(torch.relu(self.b(torch.relu(self.a(x)))), 1))


def test_flatten_groups_prune_under_the_default_mapping_limit():
    table = channel.channel_table(ConvFlattenHead(), torch.randn(1, 3, 8, 8))
    assert "b" in table.group_of and "a" in table.group_of


def test_a_mapping_past_the_limit_holds_that_group_with_a_reason(monkeypatch):
    # the flatten maps each of b's 8 channels to 64 inputs of fc: 512 indices, above a limit of 100
    monkeypatch.setattr(graph, "MAPPING_LIMIT", 100)
    monkeypatch.setattr(graph, "_CACHE", OrderedDict())  # tables are cached per architecture
    table = channel.channel_table(ConvFlattenHead(), torch.randn(1, 3, 8, 8))
    assert "b" not in table.group_of
    assert "does not settle" in table.unprunable["b"] and "100" in table.unprunable["b"]
    assert "a" in table.group_of  # a's group ends at b's input channels: no flatten, still prunable


def test_the_mapping_patches_are_undone_after_tracing():
    from torch_pruning import DependencyGraph
    from torch_pruning.dependency import index_mapping

    before = (index_mapping.update_index_mapping, index_mapping.update_reshape_index_mapping,
              index_mapping.update_concat_index_mapping, index_mapping._FlattenIndexMapping.__call__,
              DependencyGraph._trace)
    channel.channel_table(ConvFlattenHead(), torch.randn(1, 3, 8, 8))
    after = (index_mapping.update_index_mapping, index_mapping.update_reshape_index_mapping,
             index_mapping.update_concat_index_mapping, index_mapping._FlattenIndexMapping.__call__,
             DependencyGraph._trace)
    assert before == after


class FunctionalUse(nn.Module):
    """``proj``'s weight is used through ``F.linear``, its module never called (torchvision's Swin
    attention does this with qkv and proj)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.proj = nn.Linear(8, 8)
        self.head = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.conv(x)).mean((2, 3))
        return self.head(torch.nn.functional.linear(h, self.proj.weight, self.proj.bias))


def test_a_layer_used_only_through_its_weight_is_held_and_the_reason_says_so(monkeypatch):
    monkeypatch.setattr(graph, "_CACHE", OrderedDict())
    table = channel.channel_table(FunctionalUse(), torch.randn(1, 3, 8, 8))
    assert "proj" not in table.group_of
    assert "functional call" in table.unprunable["proj"]


class SubsampledTokens(nn.Module):
    """LeViT's pattern: conv stem -> tokens ``(B, N, C)`` -> a residual token mixer -> a subsampling
    ``view(B, H, W, C)[:, ::2, ::2].reshape(B, -1, C)`` -> a linear. torch-pruning maps only half of the
    stem's channels into ``q`` through that reshape, so pruning them cut ``q``'s input by another count
    (a bare "mat1 and mat2 shapes cannot be multiplied" at the first forward)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.bn = nn.BatchNorm2d(16)
        self.mix = nn.Linear(16, 16)
        self.q = nn.Linear(16, 8)
        self.head = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.bn(self.stem(x))
        b, c, h, w = x.shape
        t = x.flatten(2).transpose(1, 2)
        t = t + self.mix(t)
        t = t.view(b, h, w, c)[:, ::2, ::2].reshape(b, -1, c)
        return self.head(self.q(t).mean(1))


def test_a_group_mapped_only_in_part_through_a_reshape_is_held_and_the_model_prunes(monkeypatch):
    monkeypatch.setattr(graph, "_CACHE", OrderedDict())
    model, x = SubsampledTokens().eval(), torch.randn(1, 3, 8, 8)
    table = channel.channel_table(model, x)
    for held in ("stem", "mix"):  # one residual token stream: one group, held
        assert held not in table.group_of
        assert "breaks the forward pass (torch-pruning maps only 8 of its 16 channels into q" in table.unprunable[held]
    assert "q" in table.group_of  # q's own outputs still prune
    plan = channel.plan_channels(model, channel.uniform_policy(table, 0.5), "l2", 1)
    pruned = channel.prune_channels(model, plan, x)
    assert pruned.q.out_features == 4 and pruned.stem.out_channels == 16
    assert pruned(x).shape == model(x).shape


def test_a_pruned_model_that_fails_names_the_layer():
    broken = nn.Sequential(OrderedDict(body=nn.Sequential(OrderedDict(fc1=nn.Linear(4, 3), fc2=nn.Linear(5, 2)))))
    with pytest.raises(PolicyError, match=r"fails in body\.fc2 \(RuntimeError: mat1 and mat2"):
        channel.check_forward(broken, torch.randn(1, 4))
    channel.check_forward(nn.Linear(4, 2), torch.randn(1, 4))  # a model that runs passes

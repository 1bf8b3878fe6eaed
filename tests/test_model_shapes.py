"""Models of any shape: several inputs (tuple, dict), several outputs (split, concatenated, through
normalisation layers, dicts, named tuples), in-place residual adds. Each pruned data-free to a budget
keeps every output's shape; the layers that feed an output whose channels are its format are held."""

from __future__ import annotations

from collections import OrderedDict
from typing import NamedTuple

import pytest
import torch
from torch import nn

import amc
from amc.errors import AmcError, PolicyError
from amc.layers import call_model, flat_outputs, output_shapes, shape_change, stable_output_shapes
from amc.pruners import channel
from amc.pruners.channel import graph


def block(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU())


class TwoInputs(nn.Module):
    """An image and a second image (depth, say) through their own stems, added, then a head."""

    def __init__(self) -> None:
        super().__init__()
        self.rgb, self.depth = block(3, 16), block(1, 16)
        self.body = block(16, 32, 2)
        self.head = nn.Linear(32, 5)

    def forward(self, image: torch.Tensor, depth: torch.Tensor) -> torch.Tensor:
        x = self.body(self.rgb(image) + self.depth(depth))
        return self.head(x.mean((2, 3)))


def two_inputs() -> tuple[torch.Tensor, torch.Tensor]:
    return torch.randn(1, 3, 16, 16), torch.randn(1, 1, 16, 16)


class SplitThroughBN(nn.Module):
    """A shared module whose output is split into three outputs, each leaving through BatchNorm."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = block(3, 32, 2)
        self.body = block(32, 64)
        self.shared = nn.Conv2d(64, 3 * 32, 1)
        self.norms = nn.ModuleList(nn.BatchNorm2d(32) for _ in range(3))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        parts = self.shared(self.body(self.stem(x))).split(32, dim=1)
        return tuple(n(p) for n, p in zip(self.norms, parts, strict=True))


class ConcatOutputs(nn.Module):
    """Two branches concatenated into one output through BN + activation, plus a dict of features."""

    def __init__(self) -> None:
        super().__init__()
        self.stem, self.body = block(3, 16), block(16, 32)
        self.a, self.b = nn.Conv2d(32, 24, 1), nn.Conv2d(32, 8, 1)
        self.bn = nn.BatchNorm2d(32)
        self.aux = nn.Conv2d(16, 4, 1)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        s = self.stem(x)
        b = self.body(s)
        return {"out": torch.relu(self.bn(torch.cat([self.a(b), self.b(b)], 1))), "feat": self.aux(s)}


class Detections(NamedTuple):
    boxes: torch.Tensor
    scores: torch.Tensor


class TinyDetector(nn.Module):
    """Two strides, an upsample + concatenate neck, 1x1 heads returning a named tuple of lists."""

    def __init__(self) -> None:
        super().__init__()
        self.s1, self.s2 = block(3, 16, 2), block(16, 32, 2)
        self.neck = block(48, 16)
        self.box = nn.ModuleList([nn.Conv2d(16, 4, 1), nn.Conv2d(32, 4, 1)])
        self.cls = nn.ModuleList([nn.Conv2d(16, 3, 1), nn.Conv2d(32, 3, 1)])

    def forward(self, x: torch.Tensor) -> Detections:
        p1 = self.s1(x)
        p2 = self.s2(p1)
        n1 = self.neck(torch.cat([p1, nn.functional.interpolate(p2, scale_factor=2.0)], 1))
        feats = [n1, p2]
        return Detections([b(f) for b, f in zip(self.box, feats, strict=True)],
                          [c(f) for c, f in zip(self.cls, feats, strict=True)])


class InplaceResidual(nn.Module):
    """A bottleneck written with ``x += skip`` (and in-place ReLUs), as torchvision's ResNet is not."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = block(3, 32)
        self.conv1, self.bn1 = nn.Conv2d(32, 16, 1, bias=False), nn.BatchNorm2d(16)
        self.conv2, self.bn2 = nn.Conv2d(16, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16)
        self.conv3, self.bn3 = nn.Conv2d(16, 32, 1, bias=False), nn.BatchNorm2d(32)
        self.relu = nn.ReLU(inplace=True)
        self.fc = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skip = self.stem(x)
        y = self.relu(self.bn1(self.conv1(skip)))
        y = self.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        y += skip
        y = self.relu(y)
        return self.fc(y.mean((2, 3)))


def shapes(model: nn.Module, inputs) -> list[tuple[int, ...]]:
    with torch.no_grad():
        return [tuple(t.shape) for t in flat_outputs(call_model(model.eval(), inputs))]


# -- several inputs ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("form", ["tuple", "dict"])
def test_several_inputs_prune_to_budget(form):
    torch.manual_seed(0)
    model = TwoInputs().eval()
    image, depth = two_inputs()
    inputs = (image, depth) if form == "tuple" else {"image": image, "depth": depth}
    small, info = amc.prune_to_budget(model, inputs, "macs=0.5")
    assert info.met and info.macs_fraction <= 0.5
    assert shapes(small, inputs) == shapes(model, inputs) == [(1, 5)]
    assert small.rgb[0].out_channels < 16  # the two stems' add is one group, pruned together
    assert small.rgb[0].out_channels == small.depth[0].out_channels


@pytest.mark.parametrize("form", ["tuple", "dict"])
def test_several_inputs_inspect_and_table(form):
    image, depth = two_inputs()
    inputs = (image, depth) if form == "tuple" else {"image": image, "depth": depth}
    report = amc.inspect_model(TwoInputs(), inputs)
    assert "rgb.0" in report.prunable() and report.held() == {"head": report.held()["head"]}
    assert report.input_shape == ((1, 3, 16, 16), (1, 1, 16, 16))
    table = channel.channel_table(TwoInputs(), inputs)
    assert table.group("depth.0").root == "rgb.0"


def test_inputs_the_model_rejects_are_one_clear_error():
    with pytest.raises(AmcError, match="fails on example inputs"):
        amc.inspect_model(TwoInputs(), torch.randn(1, 3, 16, 16))
    with pytest.raises(AmcError, match="example inputs"):
        amc.prune_to_budget(TwoInputs(), {"image": torch.randn(1, 3, 16, 16)}, "macs=0.5")


def test_input_helpers_take_every_form():
    from amc.layers import input_shapes, map_inputs

    x = torch.zeros(2, 3)
    seen = []
    model = nn.Module()
    model.forward = lambda *a, **k: seen.append((len(a), sorted(k)))  # type: ignore[method-assign]
    call_model(model, x), call_model(model, (x, x)), call_model(model, {"a": x, "b": x})
    assert seen == [(1, []), (2, []), (0, ["a", "b"])]
    nested = ([x, torch.ones(1)], {"k": x})
    assert input_shapes(nested) == (((2, 3), (1,)), ((2, 3),))
    copied = map_inputs(nested, torch.clone)
    assert copied[0][0] is not x and torch.equal(copied[0][0], x) and isinstance(copied[0], list)
    with pytest.raises(PolicyError, match="tensor, a tuple or a dict"):
        call_model(model, "image.png")


# -- several outputs ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("make, x", [
    (SplitThroughBN, torch.randn(1, 3, 28, 28)),
    (ConcatOutputs, torch.randn(1, 3, 16, 16)),
    (TinyDetector, torch.randn(1, 3, 32, 32)),
], ids=["split-bn", "concat-dict", "detector"])
def test_every_output_keeps_its_shape(make, x):
    torch.manual_seed(0)
    model = make().eval()
    small, info = amc.prune_to_budget(model, x, "macs=0.5")
    assert shapes(small, x) == shapes(model, x)
    assert type(call_model(small, x)) is type(call_model(model, x))
    assert info.macs < info.dense_macs  # something was pruned
    assert info.held  # the layers feeding the outputs are named as held
    assert any("output" in why for why in info.held.values())


def test_outputs_through_normalisation_hold_the_shared_layer():
    table = channel.channel_table(SplitThroughBN(), torch.randn(1, 3, 28, 28))
    assert "shared" not in table.group_of
    assert "model's outputs" in table.unprunable["shared"]
    assert "stem.0" in table.group_of and "body.0" in table.group_of


def test_detector_heads_are_held_and_its_body_pruned():
    table = channel.channel_table(TinyDetector(), torch.randn(1, 3, 32, 32))
    for head in ("box.0", "box.1", "cls.0", "cls.1"):
        assert "model's outputs" in table.unprunable[head]
    assert {"s1.0", "s2.0", "neck.0"} <= set(table.group_of)


def test_check_forward_compares_every_output():
    model, x = SplitThroughBN().eval(), torch.randn(1, 3, 28, 28)
    want = output_shapes(call_model(model, x))
    channel.check_forward(model, x, want)  # unchanged: fine
    with pytest.raises(PolicyError, match=r"output 2 .*\(1, 31, 14, 14\) to \(1, 32, 14, 14\)"):
        channel.check_forward(model, x, [*want[:2], (1, 31, 14, 14)])
    with pytest.raises(PolicyError, match="returns 3 tensors, not 2"):
        channel.check_forward(model, x, want[:2])


def test_dict_outputs_are_named_by_key():
    out = ConcatOutputs().eval()(torch.randn(1, 3, 16, 16))
    assert [name for name, _ in flat_outputs(out, named=True)] == ["out", "feat"]
    det = TinyDetector().eval()(torch.randn(1, 3, 32, 32))
    assert [name for name, _ in flat_outputs(det, named=True)] == ["boxes.0", "boxes.1", "scores.0", "scores.1"]


class Thresholded(nn.Module):
    """A map of scores and the scores above zero: the second output's size depends on the data."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(block(3, 16), block(16, 16))
        self.score = nn.Conv2d(16, 2, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        s = self.score(self.body(x))
        return s, s.flatten()[s.flatten() > 0]


def test_data_dependent_sizes_are_not_compared_the_rest_is():
    torch.manual_seed(0)
    model, x = Thresholded().eval(), torch.randn(1, 3, 8, 8)
    want = stable_output_shapes(model, x)
    assert want is not None and want[0] == (1, 2, 8, 8) and want[1] == (-1,)
    assert shape_change(want, [(1, 2, 8, 8), (5,)]) is None
    assert "output 0" in (shape_change(want, [(1, 1, 8, 8), (5,)]) or "")
    small, info = amc.prune_to_budget(model, x, "macs=0.5")
    assert info.met and shapes(small, x)[0] == (1, 2, 8, 8)


# -- in-place operations -----------------------------------------------------------------------------------------
def test_inplace_residual_add_is_traced_like_its_out_of_place_form():
    table = channel.channel_table(InplaceResidual(), torch.randn(1, 3, 16, 16))
    assert "conv3" in table.group_of, table.unprunable.get("conv3")
    assert table.group("conv3").root == table.group("stem.0").root  # the residual add couples them
    small, info = amc.prune_to_budget(InplaceResidual().eval(), torch.randn(1, 3, 16, 16), "macs=0.5")
    assert info.met and small.conv3.out_channels == small.stem[0].out_channels < 32


class FullyConvResidual(nn.Module):
    """Fully convolutional (it runs on an unbatched 3D input too) with a residual add, in place or not.
    torch-pruning's own forward calls ``model(*x)`` first, which for one image traces the unbatched call
    ``model(x[0])``; traced so, conv3 was "not reached" and the stem's group broke the forward."""

    def __init__(self, inplace: bool) -> None:
        super().__init__()
        self.inplace = inplace
        self.stem, self.conv1 = nn.Conv2d(3, 32, 3, padding=1), nn.Conv2d(32, 16, 1)
        self.conv3, self.head = nn.Conv2d(16, 32, 1), nn.Conv2d(32, 5, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skip = torch.relu(self.stem(x))
        y = self.conv3(torch.relu(self.conv1(skip)))
        if self.inplace:
            y += skip
        else:
            y = y + skip
        return self.head(y)


@pytest.mark.parametrize("inplace", [True, False], ids=["x += skip", "x + skip"])
def test_a_fully_convolutional_residual_is_traced_on_its_batch(inplace):
    x = torch.randn(1, 3, 16, 16)
    table = channel.channel_table(FullyConvResidual(inplace), x)
    assert set(table.unprunable) == {"head"}, table.unprunable
    assert table.group("conv3").root == table.group("stem").root
    model = FullyConvResidual(inplace).eval()
    small, info = amc.prune_to_budget(model, x, "macs=0.5")
    assert info.met and shapes(small, x) == shapes(model, x) == [(1, 5, 16, 16)]


def test_tracing_leaves_the_callers_inplace_model_as_it_was():
    model = InplaceResidual().eval()
    x = torch.randn(1, 3, 16, 16)
    before = model(x)
    channel.channel_table(model, x)
    assert torch.equal(model(x), before)
    assert model.relu.inplace


# -- bounded tracing -----------------------------------------------------------------------------------------------
class Chain(nn.Module):
    """A long chain of residual blocks: a tracer with a small step budget gives up inside it."""

    def __init__(self, n: int = 12) -> None:
        super().__init__()
        self.stem = block(3, 8)
        self.blocks = nn.ModuleList(block(8, 8) for _ in range(n))
        self.fc = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for b in self.blocks:
            x = x + b(x)
        return self.fc(x.mean((2, 3)))


def test_a_runaway_trace_is_stopped_by_the_step_budget(monkeypatch):
    monkeypatch.setattr(graph, "_CACHE", OrderedDict())
    # the graph of Chain takes about 50 steps to build, following the residual stream about 150 more
    with pytest.raises(graph.TraceLimit, match=r"stopped after 100 steps .*following the channels of stem\.0"):
        channel.channel_table(Chain(), torch.randn(1, 3, 8, 8), limits=graph.TraceLimits(steps=100))
    with pytest.raises(graph.TraceLimit, match=r"stopped after 5 steps .*building the dependency graph"):
        channel.channel_table(Chain(), torch.randn(1, 3, 8, 8), limits=graph.TraceLimits(steps=5))
    with pytest.raises(AmcError, match="steps"):  # the same limit through the one-shot pruner and the check
        amc.prune_to_budget(Chain(), torch.randn(1, 3, 8, 8), "macs=0.5", limits=graph.TraceLimits(steps=100))
    with pytest.raises(AmcError, match="steps"):
        amc.inspect_model(Chain(), torch.randn(1, 3, 8, 8), limits=graph.TraceLimits(steps=100))


def test_the_wall_clock_limit_reads_an_injected_clock(monkeypatch):
    monkeypatch.setattr(graph, "_CACHE", OrderedDict())
    ticks = iter(range(0, 10_000, 7))  # every read of the clock: 7 s later
    limits = graph.TraceLimits(seconds=60.0, clock=lambda: float(next(ticks)))
    with pytest.raises(graph.TraceLimit, match=r"over 60 s"):
        channel.channel_table(Chain(), torch.randn(1, 3, 8, 8), limits=limits)


def test_progress_is_reported_while_tracing(monkeypatch):
    monkeypatch.setattr(graph, "_CACHE", OrderedDict())
    seen: list[tuple[str, int, int]] = []
    channel.channel_table(Chain(3), torch.randn(1, 3, 8, 8),
                          limits=graph.TraceLimits(progress=lambda stage, i, n: seen.append((stage, i, n))))
    stages = [s for s, _, _ in seen]
    assert "groups" in stages and stages.index("graph") < stages.index("groups")
    groups = [(i, n) for s, i, n in seen if s == "groups"]
    assert groups[-1][0] == groups[-1][1] == len(channel.channel_table(Chain(3), torch.randn(1, 3, 8, 8)).names)

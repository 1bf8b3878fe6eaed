"""Layers whose outputs leave the traced graph (a detach, as torchvision's RPN) and GroupNorm-coupled
channels: traced, held with their reason, and the rest of the model pruned with every output's shape kept."""

import pytest
import torch
from torch import nn

import amc
from amc.layers import output_shapes
from amc.pruners import channel
from amc.pruners.channel.ends import DETACHED_REASON, output_layers


def block(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU())


class ProposalDetector(nn.Module):
    """A region-proposal head (a 3x3 conv, then 1x1 score and offset convs) whose outputs are detached
    and used only through the indices of the top scores, as torchvision's RPN does; the box head reads
    the features at those places."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(block(3, 16, 2), block(16, 32, 2))
        self.rpn_conv = nn.Conv2d(32, 32, 3, padding=1)
        self.rpn_score, self.rpn_delta = nn.Conv2d(32, 3, 1), nn.Conv2d(32, 12, 1)
        self.box_head = nn.Linear(32, 5)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        f = self.body(x)
        t = torch.relu(self.rpn_conv(f))
        score, delta = self.rpn_score(t).detach(), self.rpn_delta(t).detach()
        top = score.amax(1).flatten(1).topk(4, dim=1).indices  # (batch, 4) places
        feats = f.flatten(2).gather(2, top[:, None, :].expand(-1, f.shape[1], -1))  # (batch, 32, 4)
        boxes = delta.flatten(2).gather(2, top[:, None, :].expand(-1, delta.shape[1], -1))
        return {"logits": self.box_head(feats.transpose(1, 2)), "boxes": boxes}


def test_the_layers_before_a_detach_are_traced_and_pruned():
    model = ProposalDetector().eval()
    x = torch.randn(1, 3, 32, 32)
    held = output_layers(model, x)
    assert held["rpn_score"] == DETACHED_REASON.format(name="rpn_score")
    assert held["rpn_delta"] == DETACHED_REASON.format(name="rpn_delta")
    assert "rpn_conv" not in held and "box_head" in held
    table = channel.channel_table(model, x)
    # rpn_conv was called but lies before the detach: once "not reached by a forward pass"
    assert "rpn_conv" in table.group_of
    assert set(table.group(table.groups[table.group_of["rpn_conv"]].root).consumers) == {"rpn_score", "rpn_delta"}
    assert "detached" in table.unprunable["rpn_score"]
    small, info = amc.prune_to_budget(model, x, "macs=0.6")
    assert info.met
    assert small.rpn_conv.out_channels < 32 and small.rpn_score.out_channels == 3
    with torch.no_grad():
        assert output_shapes(small(x)) == output_shapes(model(x))


class GroupNormHead(nn.Module):
    """A BatchNorm body and a head normalised by GroupNorm (RetinaNet v2's and FCOS's heads)."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(block(3, 16, 2), block(16, 32))
        self.head = nn.Sequential(nn.Conv2d(32, 32, 3, padding=1), nn.GroupNorm(8, 32), nn.ReLU())
        self.out = nn.Conv2d(32, 6, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.head(self.body(x)))


def test_channels_normalised_by_a_groupnorm_go_evenly_from_every_group():
    model = GroupNormHead().eval()
    x = torch.randn(1, 3, 32, 32)
    table = channel.channel_table(model, x)
    g = table.groups[table.group_of["head.0"]]
    assert g.parts == 8  # torch-pruning keeps num_groups: removed unevenly, the forward broke
    small, info = amc.prune_to_budget(model, x, "macs=0.6")
    assert info.met and "head.0" not in info.held
    kept = info.plan.keep["head.0"]
    per_group = [sum(1 for c in kept if c // 4 == p) for p in range(8)]
    assert len(set(per_group)) == 1 and per_group[0] < 4  # as many from every group of 4 channels
    assert small.head[1].num_groups == 8 and small.head[1].num_channels == small.head[0].out_channels == len(kept)
    with torch.no_grad():
        assert small(x).shape == model(x).shape
    # the head alone pruned: each group of the GroupNorm normalises the channels it kept of its own group
    plan = channel.plan_channels(model, {"head.0": 0.5}, "l2", 1, example_inputs=x)
    assert len(plan.keep["head.0"]) == 16
    head = channel.prune_channels(model, plan, x).head
    kept = plan.keep["head.0"]
    with torch.no_grad():
        f = model.body(x)
        want = nn.functional.group_norm(model.head[0](f)[:, kept], 8, model.head[1].weight[kept],
                                        model.head[1].bias[kept], model.head[1].eps)
        torch.testing.assert_close(head[1](head[0](f)), want)


class GroupNormAfterConcat(nn.Module):
    """A GroupNorm over two convs' concatenated channels: its groups are not one conv's channels."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = block(3, 16)
        self.a, self.b = nn.Conv2d(16, 16, 3, padding=1), nn.Conv2d(16, 16, 3, padding=1)
        self.gn = nn.GroupNorm(4, 32)
        self.out = nn.Conv2d(32, 6, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.stem(x)
        return self.out(torch.relu(self.gn(torch.cat([self.a(s), self.b(s)], 1))))


def test_a_groupnorm_over_several_layers_channels_is_held_with_its_reason():
    model = GroupNormAfterConcat().eval()
    x = torch.randn(1, 3, 16, 16)
    table = channel.channel_table(model, x)
    assert "a" not in table.group_of and "GroupNorm of 4 groups" in table.unprunable["a"]
    assert "stem.0" in table.group_of
    small, _ = amc.prune_to_budget(model, x, "macs=0.8")
    with torch.no_grad():
        assert small(x).shape == model(x).shape


class CropDetector(nn.Module):
    """Box offsets from one conv, features from another, cropped at those boxes by RoIAlign (the boxes
    carry autograd history, as torchvision's detected boxes into the mask and keypoint heads)."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(block(3, 16, 2), block(16, 32, 2))
        self.feat, self.offset = nn.Conv2d(32, 32, 3, padding=1), nn.Conv2d(32, 4, 1)
        self.cls = nn.Linear(32 * 2 * 2, 5)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        from torchvision.ops import roi_align

        f = self.body(x)
        b = self.offset(f).flatten(2).mean(2)  # (1, 4)
        boxes = torch.cat([b[:, :2].sigmoid() * 3, 4 + b[:, 2:].sigmoid() * 3], 1)
        crops = roi_align(torch.relu(self.feat(f)), torch.cat([torch.zeros(1, 1), boxes], 1), 2)
        return {"boxes": boxes, "logits": self.cls(crops.flatten(1))}


def test_boxes_into_roi_align_are_not_coupled_with_the_features_they_crop():
    pytest.importorskip("torchvision")
    model = CropDetector().eval()
    x = torch.randn(1, 3, 32, 32)
    table = channel.channel_table(model, x)
    assert "offset" in table.unprunable and "model's outputs" in table.unprunable["offset"]
    # read as an elementwise op, RoIAlign coupled feat's channels with the boxes: feat was held with offset
    assert "feat" in table.group_of
    small, info = amc.prune_to_budget(model, x, "macs=0.6")
    assert info.met and small.feat.out_channels < 32 and small.offset.out_channels == 4
    with torch.no_grad():
        assert output_shapes(small(x)) == output_shapes(model(x))


class ChunkBlock(nn.Module):
    """YOLOv8's C2f: one conv's output chunked in two halves, the second through a residual bottleneck,
    all concatenated. A chunk splits the pruned channels in equal halves whatever was removed from each."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = block(3, 16)
        self.cv1 = nn.Conv2d(16, 32, 1)
        self.m = nn.Conv2d(16, 16, 3, padding=1)
        self.cv2 = nn.Conv2d(48, 16, 1)
        self.head = nn.Conv2d(16, 5, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = list(self.cv1(self.stem(x)).chunk(2, 1))
        y.append(y[-1] + self.m(y[-1]))
        return self.head(self.cv2(torch.cat(y, 1)))


def test_a_chunked_group_that_breaks_is_held_and_says_why():
    model = ChunkBlock().eval()
    x = torch.randn(1, 3, 16, 16)
    table = channel.channel_table(model, x)
    assert "cv1" not in table.group_of
    assert "breaks the forward pass (the forward splits its channels" in table.unprunable["cv1"]
    assert "RuntimeError" in table.unprunable["cv1"]  # the error itself is kept after the hint
    small, info = amc.prune_to_budget(model, x, "macs=0.8")
    assert "cv1" in info.held and small.cv1.out_channels == 32
    with torch.no_grad():
        assert small(x).shape == model(x).shape


class SampledCrop(nn.Module):
    """A spatial transformer: a linear layer predicts an affine transform, whose grid samples the
    features (the grid is coordinates, not channels)."""

    def __init__(self) -> None:
        super().__init__()
        self.body = block(3, 16, 2)
        self.loc = nn.Linear(16, 6)
        self.feat = nn.Conv2d(16, 16, 3, padding=1)
        self.head = nn.Conv2d(16, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.body(x)
        theta = self.loc(f.mean((2, 3))).view(-1, 2, 3)
        grid = nn.functional.affine_grid(theta, [f.shape[0], 16, 8, 8], align_corners=False)
        return self.head(nn.functional.grid_sample(torch.relu(self.feat(f)), grid, align_corners=False))


def test_a_layer_feeding_only_a_sampling_grid_is_held_and_the_sampled_features_pruned():
    model = SampledCrop().eval()
    x = torch.randn(1, 3, 32, 32)
    table = channel.channel_table(model, x)
    assert "as coordinates" in table.unprunable["loc"]
    assert "feat" in table.group_of and "body.0" in table.group_of
    small, info = amc.prune_to_budget(model, x, "macs=0.7")
    assert info.met and small.loc.out_features == 6 and small.feat.out_channels < 16
    with torch.no_grad():
        assert small(x).shape == model(x).shape

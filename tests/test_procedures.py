"""Procedures of amc.procedures: lottery rewinding, network slimming, scratch models."""

import pytest
import torch
from torch import nn

from amc.errors import PolicyError
from amc.procedures import bn_l1_penalty, lottery, random_reinit, scratch_model, slim_plan, slim_train
from amc.pruners import channel as ch
from amc.recipe import make_recipe
from amc.train import FinetuneConfig
from tests.conftest import make_tiny_resnet, make_tiny_vgg


class _Batches:
    def __init__(self, n=3, size=16, seed=0):
        g = torch.Generator().manual_seed(seed)
        self.items = [(torch.randn(size, 3, 32, 32, generator=g), torch.randint(0, 10, (size,), generator=g))
                      for _ in range(n)]

    def __iter__(self):
        return iter(self.items)

    def __len__(self):
        return len(self.items)


def test_lottery_rewinds_to_the_early_weights_under_the_final_mask():
    model = make_tiny_vgg()
    cfg = FinetuneConfig(epochs=5.0, lr=0.05)  # 15 steps per round
    res = lottery(model, _Batches(), size=0.4, rounds=2, rewind_steps=10, cfg=cfg)
    assert res.rewind_step == 10 and len(res.sparsities) == 2 and res.sparsities[0] < res.sparsities[1]
    for name, mask in res.masks.items():
        w = res.ticket.get_submodule(name).weight.detach()
        early = res.rewind_state[f"{name}.weight"]
        assert torch.equal(w, early * mask)  # rewound weights exactly, pruned ones zero
        assert not torch.equal(early, model.get_submodule(name).weight.detach())  # the rewind point is trained
    kept = sum(int(m.sum()) for m in res.masks.values())
    total = sum(m.numel() for m in res.masks.values())
    assert 1 - kept / total == pytest.approx(res.sparsities[-1], abs=1e-4)
    ctrl = random_reinit(res.ticket, res.masks, seed=1)
    for name, mask in res.masks.items():
        w = ctrl.get_submodule(name).weight.detach()
        assert bool((w[~mask] == 0).all()) and not torch.equal(w, res.ticket.get_submodule(name).weight.detach())
    with pytest.raises(PolicyError):
        lottery(model, _Batches(), size=0.4, rounds=0)


def test_slimming_drives_the_penalised_bn_scales_down():
    def train(penalty):
        model = make_tiny_resnet()
        torch.manual_seed(0)
        stats = slim_train(model, _Batches(), FinetuneConfig(epochs=4.0, lr=0.05, weight_decay=0.0), penalty)
        return model, stats["mean_abs_gamma"]

    _, plain = train(0.0)
    slimmed, pen = train(0.2)
    assert pen < 0.85 * plain
    plan = slim_plan(slimmed, 0.5, round_to=1)
    table = ch.channel_table(slimmed)
    assert ch.plan_cost(table, plan)["macs"] <= 0.5 * table.dense_macs
    scores = ch.channel_scores(slimmed, "bn", table)
    for root, kept in plan.keep.items():  # the smallest |gamma| go first
        removed = sorted(set(range(len(scores[root]))) - set(kept))
        assert float(scores[root][removed].max()) <= float(scores[root][kept].min())
    m = make_tiny_resnet()
    with bn_l1_penalty(m, 0.1) as scales:
        assert len(scales) == sum(isinstance(x, nn.BatchNorm2d) for x in m.modules())
    with pytest.raises(PolicyError):
        with bn_l1_penalty(m, -1.0):
            pass


def test_scratch_model_has_the_recipe_architecture_and_fresh_weights(tmp_path):
    from amc.models import build_model
    from amc.recipe import RecipeError

    torch.manual_seed(0)
    dense = build_model("resnet20").eval()
    plan = ch.plan_channels(dense, ch.uniform_policy(ch.channel_table(dense), 0.5), "l2", 8)
    recipe = make_recipe("resnet20", None, granularity="channel", kept=plan, model=dense)
    pruned = ch.prune_channels(dense, plan)
    small, masks = scratch_model(recipe, seed=0)
    again, _ = scratch_model(recipe, seed=0)
    assert masks == {}
    shapes = {k: v.shape for k, v in pruned.state_dict().items()}
    assert {k: v.shape for k, v in small.state_dict().items()} == shapes
    assert not torch.equal(small.conv1.weight, pruned.conv1.weight)  # fresh, not the dense slice
    assert all(torch.equal(a, b) for a, b in zip(small.state_dict().values(), again.state_dict().values(), strict=True))

    ckpt = tmp_path / "resnet20.pt"
    torch.save(dense.state_dict(), ckpt)
    fine = make_recipe("resnet20", ckpt, {"layer1.0.conv1": 0.5, "layer2.0.conv2": 0.8})
    with pytest.raises(RecipeError, match="give the checkpoint"):
        scratch_model(fine)
    model, fmasks = scratch_model(fine, ckpt, seed=3)
    assert set(fmasks) == {"layer1.0.conv1", "layer2.0.conv2"}
    w = model.get_submodule("layer2.0.conv2").weight
    assert bool((w[~fmasks["layer2.0.conv2"]] == 0).all()) and not torch.equal(w, dense.layer2[0].conv2.weight)

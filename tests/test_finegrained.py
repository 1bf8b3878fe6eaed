import pytest
import torch

from amc.errors import PolicyError
from amc.layers import prunable_names
from amc.metrics import layer_sparsity
from amc.pruners.finegrained import apply_policy, global_prune, magnitude_mask, nm_mask, nm_prune, prune_layer
from amc.train import FinetuneConfig, apply_masks, finetune


@pytest.mark.parametrize("sparsity", [0.0, 0.1, 0.333, 0.5, 0.77, 0.9, 0.99])
@pytest.mark.parametrize("shape", [(16, 8, 3, 3), (10, 16), (7, 3, 3, 3)])
def test_mask_hits_sparsity_within_one_weight(sparsity, shape):
    w = torch.randn(shape, generator=torch.Generator().manual_seed(1))
    mask = magnitude_mask(w, sparsity)
    assert mask.shape == w.shape
    assert abs(int((~mask).sum()) - sparsity * w.numel()) <= 1
    if 0 < sparsity:
        assert w[mask].abs().min() >= w[~mask].abs().max()  # the smallest magnitudes go


def test_mask_is_exact_with_ties():
    w = torch.ones(100)
    assert int((~magnitude_mask(w, 0.37)).sum()) == 37


def test_policy_prunes_each_layer_to_its_own_sparsity(tiny_vgg):
    policy = {"backbone.conv1": 0.5, "backbone.conv2": 0.8, "classifier": 0.25}
    masks = apply_policy(tiny_vgg, policy)
    sp = layer_sparsity(tiny_vgg)
    for name, s in policy.items():
        n = tiny_vgg.get_submodule(name).weight.numel()
        assert abs(sp[name] - s) <= 1 / n
        assert masks[name].dtype == torch.bool
    assert sp["backbone.conv0"] == 0.0  # layers not in the policy stay dense


def test_global_pruning_uses_one_threshold(tiny_vgg):
    names = prunable_names(tiny_vgg)
    before = {n: tiny_vgg.get_submodule(n).weight.detach().clone() for n in names}
    masks = global_prune(tiny_vgg, 0.6)
    total = sum(m.numel() for m in masks.values())
    pruned = sum(int((~m).sum()) for m in masks.values())
    assert pruned == round(0.6 * total)
    kept_min = min(before[n][masks[n]].abs().min() for n in names)
    pruned_max = max(before[n][~masks[n]].abs().max() for n in names if (~masks[n]).any())
    assert kept_min >= pruned_max
    sp = layer_sparsity(tiny_vgg)
    assert len({round(v, 3) for v in sp.values()}) > 1  # layers end at different sparsities


@pytest.mark.parametrize("shape", [(8, 16, 3, 3), (12, 8), (4, 32, 1, 1)])
def test_two_four_masks_hold_two_of_every_four(shape):
    w = torch.randn(shape)
    mask = nm_mask(w, 2, 4)
    groups = (mask.permute(0, 2, 3, 1) if w.ndim == 4 else mask).reshape(-1, 4)
    assert torch.all(groups.sum(1) == 2)
    kept = (w.abs() * mask).permute(0, 2, 3, 1).reshape(-1, 4) if w.ndim == 4 else (w.abs() * mask).reshape(-1, 4)
    dropped = (w.abs() * ~mask).permute(0, 2, 3, 1).reshape(-1, 4) if w.ndim == 4 else (w.abs() * ~mask).reshape(-1, 4)
    kept_min = torch.where(kept > 0, kept, torch.inf).min(1).values
    assert torch.all(kept_min >= dropped.max(1).values)


def test_nm_prune_skips_layers_whose_inputs_do_not_divide(tiny_vgg):
    masks, skipped = nm_prune(tiny_vgg, 2, 4)
    assert skipped == ["backbone.conv0"]  # 3 input channels
    for name in masks:
        w = tiny_vgg.get_submodule(name).weight
        assert abs(layer_sparsity(tiny_vgg)[name] - 0.5) < 1e-9
        assert w.count_nonzero() == w.numel() // 2


@pytest.mark.parametrize("policy", [{"backbone.nope": 0.5}, {"backbone.conv1": 1.0}, {"backbone.conv1": -0.1},
                                    {"backbone.conv1": "x"}])
def test_bad_policies(tiny_vgg, policy):
    with pytest.raises(PolicyError):
        apply_policy(tiny_vgg, policy)


def test_pruned_weights_stay_zero_through_finetuning(tiny_vgg, tiny_splits):
    masks = apply_policy(tiny_vgg, {"backbone.conv1": 0.7, "backbone.conv2": 0.9, "classifier": 0.5})
    before = {n: tiny_vgg.get_submodule(n).weight.detach().clone() for n in masks}
    finetune(tiny_vgg, tiny_splits.loader("train", 128), FinetuneConfig(epochs=1, lr=0.05), masks=masks)
    for name, mask in masks.items():
        w = tiny_vgg.get_submodule(name).weight
        assert torch.all(w[~mask] == 0)
        assert not torch.equal(w[mask], before[name][mask])  # the kept weights did train


def test_apply_masks_reapplies(tiny_vgg):
    masks = {"backbone.conv1": prune_layer(tiny_vgg, "backbone.conv1", 0.5)}
    with torch.no_grad():
        tiny_vgg.get_submodule("backbone.conv1").weight.add_(1.0)
    apply_masks(tiny_vgg, masks)
    assert abs(layer_sparsity(tiny_vgg)["backbone.conv1"] - 0.5) < 0.01


def test_global_sparsity_for_size_meets_the_size():
    from amc.metrics import size_fraction
    from amc.pruners.finegrained import global_sparsity_for_size
    from tests.conftest import make_tiny_vgg

    model = make_tiny_vgg()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(3.0)  # no exact zeros: non-zero counts are parameter counts
    total_bits = sum(p.numel() for p in model.parameters()) * 32
    s = global_sparsity_for_size(model, 0.4)
    global_prune(model, s)
    assert size_fraction(model, total_bits) == pytest.approx(0.4, abs=2 / (total_bits / 32))


@pytest.mark.parametrize("size", [0.5, 0.25])
def test_global_policy_is_global_prune_as_a_policy(tiny_vgg, size):
    import copy

    from amc.pruners.finegrained import global_policy, global_prune, global_sparsity_for_size

    before = {k: v.clone() for k, v in tiny_vgg.state_dict().items()}
    pol = global_policy(tiny_vgg, size)
    assert all(torch.equal(v, tiny_vgg.state_dict()[k]) for k, v in before.items())  # model untouched
    a, b = copy.deepcopy(tiny_vgg), copy.deepcopy(tiny_vgg)
    masks = global_prune(a, global_sparsity_for_size(a, size))
    mine = apply_policy(b, pol)
    for n in masks:  # the same weights removed
        assert torch.equal(masks[n], mine[n]), n
    weights = sum(m.numel() for m in mine.values())
    removed = sum(int((~m).sum()) for m in mine.values())
    assert removed == round(global_sparsity_for_size(tiny_vgg, size) * weights)  # the size, to the weight


def test_lamp_policy_meets_the_size_and_keeps_every_layer(tiny_vgg):
    from amc.pruners.finegrained import global_policy, global_sparsity_for_size, lamp_policy

    with torch.no_grad():  # one layer of tiny weights: a plain global threshold would empty it
        tiny_vgg.get_submodule("backbone.conv0").weight.mul_(1e-3)
    glob, lamp = global_policy(tiny_vgg, 0.2), lamp_policy(tiny_vgg, 0.2)
    assert glob["backbone.conv0"] == 1.0
    assert lamp["backbone.conv0"] < 1.0  # LAMP: a layer's largest weight scores 1 and stays
    assert all(0.0 <= r < 1.0 for r in lamp.values())
    masks = apply_policy(tiny_vgg, lamp)
    weights = sum(m.numel() for m in masks.values())
    removed = sum(int((~m).sum()) for m in masks.values())
    assert removed == round(global_sparsity_for_size(tiny_vgg, 0.2) * weights)


def test_lamp_scores_by_hand():
    """Two layers: [1, 2] and [3, 3, 3, 3] squared; LAMP scores 1/5, 1 and 9/36, 9/27, 9/18, 1; removing two
    weights removes 1 (0.2) and one 3 (0.25), a global threshold would remove 1 and 2."""
    from amc.pruners.finegrained import global_policy, lamp_policy

    m = torch.nn.Sequential(torch.nn.Linear(2, 1, bias=False), torch.nn.Linear(4, 1, bias=False))
    with torch.no_grad():
        m[0].weight.copy_(torch.tensor([[1.0, 2.0]]))
        m[1].weight.copy_(torch.tensor([[3.0, 3.0, 3.0, 3.0]]))
    size = 4 / 6  # 2 of the 6 weights removed
    assert lamp_policy(m, size) == {"0": 0.5, "1": 0.25}
    assert global_policy(m, size) == {"0": 1.0, "1": 0.0}

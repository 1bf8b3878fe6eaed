import copy
import itertools
import json

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

from amc.data import CLASSES
from amc.errors import BudgetError, PolicyError
from amc.importance import CHANNEL_CRITERIA
from amc.layers import count_macs, count_params
from amc.models import build_model
from amc.pruners.channel import (
    ChannelPlan,
    apply_channel_masks,
    channel_masks,
    channel_scores,
    channel_table,
    find_uniform_ratio,
    needs_data,
    plan_channels,
    plan_cost,
    policy_cost,
    policy_counts,
    prune_channels,
    round_channels,
    uniform_policy,
)
from amc.sensitivity import SensitivityScan, pick_channel_policy, scan_sensitivity
from amc.train import FinetuneConfig, finetune
from tests.conftest import make_tiny_resnet, make_tiny_vgg

ZOO = ["vgg8", "resnet20", "resnet56", "mobilenet_v2", "resnet18"]


def randomise_bn(model):
    """Non-trivial BN statistics and affine parameters so that masking errors would show."""
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=g) * 0.1)
    return model


@pytest.fixture(scope="module", params=ZOO)
def zoo_model(request):
    torch.manual_seed(0)
    return request.param, randomise_bn(build_model(request.param).eval())


# -- rounding -----------------------------------------------------------------------------------
@pytest.mark.parametrize(("n", "total", "mult", "want"), [
    (44.8, 64, 1, 45), (89.6, 128, 1, 90), (179.2, 256, 1, 179), (358.4, 512, 1, 358),  # the lab's 30%
    (44.8, 64, 8, 48), (89.6, 128, 8, 88), (3.0, 64, 8, 8), (0.0, 64, 8, 8), (0.2, 64, 1, 1),
    (9.9, 10, 8, 10), (64.0, 64, 8, 64), (70.0, 64, 8, 64), (5.0, 6, 8, 6), (100.0, 128, 32, 96),
])
def test_round_channels_examples(n, total, mult, want):
    assert round_channels(n, total, mult) == want


@given(st.floats(0, 2048, allow_nan=False), st.integers(1, 1024), st.sampled_from([1, 2, 8, 16, 32, 64]))
def test_round_channels_rules(n, total, mult):
    k = round_channels(n, total, mult)
    assert 1 <= k <= total
    assert k >= min(mult, total)
    assert k == total or k % mult == 0
    if n >= total:
        assert k == total


@pytest.mark.parametrize("bad", [(4.0, 0, 8), (4.0, 8, 0)])
def test_round_channels_rejects_nonsense(bad):
    with pytest.raises(ValueError):
        round_channels(*bad)


# -- every model --------------------------------------------------------------------------------
def test_every_model_prunes_runs_and_costs_exactly(zoo_model):
    _, model = zoo_model
    before = copy.deepcopy(model.state_dict())
    table = channel_table(model)
    assert table.groups and all(g.channels >= 1 for g in table.groups)
    plan = plan_channels(model, uniform_policy(table, 0.5), "l2", round_to=8)
    small = prune_channels(model, plan)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert small(x).shape == model(x).shape == (2, 10)
    macs, params = count_macs(small)[0], count_params(small)
    assert macs < table.dense_macs and params < table.dense_params
    assert plan_cost(table, plan) == {"macs": macs, "params": params}
    assert plan_cost(model, plan.counts()) == {"macs": macs, "params": params}
    for k, v in model.state_dict().items():  # the input model is untouched
        assert torch.equal(v, before[k]), k


def test_classifier_outputs_are_left_alone_with_a_note(zoo_model):
    name, model = zoo_model
    table = channel_table(model)
    last = {"vgg8": "classifier", "mobilenet_v2": "classifier.1"}.get(name, "fc")
    assert last not in table.group_of and "model's outputs" in table.unprunable[last]
    plan = plan_channels(model, {last: 0.5}, "l2")
    assert plan.keep == {} and any(last in n for n in plan.notes)


@pytest.mark.parametrize("criterion", sorted(CHANNEL_CRITERIA))
@pytest.mark.parametrize("make", [make_tiny_vgg, make_tiny_resnet], ids=["vgg", "resnet"])
def test_masked_model_equals_pruned_model(make, criterion, tiny_splits):
    model = randomise_bn(make())
    loader = tiny_splits.loader("heldout", 64) if needs_data(criterion) else None
    plan = plan_channels(model, uniform_policy(model, 0.4), criterion, round_to=1, loader=loader)
    assert plan.keep and plan.criterion == criterion
    small = prune_channels(model, plan)
    masked = copy.deepcopy(model)
    apply_channel_masks(masked, plan)
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(masked(x), small(x), atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", ["mobilenet_v2", "resnet18"])
def test_masked_equals_pruned_torchvision(name):
    torch.manual_seed(0)
    model = randomise_bn(build_model(name).eval())
    plan = plan_channels(model, uniform_policy(model, 0.3), "l2_next", round_to=8)
    masked = copy.deepcopy(model)
    apply_channel_masks(masked, plan)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        a, b = masked(x), prune_channels(model, plan)(x)
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_finetune_with_channel_masks_stays_equivalent(tiny_splits):
    model = randomise_bn(make_tiny_resnet())
    plan = plan_channels(model, uniform_policy(model, 0.5), "l2", round_to=1)
    masked = copy.deepcopy(model)
    apply_channel_masks(masked, plan)
    masks = channel_masks(masked, plan)
    finetune(masked, tiny_splits.loader("train", 64), FinetuneConfig(epochs=1.0, max_steps=3), masks=masks)
    small = prune_channels(masked, plan)  # the removed channels' weights are still zero
    apply_channel_masks(masked, plan)  # BN shifts of removed channels (not in masks) back to zero
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(masked.eval()(x), small.eval()(x), atol=1e-5, rtol=0)


# -- policies, costs ----------------------------------------------------------------------------
@pytest.mark.parametrize("make", [make_tiny_vgg, make_tiny_resnet], ids=["vgg", "resnet"])
@pytest.mark.parametrize("round_to", [1, 8])
def test_macs_fall_as_ratio_rises(make, round_to):
    table = channel_table(make())
    macs = [policy_cost(table, uniform_policy(table, r), round_to)["macs"] for r in np.linspace(0, 0.95, 20)]
    assert all(a >= b for a, b in itertools.pairwise(macs))
    assert macs[0] == table.dense_macs and macs[-1] < table.dense_macs


@pytest.mark.parametrize("ratio", [1.0, -0.1, 1.5, float("nan"), "half"])
def test_bad_ratio_is_one_clear_error(tiny_resnet, ratio):
    with pytest.raises(PolicyError, match=r"outside \[0, 1\)|not a number"):
        plan_channels(tiny_resnet, {"layer1.0.conv1": ratio})


def test_unknown_layer_is_one_clear_error(tiny_resnet):
    with pytest.raises(PolicyError, match=r"not in the model: layer9\.conv"):
        plan_channels(tiny_resnet, {"layer9.conv": 0.5})
    with pytest.raises(PolicyError, match="unknown criterion"):
        plan_channels(tiny_resnet, {"layer1.0.conv1": 0.5}, criterion="random")


def test_residual_group_takes_the_largest_ratio():
    table = channel_table(build_model("resnet20"))
    g = table.group("layer2.1.conv2")
    assert g.root == "layer2.0.conv2" and {"layer2.0.downsample.0", "layer2.2.conv2"} <= set(g.members)
    assert "layer3.0.conv1" in g.consumers and g.channels == 32
    counts = policy_counts(table, {"layer2.0.conv2": 0.25, "layer2.1.conv2": 0.5}, round_to=1)
    assert counts == {g.root: 16}  # the larger ratio (0.5) wins


def test_taylor_needs_a_loader(tiny_vgg):
    with pytest.raises(PolicyError, match="gradients"):
        plan_channels(tiny_vgg, uniform_policy(tiny_vgg, 0.5), "taylor")


def test_scores_are_one_per_channel(tiny_resnet):
    table = channel_table(tiny_resnet)
    for crit in ("l1", "l2", "l2_next", "bn", "group_l2"):
        scores = channel_scores(tiny_resnet, crit, table)
        assert set(scores) == set(table.roots)
        assert all(s.shape == (table.group(r).channels,) and torch.isfinite(s).all() for r, s in scores.items())


@pytest.mark.parametrize("make", [make_tiny_vgg, make_tiny_resnet])
def test_bn_and_group_l2_scores_equal_torch_prunings(make):
    """``bn`` and ``group_l2`` score as torch-pruning's BNScaleImportance and GroupMagnitudeImportance(p=2)
    (mean over the group, no normaliser) where no depthwise conv is coupled; read from the channel table,
    with no dependency graph per scoring."""
    import torch_pruning as tp

    model, x = make(), torch.zeros(1, 3, 32, 32)
    table = channel_table(model, x)
    dg = tp.DependencyGraph().build_dependency(model, example_inputs=x)
    theirs = {"bn": tp.importance.BNScaleImportance(group_reduction="mean", normalizer=None),
              "group_l2": tp.importance.GroupMagnitudeImportance(p=2, group_reduction="mean", normalizer=None)}
    for crit, imp in theirs.items():
        ours = channel_scores(model, crit, table)
        for g in table.groups:
            mod = model.get_submodule(g.root)
            group = dg.get_pruning_group(mod, dg.get_pruner_of_module(mod).prune_out_channels, list(range(g.channels)))
            torch.testing.assert_close(ours[g.root].float(), imp(group).float(), rtol=1e-6, atol=0)


def test_find_uniform_ratio_meets_the_budget_tightly():
    table = channel_table(build_model("resnet20"))
    for frac, round_to in [(0.5, 1), (0.5, 8), (0.3, 1)]:
        r = find_uniform_ratio(table, frac, round_to)
        assert policy_cost(table, uniform_policy(table, r), round_to)["macs"] <= frac * table.dense_macs
        if round_to == 1:  # minimal: a visibly smaller ratio misses the budget
            assert policy_cost(table, uniform_policy(table, r - 0.02), 1)["macs"] > frac * table.dense_macs
    with pytest.raises(BudgetError, match="cannot reach"):  # 8 channels per group at least
        find_uniform_ratio(table, 0.01, 8)


def test_plan_json_round_trip_rebuilds_the_same_model(tmp_path, tiny_resnet):
    plan = plan_channels(tiny_resnet, uniform_policy(tiny_resnet, 0.4), "l1", 1)
    plan.save(tmp_path / "plan.json")
    again = ChannelPlan.load(tmp_path / "plan.json")
    assert again == plan
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(prune_channels(tiny_resnet, plan)(x), prune_channels(make_tiny_resnet(), again)(x))
    (tmp_path / "bad.json").write_text(json.dumps({"nope": 1}))
    with pytest.raises(PolicyError):
        ChannelPlan.load(tmp_path / "bad.json")


def test_plan_for_another_model_is_refused(tiny_vgg, tiny_resnet):
    plan = plan_channels(tiny_resnet, uniform_policy(tiny_resnet, 0.5), "l2", 1)
    with pytest.raises(PolicyError):
        apply_channel_masks(tiny_vgg, plan)


# -- sensitivity picker ------------------------------------------------------------------------
def _one_sensitive_group(model):
    """A synthetic scan in which the first group loses 50x more accuracy per pruned channel."""
    table = channel_table(model)
    sensitive = table.roots[0]
    points = {}
    for g in table.groups:
        ks = [g.channels, *range(g.channels - 2, 0, -2)]
        points[g.root] = [(k, 0.9 - (0.5 if g.root == sensitive and k < g.channels else 0.01) * (1 - k / g.channels))
                          for k in ks]
    return table, sensitive, SensitivityScan(0.9, points, "l2", 1)


def test_pick_policy_meets_budget_and_prefers_insensitive_groups(tiny_vgg):
    table, sensitive, scan = _one_sensitive_group(tiny_vgg)
    policy = pick_channel_policy(table, scan, 0.5)
    counts = policy_counts(table, policy, round_to=1)
    assert table.cost_of_counts(counts)["macs"] <= 0.5 * table.dense_macs
    assert sensitive not in counts  # the costly group stays whole
    with pytest.raises(BudgetError):
        pick_channel_policy(table, scan, 0.0001)


def test_pick_policy_meets_a_further_goal_on_top_of_macs(tiny_vgg):
    table, sensitive, scan = _one_sensitive_group(tiny_vgg)
    whole = table.group(sensitive).channels

    def cost(counts) -> float:  # a "latency" that only the sensitive group's width moves
        return counts.get(sensitive, whole) / whole

    free = policy_counts(table, pick_channel_policy(table, scan, 0.5), round_to=1)
    assert sensitive not in free and cost(free) == 1.0  # the MACs budget alone leaves it whole
    goal = pick_channel_policy(table, scan, 0.5, cost=cost, until=lambda c: cost(c) <= 0.6)
    counts = policy_counts(table, goal, round_to=1)
    assert cost(counts) <= 0.6 and table.cost_of_counts(counts)["macs"] <= 0.5 * table.dense_macs
    # ordered by MACs, with only the goal naming the sensitive group: it is cut all the same
    counts = policy_counts(table, pick_channel_policy(table, scan, 0.5, until=lambda c: cost(c) <= 0.6), round_to=1)
    assert cost(counts) <= 0.6
    with pytest.raises(BudgetError, match="further goal"):
        pick_channel_policy(table, scan, 0.5, cost=cost, until=lambda c: False)


def test_scan_sensitivity_on_real_data(tiny_vgg, tiny_splits):
    ev = tiny_splits.loader("heldout", 128)
    cache: dict = {}
    scan = scan_sensitivity(tiny_vgg, ev, ev, "l2", round_to=8, ratios=(0.5,), cache=cache)
    table = channel_table(tiny_vgg)
    assert set(scan.points) == set(table.roots)
    for root, pts in scan.points.items():
        assert pts[0] == (table.group(root).channels, scan.base_acc)
        assert all(0 <= acc <= 1 for _, acc in pts)
    n = len(cache)
    scan_sensitivity(tiny_vgg, ev, ev, "l2", round_to=8, ratios=(0.5,), cache=cache)  # all cached
    assert len(cache) == n


# -- CLI ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def image_folder(tmp_path_factory, tiny_cifar):
    """A tiny ImageFolder (PNG, lossless) so the CLI runs in seconds."""
    root = tmp_path_factory.mktemp("cifar")
    for split, xs, ys, n in (("train", tiny_cifar.train_x, tiny_cifar.train_y, 300),
                             ("test", tiny_cifar.test_x, tiny_cifar.test_y, 100)):
        for i in range(n):
            d = root / split / CLASSES[int(ys[i])]
            d.mkdir(parents=True, exist_ok=True)
            Image.fromarray(xs[i]).save(d / f"{i:05d}.png")
    return root


def _cli(capsys, *argv):
    from amc.cli import main

    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def test_cli_channel_prune_and_latency(capsys, tmp_path, image_folder, monkeypatch):
    monkeypatch.setenv("AMC_CACHE", str(tmp_path / "cache"))
    ckpt = tmp_path / "resnet20_random.pt"
    torch.manual_seed(0)
    torch.save(build_model("resnet20").state_dict(), ckpt)
    out = tmp_path / "run"
    rc, stdout, err = _cli(capsys, "prune", ckpt, "--granularity", "channel", "--macs", "0.5", "--round-to", "8",
                           "--data", image_folder, "--heldout", "50", "--device", "cpu", "--batch-size", "64",
                           "--finetune-epochs", "0.1", "--out", out)
    assert rc == 0, err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["macs_fraction"] <= 0.5 and summary["onnx_max_abs_diff"] <= 1e-4
    for f in ("model.safetensors", "config.json", "channel_plan.json", "model.onnx"):
        assert (out / f).stat().st_size > 0
    rc, stdout, err = _cli(capsys, "latency", out, "--runs", "3", "--warmup", "1", "--lut", tmp_path / "lut.csv")
    assert rc == 0, err
    assert "ms" in stdout and "predicted" in stdout and (tmp_path / "lut.csv").exists()


def test_cli_channel_policy_file_errors(capsys, tmp_path, image_folder, monkeypatch):
    monkeypatch.setenv("AMC_CACHE", str(tmp_path / "cache"))
    ckpt = tmp_path / "resnet20_random.pt"
    torch.save(build_model("resnet20").state_dict(), ckpt)
    pol = tmp_path / "p.yaml"
    for text, message in (("layer9.conv1: 0.5\n", "not in the model"), ("conv1: 1.2\n", "outside [0, 1)")):
        pol.write_text(text)
        rc, _, err = _cli(capsys, "prune", ckpt, "--granularity", "channel", "--channel-policy", pol,
                          "--data", image_folder, "--heldout", "50", "--device", "cpu", "--out", tmp_path / "o")
        assert rc == 2 and message in err and len(err.strip().splitlines()) == 1

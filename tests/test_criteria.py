"""Criteria of amc.importance: APoZ, OBD, SynFlow on hand-built cases."""

import copy
from pathlib import Path

import pytest
import torch
from torch import nn

from amc.errors import PolicyError
from amc.importance import masks_from_scores, obd_scores, prune_by_criterion, synflow_masks, synflow_scores
from amc.pruners import channel as ch
from tests.conftest import make_tiny_resnet, make_tiny_vgg


def _batches(n=2, size=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(size, 3, 32, 32, generator=g), torch.randint(0, 10, (size,), generator=g)) for _ in range(n)]


def test_zeroed_channel_has_apoz_one_and_lowest_importance():
    model = make_tiny_vgg()
    table = ch.channel_table(model)
    root = table.groups[0].root
    plan = ch.ChannelPlan({root: [i for i in range(table.groups[0].channels) if i != 3]},
                          channels={root: table.groups[0].channels})
    ch.apply_channel_masks(model, plan, table)  # channel 3 of the first group: filter, BN scale and shift zero
    scores = ch.channel_scores(model, "apoz", table, loader=_batches())
    s = scores[root]
    assert float(s[3]) == 0.0  # importance = 1 - APoZ, APoZ = 1
    assert int(torch.argmin(s)) == 3 and bool((s[torch.arange(len(s)) != 3] > 0).all())
    plan2 = ch.plan_from_counts(model, {root: len(s) - 1}, "apoz", scores=scores, table=table)
    assert 3 not in plan2.keep[root]


def test_data_criteria_need_a_loader_and_leave_the_model_alone():
    model = make_tiny_resnet()
    before = copy.deepcopy(model.state_dict())
    for c in ("obd", "apoz"):
        assert ch.needs_data(c)
        with pytest.raises(PolicyError, match="needs data"):
            ch.channel_scores(model, c)
        scores = ch.channel_scores(model, c, loader=_batches(1))
        assert all(torch.isfinite(v).all() and (v >= 0).all() for v in scores.values())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert model.conv1.weight.grad is None


def test_obd_reduces_to_magnitude_with_a_constant_fisher():
    model = make_tiny_vgg()
    names = [n for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    fisher = {n: torch.full_like(model.get_submodule(n).weight, 3.0) for n in names}
    obd = obd_scores(model, names=names, fisher=fisher)
    mag = {n: model.get_submodule(n).weight.detach().abs() for n in names}
    for n in names:
        assert torch.allclose(obd[n], 1.5 * mag[n].pow(2))
    by_obd, by_mag = masks_from_scores(model, obd, sparsity=0.7), masks_from_scores(model, mag, sparsity=0.7)
    assert all(torch.equal(by_obd[n], by_mag[n]) for n in names)


def test_obd_fisher_is_the_mean_squared_per_image_gradient():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 3)).eval()
    x, y = torch.randn(5, 3, 2, 2), torch.tensor([0, 1, 2, 0, 1])
    expect = torch.zeros_like(model[1].weight)
    for i in range(5):
        model.zero_grad()
        nn.functional.cross_entropy(model(x[i:i + 1]), y[i:i + 1]).backward()
        expect += model[1].weight.grad.pow(2) / 5
    got = obd_scores(model, [(x, y)], names=["1"])["1"]
    assert torch.allclose(got, 0.5 * expect * model[1].weight.detach().pow(2), rtol=1e-4, atol=1e-10)


def _chain():
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(12, 8, bias=False), nn.ReLU(), nn.Linear(8, 6, bias=False),
                         nn.ReLU(), nn.Linear(6, 4, bias=False))


def test_synflow_conserves_the_flow_across_layers_of_a_linear_chain():
    model = _chain()
    sc = synflow_scores(model, ["1", "3", "5"], input_shape=(1, 3, 2, 2))
    sums = [float(sc[n].double().sum()) for n in ("1", "3", "5")]
    assert sums[0] > 0
    assert sums[1] == pytest.approx(sums[0], rel=1e-5) and sums[2] == pytest.approx(sums[0], rel=1e-5)


def test_synflow_is_data_independent_and_leaves_the_model_alone():
    model = make_tiny_resnet()
    before = copy.deepcopy(model.state_dict())
    a = synflow_scores(model)
    model(torch.randn(8, 3, 32, 32))  # eval mode: running a batch through changes nothing it reads
    b = synflow_scores(model)
    assert all(torch.equal(a[n], b[n]) for n in a)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    masks = synflow_masks(model, 0.3, rounds=5)
    m2 = copy.deepcopy(model)
    m3, _ = prune_by_criterion(m2, 0.3, "synflow", rounds=5)
    assert all(torch.equal(masks[n], m3[n]) for n in masks)  # deterministic, no data


def test_prune_by_criterion_meets_the_size_and_rejects_unknown_names():
    from amc.layers import count_params
    from amc.layers import weights_to_remove as _layer_share

    for c in ("magnitude", "obd", "synflow"):
        model = make_tiny_vgg()
        want = _layer_share(model, 0.3, list(synflow_scores(model)))
        masks, policy = prune_by_criterion(model, 0.3, c, loader=_batches(1), rounds=3)
        removed = sum(int((~m).sum()) for m in masks.values())
        assert removed == want  # an exact count: the model is 0.3 of its dense parameters
        assert (count_params(model) - removed) / count_params(model) == pytest.approx(0.3, abs=5e-4)
        assert all(0 <= r < 1 for r in policy.values())
    with pytest.raises(PolicyError, match="unknown weight criterion"):
        prune_by_criterion(make_tiny_vgg(), 0.3, "nope")
    with pytest.raises(PolicyError, match="needs data"):
        prune_by_criterion(make_tiny_vgg(), 0.3, "obd")


@pytest.mark.parametrize("criterion", ["obd", "apoz"])
def test_the_searchers_evaluator_scores_channels_with_a_data_criterion(tiny_splits, criterion):
    from amc.budget import Budget
    from amc.evaluator import EvalConfig, Evaluator

    ev = Evaluator(make_tiny_vgg(), tiny_splits, Budget.parse("macs=0.5"),
                   EvalConfig(granularity="channel", calib_images=256, criterion=criterion, round_to=4))
    res = ev.evaluate(ev.projector.project({n: 0.2 for n in ev.names}))
    assert res.feasible and 0.0 <= res.accuracy <= 1.0, res.reason
    assert ev.plan(res.policy).criterion == criterion


class _LastChannelsFirst:
    """A criterion from outside the package: the higher the channel index, the higher its score."""

    needs_data = False
    needs_grad = False

    def __call__(self, model, group):
        return torch.arange(group.channels, dtype=torch.float64)


class _CountsBatches(_LastChannelsFirst):
    """A data criterion: ``prepare`` marks the copy it is given with the number of batches it saw."""

    needs_data = True

    def prepare(self, model, batches):
        model._seen = len(batches)

    def __call__(self, model, group):
        assert model._seen == 2  # prepared on this very copy, with the pruner's first 2 batches
        return super().__call__(model, group)


def test_a_registered_criterion_scores_through_the_pruner_by_its_name():
    from amc.importance import CHANNEL_CRITERIA

    model = make_tiny_vgg()
    CHANNEL_CRITERIA.register("last_first", _LastChannelsFirst(), help="test: the highest channel indices")
    try:
        assert "last_first" in CHANNEL_CRITERIA and not ch.needs_data("last_first")
        table = ch.channel_table(model)
        scores = ch.channel_scores(model, "last_first", table)
        assert set(scores) == set(table.roots)
        plan = ch.plan_channels(model, ch.uniform_policy(table, 0.5), "last_first", round_to=1)
        for root, kept in plan.keep.items():
            c = table.group(root).channels
            assert kept == list(range(c - len(kept), c))  # the top-scoring channels, nothing else
        assert plan.criterion == "last_first"
    finally:
        CHANNEL_CRITERIA.unregister("last_first")
    assert "last_first" not in CHANNEL_CRITERIA
    with pytest.raises(PolicyError, match="unknown criterion 'last_first'"):
        ch.channel_scores(model, "last_first")


def test_a_registered_data_criterion_is_prepared_on_a_copy_from_the_loader():
    from amc.importance import CHANNEL_CRITERIA

    model = make_tiny_vgg()
    CHANNEL_CRITERIA.register("counts_batches", _CountsBatches())
    try:
        assert ch.needs_data("counts_batches")
        with pytest.raises(PolicyError, match="needs data: pass a loader"):
            ch.channel_scores(model, "counts_batches")
        scores = ch.channel_scores(model, "counts_batches", loader=_batches(3), batches=2)
        assert all(torch.equal(s, torch.arange(len(s), dtype=torch.float64)) for s in scores.values())
        assert not hasattr(model, "_seen")  # the caller's model is untouched
    finally:
        CHANNEL_CRITERIA.unregister("counts_batches")


def test_importing_amc_importance_fills_both_registries():
    import amc.importance as imp

    assert list(imp.CHANNEL_CRITERIA) == ["l1", "l2", "l2_next", "bn", "taylor", "group_l2", "obd", "apoz"]
    assert list(imp.WEIGHT_CRITERIA) == ["magnitude", "obd", "synflow"]
    for reg in (imp.CHANNEL_CRITERIA, imp.WEIGHT_CRITERIA):
        assert all(reg.describe().values())  # every name has a one-line help for the CLI and the API
    assert [n for n, c in imp.CHANNEL_CRITERIA.items() if c.needs_data] == ["taylor", "obd", "apoz"]
    assert [n for n, c in imp.WEIGHT_CRITERIA.items() if c.needs_data] == ["obd"]


def test_amc_importance_imports_nothing_from_the_pruners():
    import subprocess
    import sys

    code = "import sys, amc.importance; print(sorted(m for m in sys.modules if m.startswith('amc.pruners')))"
    root = str(Path(__file__).resolve().parents[1])  # this checkout's amc, as pytest's pythonpath imports it
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=root).stdout
    assert out.strip() == "[]"  # the pruners import the criteria, never the other way round

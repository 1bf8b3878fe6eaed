"""Budgets, bounds, cost models and AMC's projection: the projected policy always meets the budget."""

from __future__ import annotations

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from amc.budget import Budget, FineCost, Projector, bounds_around, make_bounds
from amc.errors import BudgetError, PolicyError
from amc.layers import layer_table
from amc.metrics import sparse_size_bits
from amc.pruners.finegrained import apply_policy
from tests.conftest import make_tiny_resnet, make_tiny_vgg


@pytest.mark.parametrize(("text", "kind", "frac"), [
    ("macs=0.5", "macs", 0.5), ("size=25%", "size", 0.25), (" params = 0.3", "params", 0.3),
    ("SIZE=1", "size", 1.0)])
def test_parse(text, kind, frac):
    b = Budget.parse(text)
    assert (b.kind, b.fraction) == (kind, pytest.approx(frac))


@pytest.mark.parametrize("text", ["macs", "flops=0.5", "macs=abc", "macs=0", "size=1.5", "size=-0.1"])
def test_parse_rejects(text):
    with pytest.raises(BudgetError):
        Budget.parse(text)


@pytest.mark.parametrize(("lower", "upper"), [(-0.1, 0.5), (0.6, 0.5), (0.0, 1.0)])
def test_bounds_rejects(lower, upper):
    with pytest.raises(PolicyError):
        make_bounds(["a", "b"], lower, upper)


def test_bounds_override_unknown_layer():
    with pytest.raises(PolicyError, match="not prunable"):
        make_bounds(["a"], overrides={"b": (0.0, 0.5)})


def _randomise(model: torch.nn.Module) -> torch.nn.Module:
    """No exact zeros anywhere, so non-zero counts equal the cost model's counts."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) + 3.0)
    return model


@pytest.mark.parametrize("make", [make_tiny_vgg, make_tiny_resnet])
def test_fine_cost_matches_measured_size(make):
    model = _randomise(make())
    table = layer_table(model)
    cost = FineCost.from_table(model, table, "size")
    policy = {t.name: r for t, r in zip(table, [0.1, 0.37, 0.5, 0.77, 0.9, 0.25, 0.6, 0.33, 0.45, 0.8], strict=False)}
    predicted = cost.fraction(policy)
    apply_policy(model, policy)
    measured = sparse_size_bits(model) / (sum(p.numel() for p in model.parameters()) * 32)
    assert measured == pytest.approx(predicted, abs=1e-12)


def test_impossible_budget_raises_before_work():
    model = make_tiny_vgg()
    table = layer_table(model)
    cost = FineCost.from_table(model, table, "size")
    bounds = make_bounds(cost.names, 0.0, 0.5)
    floor = cost.fraction({n: 0.5 for n in cost.names})
    with pytest.raises(BudgetError, match="cannot be met"):
        Projector(cost, Budget("size", floor * 0.99), bounds)
    Projector(cost, Budget("size", floor), bounds)  # exactly the floor is possible


def test_kind_mismatch():
    model = make_tiny_vgg()
    cost = FineCost.from_table(model, layer_table(model), "size")
    with pytest.raises(BudgetError):
        Projector(cost, Budget("macs", 0.5), make_bounds(cost.names))


def _synthetic_cost(numel: list[int], per: list[float], fixed: float, kind: str = "size") -> FineCost:
    total = fixed + sum(n * w for n, w in zip(numel, per, strict=True))
    return FineCost(kind, [f"l{i}" for i in range(len(numel))], numel, per, total, fixed)


layers = st.lists(st.tuples(st.integers(1, 5000), st.floats(0.01, 100.0),
                            st.floats(0.0, 0.6), st.floats(0.0, 0.39)), min_size=1, max_size=12)


@settings(max_examples=150, deadline=None)
@given(layers=layers, fixed=st.floats(0.0, 5000.0), slack=st.floats(0.0, 1.0),
       actions=st.lists(st.floats(-0.5, 1.5), min_size=12, max_size=12))
def test_projection_always_feasible(layers, fixed, slack, actions):
    numel = [n for n, _, _, _ in layers]
    per = [w for _, w, _, _ in layers]
    cost = _synthetic_cost(numel, per, fixed)
    bounds = {f"l{i}": (lo, lo + span) for i, (_, _, lo, span) in enumerate(layers)}
    floor = cost.fraction({n: hi for n, (_, hi) in bounds.items()})
    ceiling = cost.fraction({n: lo for n, (lo, _) in bounds.items()})
    budget = min(1.0, floor + slack * (ceiling - floor))
    assume(budget > 0)  # every weight pruned at the floor (one 1-weight layer, no fixed cost): no valid budget
    proj = Projector(cost, Budget("size", budget), bounds)
    proposal = {n: a for n, a in zip(cost.names, actions, strict=False)}
    out = proj.project(proposal)
    assert cost.fraction(out) <= budget + 1e-12
    for n, r in out.items():
        lo, hi = bounds[n]
        assert lo <= r <= hi
    # a policy that already meets the budget passes unchanged (the projection only raises ratios)
    assert proj.project(out) == pytest.approx(out)
    for n in out:
        assert out[n] >= min(max(proposal.get(n, lo), bounds[n][0]), bounds[n][1]) - 1e-12


@settings(max_examples=50, deadline=None)
@given(layers=layers, slack=st.floats(0.0, 1.0))
def test_uniform_policy_feasible(layers, slack):
    cost = _synthetic_cost([n for n, *_ in layers], [w for _, w, *_ in layers], 10.0)
    bounds = {f"l{i}": (lo, lo + span) for i, (_, _, lo, span) in enumerate(layers)}
    floor = cost.fraction({n: hi for n, (_, hi) in bounds.items()})
    budget = min(1.0, floor + slack * (1.0 - floor))
    proj = Projector(cost, Budget("size", budget), bounds)
    assert cost.fraction(proj.uniform()) <= budget + 1e-12


def test_sequential_clamp_matches_project():
    model = make_tiny_vgg()
    cost = FineCost.from_table(model, layer_table(model), "macs")
    proj = Projector(cost, Budget("macs", 0.4), make_bounds(cost.names, 0.0, 0.9))
    prefix: dict[str, float] = {}
    for n in cost.names:
        prefix[n] = proj.clamp(prefix, n, 0.0)
    assert prefix == proj.project({})
    assert cost.fraction(prefix) <= 0.4 + 1e-12
    assert prefix[cost.names[-1]] > 0  # all-dense proposals get pushed, the last layer the most


def test_sensitivity_policy_prefers_robust_layers():
    import pandas as pd

    cost = _synthetic_cost([100, 100], [1.0, 1.0], 0.0)
    proj = Projector(cost, Budget("size", 0.6), make_bounds(cost.names, 0.0, 0.9))
    curves = pd.DataFrame([
        {"layer": "l0", "ratio": 0.0, "accuracy": 0.9}, {"layer": "l0", "ratio": 0.4, "accuracy": 0.5},
        {"layer": "l0", "ratio": 0.8, "accuracy": 0.1},
        {"layer": "l1", "ratio": 0.0, "accuracy": 0.9}, {"layer": "l1", "ratio": 0.4, "accuracy": 0.89},
        {"layer": "l1", "ratio": 0.8, "accuracy": 0.88}])
    pol = proj.from_sensitivity(curves)
    assert cost.fraction(pol) <= 0.6 + 1e-12
    assert pol["l1"] > pol["l0"]


@settings(max_examples=40, deadline=None)
@given(actions=st.lists(st.floats(0.0, 1.0), min_size=8, max_size=8), upper=st.floats(0.3, 0.95),
       slack=st.floats(0.0, 1.0), round_to=st.sampled_from([1, 4, 8]))
def test_channel_projection_always_feasible(actions, upper, slack, round_to):
    channel = pytest.importorskip("amc.pruners.channel")
    from amc.budget import ChannelCost

    model = make_tiny_resnet()
    table = channel.channel_table(model)
    totals = {"macs": float(table.dense_macs), "params": float(table.dense_params)}
    cost = ChannelCost("macs", table.roots, lambda p: channel.policy_cost(table, p, round_to), totals)
    bounds = make_bounds(cost.names, 0.0, upper)
    floor = cost.fraction({n: upper for n in cost.names})
    budget = min(1.0, floor + slack * (1.0 - floor))
    proj = Projector(cost, Budget("macs", budget), bounds)
    out = proj.project(dict(zip(cost.names, actions, strict=False)))
    assert cost.fraction(out) <= budget + 1e-12
    assert all(0.0 <= r <= upper for r in out.values())


@settings(max_examples=100, deadline=None)
@given(layers=layers, fixed=st.floats(0.0, 5000.0), slack=st.floats(0.0, 1.0),
       actions=st.lists(st.floats(0.0, 1.0), min_size=12, max_size=12))
def test_fill_spends_the_budget_and_keeps_the_shape(layers, fixed, slack, actions):
    cost = _synthetic_cost([n for n, *_ in layers], [w for _, w, *_ in layers], fixed)
    bounds = {f"l{i}": (lo, lo + span) for i, (_, _, lo, span) in enumerate(layers)}
    floor = cost.fraction({n: hi for n, (_, hi) in bounds.items()})
    ceiling = cost.fraction({n: lo for n, (lo, _) in bounds.items()})
    budget = min(1.0, floor + slack * (ceiling - floor))
    assume(budget > 0)  # every weight pruned at the floor (one 1-weight layer, no fixed cost): no valid budget
    proj = Projector(cost, Budget("size", budget), bounds)
    # a feasible policy that may prune more than needed: upper bounds mixed with random ratios
    pol = proj.project({n: bounds[n][0] + a * (bounds[n][1] - bounds[n][0])
                        for n, a in zip(cost.names, actions, strict=False)})
    out = proj.fill(pol)
    assert cost.fraction(out) <= budget + 1e-12
    lam = None
    for n in cost.names:
        lo, _ = bounds[n]
        assert lo - 1e-12 <= out[n] <= pol[n] + 1e-12  # only ever prunes less
        if pol[n] - lo > 1e-6:  # narrower ranges: the ratio of two float differences is not exact to 1e-9
            ratio = (out[n] - lo) / (pol[n] - lo)
            assert lam is None or ratio == pytest.approx(lam, abs=1e-9)  # one shared factor
            lam = ratio
    # spent: no smaller shared factor meets the budget (the costs move in whole weights, so "at the
    # budget" means "one step short of exceeding it")
    if lam is not None and lam > 1e-6:
        less = {n: bounds[n][0] + (lam - 1e-6) * (pol[n] - bounds[n][0]) for n in cost.names}
        assert cost.fraction(less) > budget


def test_fill_projects_an_infeasible_policy():
    model = make_tiny_vgg()
    cost = FineCost.from_table(model, layer_table(model), "size")
    proj = Projector(cost, Budget("size", 0.4), make_bounds(cost.names, 0.0, 0.9))
    out = proj.fill({})
    assert cost.fraction(out) <= 0.4 + 1e-12
    assert out == pytest.approx(proj.project({}))


def test_bounds_around_a_reference_policy():
    ref = {"a": 0.5, "b": 0.05, "c": 0.97}
    b = bounds_around(ref, 0.1, lower=0.0, upper=0.9)
    assert b["a"] == pytest.approx((0.4, 0.6))
    assert b["b"] == pytest.approx((0.0, 0.15))  # cut at the lower bound
    assert b["c"] == pytest.approx((0.8, 0.9))  # centre clipped to the upper bound first
    assert make_bounds(list(ref), overrides=b) == b  # valid bounds
    with pytest.raises(PolicyError):
        bounds_around(ref, 0.0)
    with pytest.raises(PolicyError):
        bounds_around({"a": float("nan")}, 0.1)


def test_fine_grained_default_upper_reaches_size_01():
    """size=0.1 is out of reach at 90% per layer on ResNet-20 (BN and biases stay): the fine-grained
    default bound (0.98) reaches it; channel pruning keeps its 0.9."""
    from amc.budget import DEFAULT_UPPER, default_upper
    from amc.models import load_model
    from tests.conftest import MODELS

    ckpt = MODELS / "resnet20_dense.pt"
    if not ckpt.exists():
        pytest.skip("shared checkpoint missing")
    model = load_model("resnet20", ckpt).eval()
    table = layer_table(model, (1, 3, 32, 32))
    cost = FineCost.from_table(model, table, "size", (1, 3, 32, 32))
    names = [t.name for t in table]
    assert default_upper("channel") == DEFAULT_UPPER == 0.9 and default_upper("fine") == 0.98
    with pytest.raises(BudgetError, match="cannot be met"):
        Projector(cost, Budget.parse("size=0.1"), make_bounds(names, 0.0, 0.9))
    pol = Projector(cost, Budget.parse("size=0.1"), make_bounds(names, 0.0, default_upper("fine"))).uniform()
    assert cost.fraction(pol) <= 0.1 + 1e-9

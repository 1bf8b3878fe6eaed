"""The latency budget is checked against a measured latency, not the lookup table's prediction."""

from __future__ import annotations

import pytest
from torch import nn

from amc.budget import Budget
from amc.errors import BudgetError
from amc.latency_check import check_latency, cpu_measure


def test_the_verdict_follows_the_measurement_not_the_prediction():
    dense, small = nn.Linear(4, 4), nn.Linear(4, 2)
    times = {id(dense): 10.0, id(small): 6.0}  # measured: 60% of dense
    check = check_latency(small, dense, Budget.parse("latency=0.5"), measure=lambda m: times[id(m)], predicted=0.4)
    assert check.predicted == 0.4 and check.measured == pytest.approx(0.6)
    assert not check.within  # the table said 40%, the measurement says over budget
    ok = check_latency(small, dense, Budget.parse("latency=0.7"), measure=lambda m: times[id(m)], predicted=0.9)
    assert ok.within and ok.row()["within"] is True  # and the other way round


def test_a_cpu_measurement_of_a_smaller_model_through_the_runtime():
    """cpu_measure times through the current runtime: here a fake one whose times follow the MACs (a real
    timing's verdict would follow this machine's load; real timings belong to benchmarks/latency.py)."""
    from amc.latency import FakeRuntime, use_runtime

    wide = nn.Sequential(nn.Conv2d(3, 64, 3, padding=1), nn.ReLU(), nn.Conv2d(64, 64, 3, padding=1)).eval()
    thin = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1)).eval()
    with use_runtime(FakeRuntime(ms_per_mmac=0.01, overhead_ms=0.2)) as fake:
        check = check_latency(thin, wide, Budget.parse("latency=0.9"), measure=cpu_measure(runs=10))
    assert fake.calls == 2
    assert check.model_ms > 0 and check.dense_ms > 0
    assert check.measured == pytest.approx(check.model_ms / check.dense_ms)
    assert check.within == (check.measured <= 0.9)
    assert check.measured < 1.0  # 64x fewer MACs in the second conv runs faster, one thread, batch 1


def test_only_latency_budgets():
    with pytest.raises(BudgetError, match="latency budget"):
        check_latency(nn.Linear(2, 2), nn.Linear(2, 2), Budget.parse("macs=0.5"), measure=lambda m: 1.0)


class _Table:
    """A latency cost model: each layer's share of the dense latency shrinks linearly with its ratio."""

    kind = "latency"

    def __init__(self, shares):
        self.shares = shares
        self.names = list(shares)

    def fraction(self, policy):
        return sum(s * (1.0 - policy.get(n, 0.0)) for n, s in self.shares.items())


def _projector(budget: float):
    from amc.budget import Projector, make_bounds

    table = _Table({"a": 0.5, "b": 0.3, "c": 0.2})
    return Projector(table, Budget("latency", budget), make_bounds(table.names, 0.0, 0.9))


def test_tighten_keeps_the_shape_and_meets_the_tighter_budget():
    proj = _projector(0.4)
    policy = {"a": 0.2, "b": 0.5, "c": 0.0}  # 0.4 + 0.15 + 0.2 = 0.75 of dense: over
    out = proj.tighten(policy)
    assert proj.cost.fraction(out) == pytest.approx(0.4, abs=1e-6)
    lam = (out["a"] - 0.2) / (0.9 - 0.2)  # one shared step toward every upper bound
    assert out["b"] == pytest.approx(0.5 + lam * 0.4) and out["c"] == pytest.approx(lam * 0.9)
    feasible = {"a": 0.9, "b": 0.9, "c": 0.9}
    assert proj.tighten(feasible) == feasible  # already within: unchanged


def test_meet_tightens_an_over_budget_policy_keeping_its_shape():
    proj = _projector(0.4)
    over = {"a": 0.2, "b": 0.5, "c": 0.0}  # 0.75 of dense: a starting policy fitted to another estimate
    met = proj.meet(over)
    assert met == proj.tighten(over) and proj.cost.fraction(met) == pytest.approx(0.4, abs=1e-6)
    assert met["b"] > met["a"] > met["c"]  # the shape kept; project would put c at its upper bound
    assert proj.project(over)["c"] > met["c"]
    assert proj.meet({"a": 0.9, "b": 0.9, "c": 0.95}) == {"a": 0.9, "b": 0.9, "c": 0.9}  # within: clipped alone


def test_fit_measured_tightens_until_the_measurement_meets_the_budget():
    from amc.latency.fit import fit_measured

    proj = _projector(0.5)
    policy = proj.uniform()  # the table says 0.5
    measured = []

    def fraction(built):  # the end-to-end measurement: the table is 20% optimistic, plus a fixed 0.02
        measured.append(1.2 * proj.cost.fraction(built) + 0.02)
        return measured[-1]

    fit = fit_measured(policy, proj, build=lambda p: p, fraction=fraction, rounds=5)
    assert fit.within and fit.measured <= 0.5 and fit.measured == measured[-1]
    assert len(fit.steps) >= 2 and fit.steps[0]["measured"] > 0.5  # the first policy measured over
    assert fit.predicted < 0.5  # met by lowering the table's target
    assert fit.policy["a"] > policy["a"] and fit.policy["c"] > policy["c"]

    stubborn = fit_measured(policy, proj, build=lambda p: p, fraction=lambda p: 0.9, rounds=3)
    assert not stubborn.within and len(stubborn.steps) == 3  # reported as over, not hidden
    assert stubborn.steps[-1]["predicted"] == pytest.approx(proj.floor_cost)  # every layer at its upper bound
    with pytest.raises(BudgetError, match="latency budget"):
        from amc.budget import Projector, make_bounds

        t = _Table({"a": 1.0})
        t.kind = "macs"
        fit_measured({"a": 0.1}, Projector(t, Budget("macs", 0.5), make_bounds(["a"], 0.0, 0.9)),
                     build=lambda p: p, fraction=lambda p: 0.1)


def test_fit_measured_with_fill_spends_a_budget_the_table_overstated():
    from amc.latency.fit import fit_measured

    proj = _projector(0.5)
    policy = proj.uniform()  # the table says 0.5; the measurement says 0.4: room left

    def fraction(built):
        return 0.8 * proj.cost.fraction(built)

    tight = fit_measured(policy, proj, build=lambda p: p, fraction=fraction)
    assert tight.within and len(tight.steps) == 1 and tight.policy == proj.clip(policy)  # within: kept as it is
    fit = fit_measured(policy, proj, build=lambda p: p, fraction=fraction, fill=True)
    assert fit.within and 0.5 * 0.98 <= fit.measured <= 0.5  # loosened to just under the budget
    assert all(fit.policy[n] < policy[n] for n in policy)  # every layer pruned less

    calls = []

    def jumpy(built):  # the loosened policy measures over (noise): the last one within is kept
        calls.append(proj.cost.fraction(built))
        return 0.4 if len(calls) == 1 else 0.55

    kept = fit_measured(policy, proj, build=lambda p: p, fraction=jumpy, fill=True)
    assert kept.within and kept.measured == 0.4 and kept.policy == proj.clip(policy) and len(kept.steps) == 2


def test_fit_measured_with_confirm_judges_a_candidate_on_the_median_of_its_readings():
    from amc.latency.fit import fit_measured

    proj = _projector(0.5)
    policy = proj.uniform()  # the table says 0.5
    readings = iter([0.49, 0.56, 0.55,  # under once, then twice over: the median is over, so tighten
                     0.47, 0.48, 0.52])  # the tightened one: a median of 0.48, kept
    built = []

    def fraction(model):
        built.append(proj.cost.fraction(model))
        return next(readings)

    fit = fit_measured(policy, proj, build=lambda p: p, fraction=fraction, rounds=4, confirm=2)
    assert fit.within and fit.measured == 0.48 and len(fit.steps) == 2
    first, second = fit.steps
    assert (first["first_measured"], first["measured"], first["lowest"], first["highest"], first["readings"]) == \
        (0.49, 0.55, 0.49, 0.56, 3.0)
    assert second["measured"] == 0.48 and second["readings"] == 3.0
    assert fit.predicted < 0.49 and built[:3] == pytest.approx([0.5] * 3) and max(built[3:]) < 0.49  # rebuilt each

    first_reads = iter([0.49, 0.56, 0.55])
    once = fit_measured(policy, proj, build=lambda p: p, fraction=lambda m: next(first_reads), rounds=4)
    assert once.within and once.measured == 0.49 and len(once.steps) == 1  # without: the first low reading kept
    over = iter([0.52, 0.49, 0.5, 0.5])  # a reading over the budget is not measured again
    fit = fit_measured(policy, proj, build=lambda p: p, fraction=lambda m: next(over), rounds=2, confirm=2)
    assert fit.within and fit.steps[0]["measured"] == 0.52 and "readings" not in fit.steps[0]
    assert fit.steps[1]["readings"] == 3.0 and fit.measured == 0.5


class _Stairs(_Table):
    """Channels rounded to multiples of 8 on 16-channel layers: each layer keeps 8 or 16 channels, its share
    of the dense latency halved or whole (a staircase, as on ResNet-20's first stage)."""

    def fraction(self, policy):
        return sum(s * max(8, 8 * round(16 * (1.0 - policy.get(n, 0.0)) / 8)) / 16 for n, s in self.shares.items())


def _stairs(budget: float):
    from amc.budget import Projector, make_bounds

    table = _Stairs({"a": 0.5, "b": 0.3, "c": 0.1, "d": 0.1})
    return Projector(table, Budget("latency", budget), make_bounds(table.names, 0.0, 0.9))


def test_top_up_spends_a_budget_that_no_shared_factor_can():
    proj = _stairs(0.6)
    policy = {n: 0.6 for n in "abcd"}  # every layer at 8 of 16 channels: half the dense latency
    assert proj.cost.fraction(policy) == pytest.approx(0.5)
    # every layer's step comes at the same shared factor (1.0 of dense, over): fill spends nothing
    assert proj.cost.fraction(proj.fill(policy)) == pytest.approx(0.5)
    out = proj.top_up(policy)
    assert proj.cost.fraction(out) == pytest.approx(0.6)  # c and d back to 16 channels; a or b would not fit
    assert out["a"] == policy["a"] and out["b"] == policy["b"] and out["c"] < 0.25 and out["d"] < 0.25
    assert out["c"] > 0.2  # just under the step, not at the lower bound
    assert proj.top_up(out) == out  # nothing more fits
    assert _stairs(0.5).top_up({n: 0.0 for n in "abcd"}) == _stairs(0.5).project({n: 0.0 for n in "abcd"})


def test_spend_fills_then_tops_up_a_layer_at_a_time():
    proj = _stairs(0.6)
    policy = {n: 0.6 for n in "abcd"}
    assert proj.spend(policy) == proj.top_up(proj.fill(policy))
    assert proj.cost.fraction(proj.spend(policy)) == pytest.approx(0.6)  # where fill alone keeps 0.5
    smooth = _projector(0.5)  # a cost without steps: the shared factor spends it all, the shape kept
    tight = {n: 0.8 for n in smooth.names}
    spent = smooth.spend(tight)
    assert smooth.cost.fraction(spent) == pytest.approx(0.5, abs=1e-3)
    assert spent == pytest.approx(smooth.fill(tight), abs=1e-3)


def test_fit_measured_loosens_a_stepped_cost_a_layer_at_a_time():
    from amc.latency.fit import fit_measured

    proj = _stairs(0.5)
    policy = {n: 0.6 for n in "abcd"}  # the table says 0.5; the measurement 0.4: room for two small layers

    def fraction(built):
        return 0.8 * proj.cost.fraction(built)

    fit = fit_measured(policy, proj, build=lambda p: p, fraction=fraction, fill=True)
    assert fit.within and fit.measured == pytest.approx(0.48)  # 0.4 before: c and d got their channels back
    assert fit.predicted == pytest.approx(0.6) and fit.policy["a"] == 0.6 and fit.policy["b"] == 0.6


@pytest.mark.parametrize("scale, offset", [(0.9, 0.0), (1.2, 0.02)])
def test_search_target_puts_the_corrected_estimate_at_the_budget(scale, offset):
    """The table over-predicts (0.9x) or under-predicts (1.2x + 0.02): the search is aimed at the table's
    fraction that measures at the budget, and the uniform policy fitted there measures within it."""
    from amc.latency.fit import search_target

    proj = _projector(0.5)
    measured = []

    def fraction(built):
        measured.append(scale * proj.cost.fraction(built) + offset)
        return measured[-1]

    target, fit = search_target(proj.uniform(), proj, build=lambda p: p, fraction=fraction, rounds=2)
    assert target == pytest.approx((0.5 - offset) / scale, rel=1e-6)
    assert (target > 0.5) == (scale < 1.0)  # looser than the budget's figure where the table over-predicts
    assert len(fit.steps) == len(measured) == 2 and fit.within and fit.measured <= 0.5
    assert proj.budget.fraction == 0.5  # the projector itself is left alone
    # out of the bounds' reach: the floor, never a target that no policy meets
    floor, _ = search_target(proj.uniform(), proj, build=lambda p: p, fraction=lambda p: 5 * proj.cost.fraction(p))
    assert floor == pytest.approx(proj.floor_cost)


class _AimedEvaluator:
    """What ``Reaim`` uses of an evaluator: its projector and budget, ``retarget`` and ``build`` (here the
    policy itself stands for the model)."""

    def __init__(self, budget: float) -> None:
        self.projector = _projector(budget)
        self.budget = self.projector.budget
        self.built: list[dict] = []

    def retarget(self, fraction: float) -> None:
        self.projector = self.projector.under(Budget("latency", fraction))
        self.budget = self.projector.budget

    def build(self, policy):
        self.built.append(dict(policy))
        return policy, None


def _best_row(policy: dict, proj) -> dict:
    from amc.evaluator import Result

    return Result(policy, 0.5, 0.5, 0.5, 0.5, proj.cost.fraction(policy), 0.5, True, "", 1.0).row()


def test_reaim_corrects_the_aim_from_the_best_policy_that_meets_it():
    from amc.latency_check import Reaim

    ev = _AimedEvaluator(0.5)
    lean = {"a": 0.2, "b": 0.9, "c": 0.9}  # a shape the table under-predicts: it measures 1.2x its estimate
    said: list[str] = []
    reaim = Reaim(ev, Budget("latency", 0.5), lambda p: 1.2 * ev.projector.cost.fraction(p), every=3, say=said.append)
    best = _best_row(lean, ev.projector)
    worse = {**_best_row({"a": 0.9, "b": 0.9, "c": 0.9}, ev.projector), "reward": 0.1}
    reaim(best, best)
    reaim(worse, best)
    assert ev.built == [] and ev.budget.fraction == 0.5  # not before the third trial
    reaim({**worse, "feasible": float("nan")}, best)  # a trial with no result
    assert len(ev.built) >= 1 and ev.built[0] == pytest.approx(lean)  # the best so far, measured first
    assert ev.budget.fraction == pytest.approx(0.5 / 1.2, rel=0.02)  # where 1.2x the estimate meets the budget
    assert len(reaim.steps) == 1 and reaim.steps[0]["trial"] == 3 and "trial 3" in said[0]
    n = len(ev.built)
    for _ in range(3):
        reaim(worse, best)  # the best (0.46 on the table) no longer meets the aim: the best that does is measured
    assert len(ev.built) > n and ev.built[n] == pytest.approx({"a": 0.9, "b": 0.9, "c": 0.9})
    m = len(ev.built)
    for _ in range(3):
        reaim(worse, best)
    assert len(ev.built) == m and len(reaim.steps) == 2  # the same best: not measured again
    Reaim(ev, Budget("latency", 0.5), lambda p: 1.0, every=0)(best, best)  # every=0: off
    assert len(ev.built) == m


def test_refeasible_keeps_the_trials_that_meet_the_current_aim():
    import pandas as pd

    from amc.search.base import refeasible

    proj = _projector(0.5)
    rows = [{"r:a": 0.9, "r:b": 0.9, "r:c": 0.9, "reward": 0.1, "feasible": True},  # 0.1 of dense: meets it
            {"r:a": 0.1, "r:b": 0.1, "r:c": 0.1, "reward": 0.9, "feasible": True},  # 0.9: scored under a looser aim
            {"r:a": 0.9, "r:b": 0.9, "r:c": 0.9, "reward": 0.2, "feasible": False}]  # infeasible stays so
    out = refeasible(pd.DataFrame(rows), proj)
    assert list(out["feasible"]) == [True, False, False]
    assert list(pd.DataFrame(rows)["feasible"]) == [True, True, False]  # the log itself is left alone


def test_fitted_makes_each_candidate_meet_the_budget_by_measurement():
    from amc.latency_check import fitted

    ev = _AimedEvaluator(0.5)
    ev.retarget(0.6)  # the search aimed elsewhere on the table: the fit holds the budget itself
    adjust = fitted(ev, Budget("latency", 0.5), lambda p: 1.2 * ev.projector.cost.fraction(p), rounds=4)
    out = adjust({"a": 0.3, "b": 0.3, "c": 0.3})  # 0.7 on the table, 0.84 measured
    assert out is not None and 1.2 * ev.projector.cost.fraction(out) <= 0.5
    never = fitted(ev, Budget("latency", 0.5), lambda p: 0.99, rounds=3)  # measures over whatever is pruned
    assert never({"a": 0.3, "b": 0.3, "c": 0.3}) is None

"""A latency budget met by paired measurement, the estimate corrected from measured candidates (fake runtime)."""

from __future__ import annotations

import pytest
import torch

from amc.errors import BudgetError
from amc.latency import FakeRuntime, Target, prune_to_latency
from amc.layers import count_macs
from tests.test_latency_depthwise import make_tiny_mobile

X = torch.zeros(1, 3, 16, 16)


def _true_fraction(fake: FakeRuntime, small, dense) -> float:
    return fake.ms(count_macs(small, (1, 3, 16, 16))[0]) / fake.ms(count_macs(dense, (1, 3, 16, 16))[0])


@pytest.mark.parametrize("budget", [0.5])
def test_a_depthwise_model_meets_a_latency_budget_by_measurement(budget):
    """The fake charges a fixed 0.02 ms per forward: every table entry pays it, the whole model once, so
    the table's estimate is off and only the correction from measured candidates lands on the budget."""
    dense = make_tiny_mobile()
    fake = FakeRuntime(ms_per_mmac=1.0, overhead_ms=0.02)
    small, fit = prune_to_latency(dense, X, f"latency={budget}", Target(input_shape=(3, 16, 16)), runtime=fake,
                                  round_to=1, rounds=6, paired_rounds=3, runs=2)
    assert fit.met and fit.measured <= budget
    assert fit.measured == pytest.approx(_true_fraction(fake, small, dense))  # what was measured is what is returned
    assert fit.measured >= budget * 0.9  # the budget is used, not overshot (fill)
    assert small(torch.randn(2, 3, 16, 16)).shape == (2, 4)
    assert fit.steps and all(s["measured"] > 0 for s in fit.steps)
    assert fit.row()["measured_ratio"] == fit.measured and fit.paired.spread == pytest.approx(0.0)
    within = [s for s in fit.steps if s["measured"] <= budget]
    assert within and all(s["readings"] == 3.0 for s in within)  # confirm=2: each read thrice, on the median


def test_the_estimate_is_corrected_where_the_table_is_off():
    dense = make_tiny_mobile()
    fake = FakeRuntime(ms_per_mmac=1.0, overhead_ms=0.02)
    _, fit = prune_to_latency(dense, X, "latency=0.6", runtime=fake, round_to=1, rounds=6, paired_rounds=3, runs=2)
    first = fit.steps[0]
    assert abs(first["measured"] - first["predicted"]) > 0.01  # the table alone would miss
    assert fit.met and len(fit.steps) >= 2  # candidates built, measured and the estimate corrected


def test_unreachable_and_wrong_budgets_are_one_clear_error():
    dense = make_tiny_mobile()
    with pytest.raises(BudgetError, match="cannot be met"):
        prune_to_latency(dense, X, "latency=0.02", runtime=FakeRuntime(), paired_rounds=1, runs=1)
    with pytest.raises(BudgetError, match="latency= budget"):
        prune_to_latency(dense, X, "macs=0.5", runtime=FakeRuntime())

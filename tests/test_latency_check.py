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


def test_a_real_cpu_measurement_of_a_smaller_model():
    wide = nn.Sequential(nn.Conv2d(3, 64, 3, padding=1), nn.ReLU(), nn.Conv2d(64, 64, 3, padding=1)).eval()
    thin = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1)).eval()
    check = check_latency(thin, wide, Budget.parse("latency=0.9"), measure=cpu_measure(runs=10))
    assert check.model_ms > 0 and check.dense_ms > 0
    assert check.measured == pytest.approx(check.model_ms / check.dense_ms)
    assert check.within == (check.measured <= 0.9)
    assert check.measured < 1.0  # 64x fewer MACs in the second conv runs faster, one thread, batch 1


def test_only_latency_budgets():
    with pytest.raises(BudgetError, match="latency budget"):
        check_latency(nn.Linear(2, 2), nn.Linear(2, 2), Budget.parse("macs=0.5"), measure=lambda m: 1.0)

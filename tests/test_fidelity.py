"""Multi-fidelity scoring: the best policy is always one scored at the highest fidelity."""

from __future__ import annotations

import pytest
import torch

from amc.budget import Budget
from amc.errors import BudgetError
from amc.evaluator import EvalConfig, Evaluator
from amc.fidelity import successive_halving
from tests.conftest import make_tiny_resnet

LOW = EvalConfig(granularity="channel", calib_images=32, eval_images=32, batch_size=64, round_to=1)
HIGH = EvalConfig(granularity="channel", calib_images=128, eval_images=256, batch_size=64, round_to=1,
                  recovery="finetune", recovery_steps=2)


@pytest.mark.parametrize("eta", [2, 3])
def test_the_best_is_never_scored_only_at_the_lowest_fidelity(tiny_splits, eta):
    torch.manual_seed(0)
    dense = make_tiny_resnet()
    budget = Budget.parse("macs=0.5")
    low, high = Evaluator(dense, tiny_splits, budget, LOW), Evaluator(dense, tiny_splits, budget, HIGH)
    g = torch.Generator().manual_seed(0)
    policies = [low.projector.project({n: float(torch.rand((), generator=g)) for n in low.names}) for _ in range(7)]
    res = successive_halving(policies, [low, high], eta=eta)
    assert res.best is not None and res.best.rung == 1 and len(res.best.results) == 2
    promoted = [c for c in res.candidates if c.rung == 1]
    assert len(promoted) == res.evaluations[1] == -(-7 // eta)  # ceil(7 / eta) reach the second rung
    assert res.best.reward == max(c.reward for c in promoted if c.results[-1].feasible)
    low_best = max((c for c in res.candidates if c.results[0].feasible), key=lambda c: c.results[0].reward)
    assert low_best.rung == 1  # the cheap proxy's favourite was promoted, not returned unchecked
    assert res.best_policy == res.best.results[-1].policy


def test_bad_settings(tiny_splits):
    with pytest.raises(BudgetError, match="evaluator"):
        successive_halving([{}], [])
    ev = Evaluator(make_tiny_resnet(), tiny_splits, Budget.parse("macs=0.5"), LOW)
    with pytest.raises(BudgetError, match="eta"):
        successive_halving([{}], [ev], eta=1)

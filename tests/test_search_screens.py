"""Multi-fidelity screening in the Optuna searcher: cheaper evaluators score each trial first and
Optuna's SuccessiveHalvingPruner stops the unpromising ones; the best policy is always one scored at
the highest fidelity."""

from __future__ import annotations

import pytest
import torch

from amc.budget import Budget
from amc.evaluator import EvalConfig, Evaluator
from tests.conftest import make_tiny_resnet

LOW = EvalConfig(granularity="channel", calib_images=32, eval_images=32, batch_size=64, round_to=1)
HIGH = EvalConfig(granularity="channel", calib_images=128, eval_images=256, batch_size=64, round_to=1,
                  recovery="finetune", recovery_steps=2)


def test_optuna_screening_returns_only_fully_scored_trials(tiny_splits):
    """Optuna's successive halving over a screen: a trial the screen scores below the best half of its
    rung is PRUNED and never fully scored; every COMPLETE trial was scored by the full evaluator, and the
    best is the full evaluator's result. The screen's score alternates good, bad (a user score), so
    which trials survive is known."""
    import itertools

    from amc.search.optuna import OptunaConfig, OptunaSearcher

    torch.manual_seed(0)
    dense = make_tiny_resnet()
    budget = Budget.parse("macs=0.5")
    scores = itertools.cycle([0.9, 0.1])
    low = Evaluator(dense, tiny_splits, budget, LOW, score_fn=lambda model: next(scores))
    high = Evaluator(dense, tiny_splits, budget, HIGH)
    cfg = OptunaConfig(n_trials=4, seed=0, enqueue_sensitivity=False, n_startup_trials=2, screen_eta=2,
                       sampler="random")
    res = OptunaSearcher(high, cfg, screens=[low]).run()
    assert res.trials["state"].tolist() == ["COMPLETE", "PRUNED"] * 3 + ["COMPLETE"]
    assert res.trials["screen_0"].tolist() == [0.9, 0.1] * 3 + [0.9]
    assert low.calls == 7 and high.calls == 4  # every trial screened, only the survivors fully scored
    complete = res.trials[res.trials["state"] == "COMPLETE"]
    assert complete["reward"].notna().all() and res.trials[res.trials["state"] == "PRUNED"]["reward"].isna().all()
    assert res.best_result is not None and res.best_policy is not None
    assert res.best_result.reward == pytest.approx(complete["reward"].max())
    again = high.evaluate(res.best_policy)  # the full evaluator is deterministic (fixed recovery batches)
    assert again.reward == pytest.approx(res.best_result.reward)


def test_screens_are_for_single_objective_optuna_only(tiny_splits):
    from amc.errors import AmcError
    from amc.search.optuna import OptunaConfig, OptunaSearcher
    from amc.search.registry import SearchSpec, make_searcher

    ev = Evaluator(make_tiny_resnet(), tiny_splits, Budget.parse("macs=0.5"), LOW)
    with pytest.raises(AmcError, match="single-objective"):
        OptunaSearcher(ev, OptunaConfig(sampler="nsga2", n_trials=2), screens=[ev])
    with pytest.raises(AmcError, match="Optuna option"):
        make_searcher("amc", ev, SearchSpec(2, screens=(ev,)))
    other = Evaluator(make_tiny_resnet(), tiny_splits, Budget.parse("macs=0.7"), LOW)
    with pytest.raises(AmcError, match="same budget"):
        OptunaSearcher(ev, OptunaConfig(n_trials=2), screens=[other])

"""The Optuna searcher: feasible results, baselines first, resumable studies, stale-trial retry."""

from __future__ import annotations

import time

import optuna
import pytest
from optuna.trial import TrialState

from amc.budget import Budget
from amc.errors import AmcError
from amc.evaluator import EvalConfig, Evaluator
from amc.search.optuna import OptunaConfig, OptunaSearcher
from tests.conftest import make_tiny_vgg

QUICK = dict(sensitivity_ratios=(0.5,), n_startup_trials=2)  # a 1-point scan per layer for the baseline


@pytest.fixture(scope="module")
def evaluator(tiny_splits):
    return Evaluator(make_tiny_vgg(), tiny_splits, Budget.parse("size=0.5"), EvalConfig(calib_images=256))


@pytest.mark.parametrize("sampler", ["tpe", "nsga2", "random"])
def test_three_trials_return_a_feasible_policy(evaluator, tmp_path, sampler):
    s = OptunaSearcher(evaluator, OptunaConfig(n_trials=3, sampler=sampler, **QUICK), tmp_path)
    res = s.run()
    assert (tmp_path / "study.db").exists()
    assert res.best_policy is not None and res.best_result is not None and res.best_result.feasible
    assert evaluator.evaluate(res.best_policy).size <= 0.5 + 1e-9
    assert list(res.trials.origin[:2]) == ["uniform", "sensitivity"]
    assert (res.trials.state == "COMPLETE").sum() == 3
    assert all(t.constraints["budget"] <= 0 for t in s.study.trials)
    assert res.pareto and all(p.feasible for p in res.pareto)


def test_stopped_and_started_again_continues_the_study(evaluator, tmp_path):
    url = f"sqlite:///{tmp_path / 'study.db'}"
    first = OptunaSearcher(evaluator, OptunaConfig(n_trials=3, storage=url, study="s", **QUICK)).run()
    again = OptunaSearcher(evaluator, OptunaConfig(n_trials=5, storage=url, study="s", **QUICK))
    res = again.run()
    assert res.completed_before == 3
    assert (res.trials.state == "COMPLETE").sum() == 5
    assert list(res.trials.origin).count("uniform") == 1  # baselines are enqueued once per study
    for col in [c for c in first.trials if c.startswith("r:")]:
        assert list(res.trials[col][:3]) == pytest.approx(list(first.trials[col]))
    # a third start with the same total has nothing left to do
    assert (OptunaSearcher(evaluator, OptunaConfig(n_trials=5, storage=url, study="s", **QUICK))
            .run().trials.state == "COMPLETE").sum() == 5


def test_propose_observe(evaluator):
    s = OptunaSearcher(evaluator, OptunaConfig(n_trials=2, enqueue_sensitivity=False, **QUICK))
    p = s.propose()
    assert p == pytest.approx(evaluator.uniform_policy())  # the enqueued uniform policy comes first
    s.observe(p, evaluator.evaluate(p))
    q = s.propose()
    assert evaluator.projector.feasible(q)
    s.observe(q, evaluator.evaluate(q))
    assert s.completed() == 2
    with pytest.raises(AmcError):
        s.observe({"x": 0.1}, evaluator.evaluate(q))


@pytest.mark.filterwarnings("ignore:Heartbeat of storage")
def test_stale_trial_of_a_dead_worker_is_retried(evaluator, tmp_path):
    url = f"sqlite:///{tmp_path / 'study.db'}"
    cfg = OptunaConfig(n_trials=3, storage=url, study="h", heartbeat_interval=1, grace_period=1,
                       enqueue_sensitivity=False, **QUICK)
    dead = OptunaSearcher(evaluator, cfg)
    trial = dead.study.ask()  # a worker takes a trial, beats once, then dies
    dead._suggest(trial)
    dead.study._storage.record_heartbeat(trial._trial_id)
    time.sleep(2.5)  # past the 1 s grace period
    res = OptunaSearcher(evaluator, cfg).run()
    states = {t.number: t.state for t in OptunaSearcher(evaluator, cfg).study.trials}
    assert states[trial.number] == TrialState.FAIL
    retried = [t for t in optuna.load_study(study_name="h", storage=url).trials
               if t.system_attrs.get("failed_trial") == trial.number]
    assert retried and retried[0].state == TrialState.COMPLETE
    assert (res.trials.state == "COMPLETE").sum() == 3


def test_bad_config(evaluator):
    with pytest.raises(AmcError):
        OptunaConfig(sampler="cmaes-nope")
    with pytest.raises(AmcError):
        OptunaSearcher(evaluator, OptunaConfig(storage="not a url"))


def test_extra_policies_are_enqueued_after_the_baselines(evaluator):
    extra = {n: 0.95 for n in evaluator.names}  # above the 0.9 upper bound: clipped to it
    s = OptunaSearcher(evaluator, OptunaConfig(n_trials=3, enqueue_sensitivity=False, fill=False, **QUICK),
                       extra_policies={"global": extra})
    res = s.run()
    assert list(res.trials.origin[:2]) == ["uniform", "global"]
    row = res.trials.iloc[1]
    assert all(row[f"r:{n}"] == pytest.approx(0.9) for n in evaluator.names)


def test_trials_spend_the_budget(evaluator):
    """With ``fill`` (the default) every proposal is projected, then moved toward the lower bounds
    until it costs the whole budget; without it, an over-pruning proposal keeps its ratios."""
    over = {n: 0.85 for n in evaluator.names}  # far below the 0.5 size budget
    cost = evaluator.projector.cost

    def spent(trials) -> list[float]:
        return [cost.fraction({n: row[f"r:{n}"] for n in evaluator.names}) for _, row in trials.iterrows()]

    filled = OptunaSearcher(evaluator, OptunaConfig(n_trials=4, enqueue_sensitivity=False, **QUICK),
                            extra_policies={"over": over}).run().trials
    assert list(filled.origin[:2]) == ["uniform", "over"]
    assert spent(filled) == pytest.approx([0.5] * 4, abs=1e-3)  # a weight of the largest layer: 6e-4
    kept = OptunaSearcher(evaluator, OptunaConfig(n_trials=2, enqueue_sensitivity=False, fill=False, **QUICK),
                          extra_policies={"over": over}).run().trials
    assert spent(kept)[1] < 0.3

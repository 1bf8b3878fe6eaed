"""One searcher interface: both searchers are built by name from one SearchSpec, run to their
number of trials through the same ``run(progress)`` and return the one SearchResult type."""

from __future__ import annotations

import pytest

from amc.budget import Budget
from amc.errors import AmcError
from amc.evaluator import EvalConfig, Evaluator
from amc.search.base import Progress, Searcher, SearchResult
from amc.search.registry import SEARCHERS, SearchSpec, make_searcher
from tests.conftest import make_tiny_vgg


@pytest.fixture(scope="module")
def evaluator(tiny_splits):
    return Evaluator(make_tiny_vgg(), tiny_splits, Budget.parse("size=0.5"), EvalConfig(calib_images=256))


def test_unknown_method_is_one_clear_error(evaluator):
    with pytest.raises(AmcError, match="unknown search method 'magic'; known: amc, optuna"):
        make_searcher("magic", evaluator, SearchSpec(2))
    with pytest.raises(AmcError, match="episodes >= 1"):
        SearchSpec(0)


@pytest.mark.parametrize("method", sorted(SEARCHERS))
def test_every_searcher_runs_through_the_one_interface(evaluator, tmp_path, method):
    uniform = evaluator.uniform_policy()
    spec = SearchSpec(3, seed=0, start={"uniform": uniform, "sensitivity": uniform},
                      options={"warmup": 1, "batch_size": 4, "checkpoint_every": 0, "n_startup_trials": 2})
    searcher = make_searcher(method, evaluator, spec, tmp_path)
    assert isinstance(searcher, Searcher)
    seen: list[Progress] = []
    res = searcher.run(progress=seen.append)
    assert isinstance(res, SearchResult)
    assert [p.done for p in seen][-1] == 3 and all(p.total == 3 for p in seen)
    assert res.best_policy is not None and res.best_result is not None and res.best_result.feasible
    assert evaluator.projector.feasible(res.best_policy)
    assert len(res.trials) >= 3 and {"reward", "feasible"} <= set(res.trials.columns)
    assert res.extra["config"]["seed"] == 0
    # ask and tell: a proposal is observed once
    pol = searcher.propose()
    searcher.observe(pol, evaluator.evaluate(pol))
    with pytest.raises(AmcError):
        searcher.observe(pol, evaluator.evaluate(pol))


def test_spec_options_reach_each_config(evaluator, tmp_path):
    spec = SearchSpec(4, seed=3, options={"warmup": 9, "algo": "td3", "sampler": "random", "study": None,
                                          "sigma_min": 0.0, "exploit_every": 0})  # the pipeline's agent options
    agent = make_searcher("amc", evaluator, spec, tmp_path / "a")
    assert (agent.config.algo, agent.config.seed, agent.config.warmup_episodes) == ("td3", 3, 4)  # type: ignore[attr-defined]
    assert (agent.config.sigma_min, agent.config.exploit_every) == (0.0, 0)  # type: ignore[attr-defined]
    study = make_searcher("optuna", evaluator, spec, tmp_path / "o")
    cfg = study.config  # type: ignore[attr-defined]
    assert (cfg.sampler, cfg.seed, cfg.n_trials, cfg.study) == ("random", 3, 4, "amc-search")

"""Random search and CMA-ES as search methods of their own: the Optuna searcher over Optuna's
RandomSampler / CmaEsSampler, built by name, resumable, reproducible from a seed."""

from __future__ import annotations

import pandas as pd
import pytest

from amc.budget import Budget
from amc.evaluator import EvalConfig, Evaluator
from amc.search.registry import SEARCHERS, SearchSpec, make_searcher
from amc.search.samplers import SAMPLERS
from tests.conftest import make_tiny_vgg

METHODS = ["random", "cmaes"]


@pytest.fixture(scope="module")
def evaluator(tiny_splits):
    return Evaluator(make_tiny_vgg(), tiny_splits, Budget.parse("size=0.5"), EvalConfig(calib_images=256))


def spec(evaluator: Evaluator, n: int, seed: int = 5) -> SearchSpec:
    uniform = evaluator.uniform_policy()  # also the "sensitivity" start: no scan in a unit test
    return SearchSpec(n, seed=seed, start={"uniform": uniform, "sensitivity": uniform},
                      options={"n_startup_trials": 2, "sampler": "tpe"})  # the method's sampler wins


def ratios(frame: pd.DataFrame) -> pd.DataFrame:
    return frame[[c for c in frame.columns if c.startswith("r:")]].reset_index(drop=True)


def test_the_methods_are_listed_with_their_samplers():
    assert list(SEARCHERS)[:4] == ["amc", "optuna", "random", "cmaes"]
    assert all(SEARCHERS.describe()[m] for m in METHODS)
    assert set(METHODS) <= set(SAMPLERS)


@pytest.mark.parametrize("method", METHODS)
def test_a_search_runs_resumes_and_reproduces(evaluator, tmp_path, method):
    searcher = make_searcher(method, evaluator, spec(evaluator, 3), tmp_path / "a")
    assert searcher.config.sampler == method  # type: ignore[attr-defined]
    first = searcher.run()
    assert (tmp_path / "a" / "study.db").exists()
    assert (first.trials.state == "COMPLETE").sum() == 3
    assert list(first.trials.origin[:2]) == ["uniform", "sensitivity"]  # the baselines come first
    assert first.best_result is not None and first.best_result.feasible
    assert first.best_policy is not None and evaluator.projector.feasible(first.best_policy)
    for row in ratios(first.trials).to_dict("records"):  # every trial projected onto the budget
        assert evaluator.projector.feasible({k[2:]: v for k, v in row.items()})

    resumed = make_searcher(method, evaluator, spec(evaluator, 5), tmp_path / "a").run()
    assert resumed.resumed_from == 3 and (resumed.trials.state == "COMPLETE").sum() == 5
    assert ratios(resumed.trials).head(3).equals(ratios(first.trials))  # the first run's trials kept as they were

    again = [make_searcher(method, evaluator, spec(evaluator, 5), tmp_path / d).run() for d in ("b", "c")]
    assert ratios(again[0].trials).equals(ratios(again[1].trials))  # one seed, one search
    other = make_searcher(method, evaluator, spec(evaluator, 5, seed=6), tmp_path / "d").run()
    assert not ratios(other.trials).equals(ratios(again[0].trials))

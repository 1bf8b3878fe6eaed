"""The one search loop: a searcher registered by a user (a trivial proposer) runs through it like the
built-in ones; the loop owns the trials log, progress, the best result and row <-> Result."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest

from amc.budget import Budget, Policy
from amc.evaluator import EvalConfig, Evaluator, Result
from amc.search.base import Progress, Searcher, SearchResult
from amc.search.loop import result_from_row, result_row, run_search
from amc.search.registry import SEARCHERS, SearchSpec, make_searcher
from tests.conftest import make_tiny_vgg


@pytest.fixture(scope="module")
def evaluator(tiny_splits):
    return Evaluator(make_tiny_vgg(), tiny_splits, Budget.parse("size=0.5"), EvalConfig(calib_images=256))


class Ladder(Searcher):
    """Proposes the uniform policy, then ever higher ratios (projected onto the budget); drops every
    ``drop``-th proposal unscored when ``drop`` is set."""

    def __init__(self, evaluator: Evaluator, total: int, run_dir: Path | None = None, drop: int = 0) -> None:
        self.evaluator, self.total, self.run_dir, self.drop = evaluator, total, run_dir, drop
        self.proposed = 0
        self.observed: list[Result] = []

    def propose(self) -> Policy:
        lo = {n: lo for n, (lo, _) in self.evaluator.bounds.items()}
        step = 0.05 * self.proposed
        self.proposed += 1
        return self.evaluator.projector.project({n: min(0.95, v + step) for n, v in lo.items()})

    def screen(self, policy: Policy) -> bool:
        return not (self.drop and self.proposed % self.drop == 0)

    def columns(self, policy: Policy, result: Result) -> dict:
        return {"step": self.proposed - 1}

    def observe(self, policy: Policy, result: Result) -> None:
        self.observed.append(result)


@pytest.fixture
def ladder_method():
    SEARCHERS.register("ladder", lambda ev, spec, run_dir: Ladder(ev, spec.episodes, run_dir),
                       help="a test's own proposer")
    yield "ladder"
    SEARCHERS.unregister("ladder")


def test_a_registered_searcher_runs_through_the_loop(evaluator, tmp_path, ladder_method):
    assert SEARCHERS.describe()[ladder_method] == "a test's own proposer"
    searcher = make_searcher(ladder_method, evaluator, SearchSpec(4), tmp_path)
    seen: list[Progress] = []
    res = searcher.run(progress=seen.append)
    assert isinstance(res, SearchResult) and res.resumed_from == 0
    assert [p.done for p in seen] == [1, 2, 3, 4] and all(p.total == 4 for p in seen)
    assert [p.counted for p in seen] == [1, 2, 3, 4]
    assert len(searcher.observed) == 4  # type: ignore[attr-defined]
    log = pd.read_csv(tmp_path / "episodes.csv")  # the loop's trials log, the searcher's columns first
    assert list(log.columns[:2]) == ["step", "reward"] and list(log.step) == [0, 1, 2, 3]
    assert len(res.trials) == 4 and list(res.trials.step) == [0, 1, 2, 3]
    feasible = res.trials[res.trials.feasible.astype(bool)]
    assert res.best_result is not None and res.best_policy is not None
    assert res.best_result.reward == pytest.approx(feasible.reward.max())
    assert seen[-1].best_reward == pytest.approx(res.best_result.reward)
    assert evaluator.projector.feasible(res.best_policy)


def test_dropped_proposals_are_not_trials(evaluator):
    searcher = Ladder(evaluator, 3, drop=2)
    seen: list[Progress] = []
    res = run_search(searcher, seen.append)
    assert searcher.proposed == 5 and len(searcher.observed) == 3 and len(res.trials) == 3
    assert [p.done for p in seen] == [1, 1, 2, 2, 3]  # progress after every proposal, dropped ones too
    assert list(res.trials.step) == [0, 2, 4]


class Checkpointed(Ladder):
    """Resumes as if its last checkpoint held ``kept`` trials (the loop keeps their logged rows)."""

    def __init__(self, evaluator: Evaluator, total: int, run_dir: Path, kept: int) -> None:
        super().__init__(evaluator, total, run_dir)
        self.kept = kept

    def start(self) -> int:
        self.proposed = self.kept
        return self.kept


def test_a_resumed_search_keeps_the_logged_rows_of_its_checkpoint(evaluator, tmp_path):
    first = run_search(Ladder(evaluator, 3, tmp_path))
    res = run_search(Checkpointed(evaluator, 4, tmp_path, kept=2))  # the third trial was lost with a kill
    assert res.resumed_from == 2 and list(res.trials.step) == [0, 1, 2, 3]
    cols = ["step", "reward", "feasible"] + [c for c in first.trials if c.startswith("r:")]
    pd.testing.assert_frame_equal(res.trials.head(2)[cols], first.trials.head(2)[cols], check_dtype=False)
    assert list(pd.read_csv(tmp_path / "episodes.csv").step) == [0, 1, 2, 3]


def test_on_trial_sees_every_row_and_the_best_so_far(evaluator):
    rows: list[tuple[dict, dict | None]] = []
    run_search(Ladder(evaluator, 3), on_trial=lambda row, best: rows.append((row, best)))
    assert [r["step"] for r, _ in rows] == [0, 1, 2]
    for i, (_, best) in enumerate(rows):
        feasible = [r["reward"] for r, _ in rows[: i + 1] if r["feasible"]]
        assert (best is None) == (not feasible)
        if best is not None:
            assert best["reward"] == max(feasible)


def test_a_row_read_back_from_csv_is_the_same_result(evaluator, tmp_path):
    results = [evaluator.evaluate(evaluator.uniform_policy()),
               Result({"a": 0.5}, math.nan, 0.4, 0.3, 0.2, None, math.nan, False, "diverged", 1.5)]
    pd.DataFrame([result_row(r) for r in results]).to_csv(tmp_path / "log.csv", index=False)
    back = [result_from_row(row) for row in pd.read_csv(tmp_path / "log.csv").to_dict("records")]
    assert back[0].policy == pytest.approx(results[0].policy)
    assert back[0].reward == pytest.approx(results[0].reward) and back[0].feasible and back[0].reason == ""
    assert back[0].latency is None and back[1].reason == "diverged" and not back[1].feasible
    assert math.isnan(back[1].reward) and back[1].policy == {"a": 0.5}


def test_progress_carries_the_count_and_an_eta_from_the_run_pace(evaluator):
    """The loop's ``TimedProgress``: the ETA is this run's seconds per trial times the trials left, on an
    injected clock (one fake second per reading)."""
    from amc.progress import parse

    ticks = iter(range(1000))
    seen: list = []
    run_search(Ladder(evaluator, 3), progress=seen.append, clock=lambda: float(next(ticks)))
    assert [p.done for p in seen] == [1, 2, 3]
    assert all(p.eta_s is not None for p in seen[:2]) and seen[0].eta_s == pytest.approx(2.0)
    steps = [parse(p.message()) for p in seen]
    assert [(s.stage, s.done, s.total) for s in steps] == [("trial", 1, 3), ("trial", 2, 3), ("trial", 3, 3)]
    assert steps[-1].eta_s is None and steps[0].detail.startswith("best ") and steps[0].detail.endswith("%")

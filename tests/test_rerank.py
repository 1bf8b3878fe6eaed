"""The final choice: a search's top policies re-scored on every held-out image and other recovery batches."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from amc.budget import Budget
from amc.errors import AmcError
from amc.evaluator import EvalConfig, Evaluator
from amc.search.base import final_choice, rerank, rerank_evaluators, reranks, score, top_policies
from tests.conftest import make_tiny_vgg


def _log(rows: list[tuple[float, bool, dict[str, float]]]) -> pd.DataFrame:
    return pd.DataFrame([{"reward": r, "feasible": f, **{f"r:{k}": v for k, v in p.items()}} for r, f, p in rows])


def test_top_policies_distinct_feasible_best_first():
    a, b, c = {"x": 0.1, "y": 0.2}, {"x": 0.3, "y": 0.2}, {"x": 0.5, "y": 0.5}
    log = _log([(0.5, True, a), (0.9, False, c), (0.7, True, b), (0.7, True, b), (float("nan"), True, c),
                (0.6, True, a)])
    top = top_policies(log, 5)
    assert top == [(b, 0.7), (a, 0.6)]  # the infeasible and NaN rows dropped, b's duplicate once
    assert top_policies(log, 1) == [(b, 0.7)]
    # the first rows (the starting policies) join the top k where not among them; infeasible ones do not
    assert top_policies(log, 1, first=2) == [(b, 0.7), (a, 0.5)]
    assert top_policies(log, 2, first=1) == [(b, 0.7), (a, 0.6)]  # a already in: once, its best reward
    assert top_policies(log, 1, first=3) == [(b, 0.7), (a, 0.5)]  # c infeasible in row 2
    assert top_policies(pd.DataFrame(), 3) == []
    with pytest.raises(AmcError):
        top_policies(log, 0)


@pytest.fixture
def evaluator(tiny_splits):
    cfg = EvalConfig(calib_images=128, eval_images=64, recovery="finetune", recovery_steps=2, reward="acc_loss")
    return Evaluator(make_tiny_vgg(), tiny_splits, Budget.parse("size=0.5"), cfg)


def test_rerank_evaluators_see_every_heldout_image_and_other_batches(evaluator, tiny_splits):
    evs = rerank_evaluators(evaluator, seeds=(1, 2, 2))
    assert [e.config.recovery_seed for e in evs] == [1, 2]  # duplicates dropped
    assert all(e.config.eval_images is None for e in evs)
    assert all(e._n_eval == len(tiny_splits.heldout_y) > evaluator._n_eval for e in evs)
    pol = evaluator.uniform_policy()
    r1, r2 = (e.evaluate(pol) for e in evs)
    assert r1.reward != r2.reward  # other recovery batches, another score
    bn = Evaluator(make_tiny_vgg(), tiny_splits, Budget.parse("size=0.5"), EvalConfig(calib_images=128))
    assert len(rerank_evaluators(bn, seeds=(1, 2))) == 1  # BN recalibration alone: seeds change nothing


def test_rerank_orders_by_the_new_score(evaluator):
    evs = rerank_evaluators(evaluator, seeds=(1, 2))
    proj = evaluator.projector
    pols = [proj.fill(proj.project({n: 0.1 * (i + 1) for n in evaluator.names})) for i in range(2)]
    pols.append(proj.project({n: 0.9 for n in evaluator.names}))  # prunes far more than it must
    # the search's order says the worst is best: the re-rank must follow the re-scored values
    log = _log([(0.9, True, pols[2]), (0.8, True, pols[0]), (0.7, True, pols[1]), (0.95, False, pols[0])])
    ranked = rerank(evs, log, k=3)
    assert [r.rank for r in ranked] != [] and sorted(r.rank for r in ranked) == [1, 2, 3]
    scores = [r.score for r in ranked]
    assert scores == sorted(scores, reverse=True)
    for r in ranked:
        expect, results = score(evs, r.policy)
        assert r.feasible and len(r.results) == 2
        assert r.score == pytest.approx(expect)  # the same batches each time: the same score
        assert r.score == pytest.approx(sum(x.reward for x in results) / 2)
    assert rerank(evs, log, k=1)[0].rank == 1  # k=1 keeps the search's own best
    with pytest.raises(AmcError):
        rerank([], log)


def test_rerank_puts_policies_infeasible_on_rescoring_last(evaluator):
    evs = rerank_evaluators(evaluator, seeds=(1,))
    good = evaluator.projector.project({n: 0.5 for n in evaluator.names})
    log = _log([(0.9, True, {n: 0.0 for n in evaluator.names}), (0.5, True, good)])  # dense: over budget
    ranked = rerank(evs, log, k=2)
    assert [r.rank for r in ranked] == [2, 1]
    assert not ranked[1].feasible and math.isnan(ranked[1].score)


def test_channel_ratios_that_build_the_same_model_are_reranked_once(tiny_splits):
    ev = Evaluator(make_tiny_vgg(), tiny_splits, Budget.parse("macs=0.7"),
                   EvalConfig(granularity="channel", calib_images=128, eval_images=64, round_to=2))
    base = ev.projector.project({n: 0.5 for n in ev.names})
    near = {n: r + 1e-4 for n, r in base.items()}  # other ratios, the same channel counts after rounding
    other = ev.projector.project({n: 0.5 if i else 0.0 for i, n in enumerate(ev.names)})
    assert ev.architecture_key(near) == ev.architecture_key(base) != ev.architecture_key(other)
    log = _log([(0.9, True, base), (0.8, True, near), (0.7, True, other)])
    assert len(top_policies(log, 3)) == 3  # distinct ratios
    ranked = rerank([ev], log, k=3)
    assert sorted(r.rank for r in ranked) == [1, 2]  # `near` builds `base`'s model: re-scored once
    assert {ev.architecture_key(r.policy) for r in ranked} == {ev.architecture_key(base), ev.architecture_key(other)}


def test_the_final_choice_reranks_only_where_rescoring_can_change_it(evaluator, tiny_splits):
    """A reward on a subset of the held-out images or after a finetune is re-ranked; BN recalibration on
    every held-out image is exact (re-scoring repeats it); ``k`` 0 keeps the search's best."""
    budget, vgg = Budget.parse("size=0.5"), make_tiny_vgg()
    exact = Evaluator(vgg, tiny_splits, budget, EvalConfig(calib_images=128))
    subset = Evaluator(vgg, tiny_splits, budget, EvalConfig(calib_images=128, eval_images=32))
    assert exact.scored_images == len(tiny_splits.heldout_y) > subset.scored_images == 32
    assert (reranks(exact), reranks(subset), reranks(evaluator)) == (False, True, True)
    pols = [subset.projector.project({n: r for n in subset.names}) for r in (0.5, 0.7)]
    log = _log([(0.9, True, pols[1]), (0.8, True, pols[0])])
    assert final_choice(exact, log, 5) == [] and final_choice(subset, log, 0) == []
    ranked = final_choice(subset, log, 5)
    assert sorted(r.rank for r in ranked) == [1, 2]
    for r in ranked:  # scored on every held-out image
        assert r.score == pytest.approx(exact.evaluate(r.policy).reward)
    # a short finetune before the re-rank's scores: it runs on the exact BN reward too
    tuned = final_choice(exact, log, 2, seeds=(1,), steps=2)
    evs = rerank_evaluators(exact, seeds=(1,), recovery_steps=2)
    assert [(e.config.recovery, e.config.recovery_steps, e.config.recovery_seed) for e in evs] == [("finetune", 2, 1)]
    assert sorted(r.rank for r in tuned) == [1, 2]
    for r in tuned:
        assert r.score == pytest.approx(evs[0].evaluate(r.policy).reward)


def test_the_final_choice_weighs_the_starting_policies(tiny_splits):
    """A starting policy (the log's first row) that the search scored lowest is still re-ranked beside the
    top k (``first``), scored like them, and kept where the re-rank scores it above them."""
    ev = Evaluator(make_tiny_vgg(), tiny_splits, Budget.parse("size=0.5"), EvalConfig(calib_images=128,
                                                                                        eval_images=32))
    exact = rerank_evaluators(ev)[0]
    start, top = (ev.projector.fill(ev.projector.project({n: r for n in ev.names})) for r in (0.1, 0.3))
    log = _log([(0.1, True, start), (0.8, True, top), (0.6, True, top)])
    assert [r.policy for r in final_choice(ev, log, 1)] == [top]
    ranked = final_choice(ev, log, 1, first=1)
    assert {r.rank: r.policy for r in ranked} == {1: top, 2: start}  # the starting policy after the top k
    truth = {2: exact.evaluate(start).reward, 1: exact.evaluate(top).reward}
    assert [r.score for r in ranked] == pytest.approx([truth[r.rank] for r in ranked])
    assert ranked[0].rank == (2 if truth[2] > truth[1] else 1)  # the better by re-scoring; ties: the search's
    def picks(ranked):
        return [(r.rank, r.policy, r.score) for r in ranked]

    assert picks(final_choice(ev, log, 2, first=1)) == picks(final_choice(ev, log, 2))  # in the top k: once


def test_the_final_choice_compares_the_candidates_as_adjusted(tiny_splits):
    """``adjust`` (a latency budget: each candidate fitted to it by measurement) makes each candidate into the
    policy that is scored and kept, whatever the table says of it; one it cannot fit is scored nan, last."""
    ev = Evaluator(make_tiny_vgg(), tiny_splits, Budget.parse("size=0.5"), EvalConfig(calib_images=128,
                                                                                        eval_images=32))
    exact = rerank_evaluators(ev)[0]
    a, b = (ev.projector.project({n: r for n in ev.names}) for r in (0.5, 0.6))
    loose = {n: 0.05 for n in ev.names}  # over the table's budget: kept only because the adjustment says so
    assert not ev.projector.feasible(loose)
    log = _log([(0.9, True, a), (0.8, True, b)])
    seen = []

    def adjust(policy):
        seen.append(policy)
        return loose if policy == a else None  # a: fitted to a looser policy; b: cannot be fitted

    ranked = final_choice(ev, log, 2, adjust=adjust)
    assert seen == [a, b]
    assert ranked[0].rank == 1 and ranked[0].policy == loose and ranked[0].feasible
    assert ranked[0].score == pytest.approx(exact.evaluate(loose).reward)  # scored as adjusted
    assert ranked[1].rank == 2 and not ranked[1].feasible and math.isnan(ranked[1].score)
    assert ev.budget.fraction == 0.5  # the search's evaluator keeps its budget

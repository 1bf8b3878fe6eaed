"""Multi-fidelity scoring: successive halving of candidate policies over evaluators of rising cost.

A cheap reward (BN recalibration, few images) is a weak proxy at tight budgets; a dear one (a
short finetune before scoring, every validation image) ranks better but cannot score hundreds of
policies. Successive halving (Jamieson & Talwalkar, 2016; Optuna's ``SuccessiveHalvingPruner``
does the same for trials) scores every candidate at the lowest fidelity, keeps the best ``1/eta``
of the feasible ones, re-scores them at the next fidelity, and so on. The best policy is chosen
only among those scored at the HIGHEST fidelity: a policy that only the cheap proxy liked is never
returned.

Lifecycle: build one ``amc.evaluator.Evaluator`` per fidelity (cheapest first; all on the same
budget and split) -> ``successive_halving(policies, evaluators, eta)`` -> ``HalvingResult``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from amc.errors import BudgetError
from amc.evaluator import Evaluator, Result


@dataclass(frozen=True)
class Scored:
    index: int  # the candidate's position in the input list
    rung: int  # the highest fidelity it was scored at (0: the cheapest)
    results: tuple[Result, ...]  # its result at each rung it reached, cheapest first

    @property
    def reward(self) -> float:
        return self.results[-1].reward


@dataclass(frozen=True)
class HalvingResult:
    best: Scored | None  # scored at the last rung; None when no candidate was feasible there
    candidates: tuple[Scored, ...]  # every candidate, in input order
    evaluations: tuple[int, ...]  # rewards computed per rung

    @property
    def best_policy(self) -> dict[str, float] | None:
        return None if self.best is None else dict(self.best.results[-1].policy)


def successive_halving(policies: Sequence[Mapping[str, float]], evaluators: Sequence[Evaluator],
                       eta: int = 3) -> HalvingResult:
    """Score ``policies`` at each evaluator in turn, keeping the best ``ceil(n / eta)`` feasible
    ones for the next (see the module doc)."""
    if not evaluators:
        raise BudgetError("successive halving needs at least one evaluator")
    if eta < 2:
        raise BudgetError(f"eta must be >= 2, got {eta}")
    results: list[list[Result]] = [[] for _ in policies]
    alive = list(range(len(policies)))
    counts = []
    for rung, ev in enumerate(evaluators):
        for i in alive:
            results[i].append(ev.evaluate(policies[i]))
        counts.append(len(alive))
        feasible = [i for i in alive if results[i][-1].feasible and math.isfinite(results[i][-1].reward)]
        feasible.sort(key=lambda i: results[i][-1].reward, reverse=True)  # stable: ties keep input order
        if rung < len(evaluators) - 1:
            alive = feasible[:max(1, math.ceil(len(alive) / eta))]
        else:
            alive = feasible
    last = len(evaluators) - 1
    scored = tuple(Scored(i, len(r) - 1, tuple(r)) for i, r in enumerate(results))
    best = scored[alive[0]] if alive else None
    assert best is None or best.rung == last  # the invariant the module doc promises
    return HalvingResult(best, scored, tuple(counts))

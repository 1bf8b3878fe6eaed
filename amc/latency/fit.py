"""A latency budget met by measurement: the estimate corrected from measured candidates.

``fit_measured(policy, projector, build, fraction)`` makes a searched policy meet the budget by
measurement: the candidates near the budget are built and measured (``fraction``: model -> its
paired latency over the dense one's), the estimate is corrected from them (``corrected_target``: a
scale and offset refitted on the measured candidates) and the policy tightened
(``Projector.tighten``: every layer pruned a little harder, its shape kept) or loosened to the
corrected target, up to ``rounds`` times.

``search_target(policy, projector, build, fraction)`` does the same before a search: the starting
(uniform) policy fitted to the budget by measurement, and the table's fraction that the corrected
estimate puts at the budget returned, so that the search aims at what measures within the budget
rather than at the table's own figure (``Evaluator.retarget``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np
from torch import nn

from amc.budget import Budget, Projector
from amc.errors import BudgetError
from amc.policy import Policy


@dataclass
class Fit:
    policy: Policy  # the policy that met the budget by measurement (or the last one tried)
    measured: float  # its measured fraction
    predicted: float  # the table's fraction for it
    within: bool
    steps: list[dict[str, float]] = field(default_factory=list)  # per round: predicted, measured, target

    def row(self) -> dict:
        return {"fit_measured": self.measured, "fit_predicted": self.predicted, "fit_within": self.within,
                "fit_rounds": len(self.steps), "fit_steps": self.steps}


def fit_measured(policy: Mapping[str, float], projector: Projector, build: Callable[[Policy], nn.Module],
                 fraction: Callable[[nn.Module], float], rounds: int = 5, margin: float = 0.01,
                 fill: bool = False, confirm: int = 0) -> Fit:
    """Tighten ``policy`` until the model ``build`` makes of it measures (``fraction``: model -> its
    measured latency over the dense one's) within ``projector``'s latency budget.

    Each round over the budget corrects the estimate from the candidates measured so far
    (``corrected_target``: a scale and offset refitted on them), sets the table's target to the
    estimate whose corrected value is ``budget * (1 - margin)`` and tightens the policy to it (to
    every layer's upper bound, once, when the correction asks for more); a round that measures
    within the budget ends the fit. With ``fill``, a policy that measures more than
    ``2 * margin`` under the budget is loosened the same way (``Projector.fill``: every layer pruned a
    little less; where rounded channels leave no such step, ``Projector.top_up``: a layer at a time) while
    rounds remain, and the looser one kept only when it measures within. After
    ``rounds`` an over-budget policy is returned with ``within=False``: the caller decides (the
    pipeline warns, a benchmark reports it).

    With ``confirm``, a candidate whose reading is within the budget is built and measured ``confirm``
    times more and judged on the median of its readings (its step's ``measured``; ``first_measured``,
    ``lowest``, ``highest`` and ``readings`` beside it): a fit that stops at the first reading under the
    budget keeps the lowest of a noisy policy's readings (single paired measurements on a shared machine
    differ by 5-10% between calls)."""
    budget = projector.budget
    if budget.kind != "latency":
        raise BudgetError(f"fit_measured needs a latency budget, got {budget.kind}")
    pol = projector.clip(policy)
    steps: list[dict[str, float]] = []
    points: list[tuple[float, float]] = []  # (predicted, measured) of every candidate built so far
    best: Fit | None = None  # the last policy that measured within
    for i in range(max(1, rounds)):
        pred = projector.cost.fraction(pol)
        meas = fraction(build(pol))
        steps.append({"predicted": pred, "measured": meas, "target": budget.fraction})
        if confirm > 0 and meas <= budget.fraction:
            readings = [meas, *(fraction(build(pol)) for _ in range(confirm))]
            meas = float(np.median(readings))
            steps[-1].update(measured=meas, first_measured=readings[0], lowest=min(readings), highest=max(readings),
                             readings=float(len(readings)))
        points.append((pred, meas))
        if meas <= budget.fraction:
            best = Fit(pol, meas, pred, True, steps)
            if not fill or meas >= budget.fraction * (1.0 - 2 * margin):
                return best
        elif best is not None:
            return best  # a loosened policy measured over: keep the last one within
        if i == rounds - 1:
            break  # out of rounds
        target = corrected_target(points, budget.fraction * (1.0 - margin))
        if target < projector.floor_cost:  # the correction asks for more than the bounds allow:
            if pred <= projector.floor_cost * (1.0 + 1e-6):
                break  # already there
            target = projector.floor_cost  # try every layer at its upper bound once
        steps[-1]["next_target"] = target
        step = projector.under(Budget("latency", min(target, 1.0)))
        nxt = step.fill(pol) if meas <= budget.fraction else step.tighten(pol)
        if meas <= budget.fraction and projector.cost.fraction(nxt) <= pred:
            nxt = step.top_up(pol)  # no shared factor spends more (channels move in steps): a layer at a time
        if nxt == pol or projector.cost.fraction(nxt) == pred:
            break  # the bounds or the channel granularity give nothing new: measuring it again would not help
        pol = nxt
    return best if best is not None else Fit(pol, meas, pred, False, steps)


def corrected_target(points: list[tuple[float, float]], want: float) -> float:
    """The estimate's fraction whose corrected value is ``want``: the estimate corrected from the
    candidates measured so far (``points``: (estimated, measured) fractions of the dense latency).

    Two or more candidates: ``measured = scale * estimated + offset`` fitted over them by least
    squares (a local refit: the candidates lie near the budget); one: the line through it and the
    dense model (estimated and measured 1 by definition). Where the line is degenerate (no spread,
    a scale not above 0) the ratio rule ``estimated * want / measured``; a fitted line's answer is kept
    within a factor 2 of that rule (two noisy measurements close together can put a line anywhere)."""
    est, meas = points[-1]
    xs = np.array([p[0] for p in points])
    ys = np.array([p[1] for p in points])
    if len(points) >= 2 and np.ptp(xs) > 1e-9:
        a, b = (float(v) for v in np.polyfit(xs, ys, 1))
    elif est < 1.0 - 1e-9:
        a = (1.0 - meas) / (1.0 - est)
        b = 1.0 - a
    else:
        a = 0.0
    ratio_rule = est * want / meas
    if a > 1e-9:
        # a line through noisy points can extrapolate far: stay within a factor 2 of the ratio rule
        return min(max((want - b) / a, 0.5 * ratio_rule), 2.0 * ratio_rule)
    return ratio_rule


def search_target(policy: Mapping[str, float], projector: Projector, build: Callable[[Policy], nn.Module],
                  fraction: Callable[[nn.Module], float], rounds: int = 2, margin: float = 0.01,
                  confirm: int = 0) -> tuple[float, Fit]:
    """The fraction of the table's estimate that a search should aim at so that its policies MEASURE
    within ``projector``'s latency budget, and the fit it came from.

    ``policy`` (a starting policy: the uniform one) is fitted to the budget by measurement
    (``fit_measured`` with ``fill``, ``rounds`` built and measured candidates) and the estimate corrected
    from every candidate measured (``corrected_target``): the table's fraction whose corrected value is the
    budget, kept within the bounds' floor and 1. Where the table over-predicts (ResNet-20 at latency=0.5, a
    one-line table: 0.536 for a uniform policy that measures 0.5) the target lies above the budget's
    fraction and the search does not prune harder than the budget asks; where it under-predicts, below.
    The search's final choice is still fitted to the budget by measurement (``fit_measured``)."""
    fit = fit_measured(policy, projector, build, fraction, rounds=rounds, margin=margin, fill=True, confirm=confirm)
    points = [(s["predicted"], s["measured"]) for s in fit.steps]
    target = corrected_target(points, projector.budget.fraction)
    return min(max(target, projector.floor_cost), 1.0), fit

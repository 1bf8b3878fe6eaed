"""A latency budget checked against a measurement, not only against the lookup table's prediction.

The search meets a latency budget through ``amc.latency.LatencyTable`` (per-layer times summed);
the final model can still run slower end to end (overheads the table does not see). Lifecycle:
after the final model is built, ``check_latency(model, dense, budget)`` times both on the target
(CPU, 1 thread, batch 1 by default) and says whether the measured fraction meets the budget.

``paired_fraction(model, dense)`` times the two in turns (rounds of dense then pruned) and takes the
median of the rounds' ratios, so a busy spell of a shared machine hits both sides alike.
``fit_measured(policy, projector, build, fraction)`` makes a searched policy meet the budget by
measurement: while the built model measures over the budget, the table's target is lowered by the
measured / predicted gap and the policy tightened to it (``Projector.tighten``: every layer pruned a
little harder, its shape kept), up to ``rounds`` times.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field

from torch import nn

from amc.budget import Budget, Projector
from amc.errors import BudgetError
from amc.policy import Policy

Measure = Callable[[nn.Module], float]  # model -> milliseconds


@dataclass(frozen=True)
class LatencyCheck:
    budget: float  # the budget's fraction of the dense latency
    measured: float  # measured latency over the measured dense latency
    predicted: float | None  # the table's prediction of that fraction, when given
    model_ms: float
    dense_ms: float

    @property
    def within(self) -> bool:
        """The verdict: the MEASURED fraction meets the budget (the prediction does not count)."""
        return self.measured <= self.budget

    def row(self) -> dict[str, float | bool | None]:
        return {**asdict(self), "within": self.within}


def cpu_measure(runs: int = 50, input_shape: tuple[int, ...] = (3, 32, 32)) -> Measure:
    """Median milliseconds of one forward on the CPU, 1 thread, batch 1 (``amc.latency.measure``)."""
    from amc.latency import measure

    return lambda m: measure(m, "cpu", batch=1, threads=1, warmup=max(3, runs // 5), runs=runs,
                             input_shape=input_shape)


def check_latency(model: nn.Module, dense: nn.Module, budget: Budget, measure: Measure | None = None,
                  predicted: float | None = None, dense_ms: float | None = None) -> LatencyCheck:
    """Time ``model`` and ``dense`` with ``measure`` (default ``cpu_measure()``; ``dense_ms`` skips
    timing the dense model again) and compare the measured fraction with ``budget``."""
    if budget.kind != "latency":
        raise BudgetError(f"check_latency needs a latency budget, got {budget.kind}")
    measure = measure or cpu_measure()
    base = dense_ms if dense_ms is not None else measure(dense)
    ms = measure(model)
    if not base > 0:
        raise BudgetError(f"the dense model's measured latency is {base} ms; cannot form a fraction")
    return LatencyCheck(budget.fraction, ms / base, predicted, ms, base)


@dataclass(frozen=True)
class Paired:
    fraction: float  # the median of the rounds' pruned / dense ratios
    model_ms: float  # the median of the pruned model's rounds
    dense_ms: float
    rounds: list[float]


def paired_fraction(model: nn.Module, dense: nn.Module, rounds: int = 7, runs: int = 60,
                    input_shape: tuple[int, ...] = (3, 32, 32)) -> Paired:
    """``model``'s latency over ``dense``'s on the CPU (1 thread, batch 1), timed in turns: ``rounds``
    rounds of (dense, model), ``runs`` timed forwards each side; the median of the rounds' ratios."""
    measure = cpu_measure(runs, input_shape)
    d_ms, m_ms, ratios = [], [], []
    for _ in range(rounds):
        d, m = measure(dense), measure(model)
        if not d > 0:
            raise BudgetError(f"the dense model's measured latency is {d} ms; cannot form a fraction")
        d_ms.append(d)
        m_ms.append(m)
        ratios.append(m / d)
    return Paired(statistics.median(ratios), statistics.median(m_ms), statistics.median(d_ms), ratios)


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
                 fill: bool = False) -> Fit:
    """Tighten ``policy`` until the model ``build`` makes of it measures (``fraction``: model -> its
    measured latency over the dense one's) within ``projector``'s latency budget.

    Each round over the budget sets the table's target to ``predicted * budget / measured * (1 -
    margin)`` (the gap the measurement showed, as a ratio) and tightens the policy to it; a round
    that measures within the budget ends the fit. With ``fill``, a policy that measures more than
    ``2 * margin`` under the budget is loosened the same way (``Projector.fill``: every layer pruned a
    little less) while rounds remain, and the looser one kept only when it measures within. After
    ``rounds`` an over-budget policy is returned with ``within=False``: the caller decides (the
    pipeline warns, a benchmark reports it)."""
    budget = projector.budget
    if budget.kind != "latency":
        raise BudgetError(f"fit_measured needs a latency budget, got {budget.kind}")
    pol = projector.clip(policy)
    steps: list[dict[str, float]] = []
    best: Fit | None = None  # the last policy that measured within
    for i in range(max(1, rounds)):
        pred = projector.cost.fraction(pol)
        meas = fraction(build(pol))
        steps.append({"predicted": pred, "measured": meas, "target": budget.fraction})
        if meas <= budget.fraction:
            best = Fit(pol, meas, pred, True, steps)
            if not fill or meas >= budget.fraction * (1.0 - 2 * margin):
                return best
        elif best is not None:
            return best  # a loosened policy measured over: keep the last one within
        target = pred * budget.fraction / meas * (1.0 - margin)
        if i == rounds - 1 or target < projector.floor_cost:
            break  # out of rounds, or the bounds cannot go that low
        step = Projector(projector.cost, Budget("latency", min(target, 1.0)), projector.bounds)
        pol = step.fill(pol) if meas <= budget.fraction else step.tighten(pol)
    return best if best is not None else Fit(pol, meas, pred, False, steps)

"""A latency budget checked against a measurement, not only against the lookup table's prediction.

The search meets a latency budget through ``amc.latency.LatencyTable`` (per-layer times summed);
the final model can still run slower end to end (overheads the table does not see). Lifecycle:
after the final model is built, ``check_latency(model, dense, budget)`` times both on the target
(CPU, 1 thread, batch 1 by default) and says whether the measured fraction meets the budget.

``paired_fraction(model, dense)`` is ``amc.latency.paired`` on the CPU target: the two timed in
alternating rounds, the median of the rounds' ratios, so a busy spell of a shared machine hits both
sides alike. ``amc.latency.fit.fit_measured`` makes a searched policy meet the
budget by measurement, the estimate corrected from the measured candidates.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

from torch import nn

from amc.budget import Budget
from amc.errors import BudgetError
from amc.latency.fit import Fit, fit_measured, search_target
from amc.latency.paired import Paired
from amc.latency.target import Target

if TYPE_CHECKING:
    from amc.evaluator import Evaluator
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


def cpu_measure(runs: int = 50, input_shape: tuple[int, ...] = (3, 32, 32), target: Target | None = None) -> Measure:
    """Median milliseconds of one forward on ``target`` (default: the CPU, eager PyTorch, 1 thread, batch
    1, ``input_shape``) through the current runtime (``amc.latency.measure``)."""
    from amc.latency import measure

    where = target or Target(input_shape=tuple(input_shape))
    return lambda m: measure(m, warmup=max(3, runs // 5), runs=runs, target=where)


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


def paired_fraction(model: nn.Module, dense: nn.Module, rounds: int = 7, runs: int = 60,
                    input_shape: tuple[int, ...] = (3, 32, 32), target: Target | None = None) -> Paired:
    """``amc.latency.paired`` on ``target`` (default: the CPU, eager PyTorch, 1 thread, batch 1,
    ``input_shape``): ``model``'s latency over ``dense``'s, timed in alternating rounds."""
    from amc.latency import paired

    return paired(model, dense, target or Target(input_shape=tuple(input_shape)), rounds=rounds, runs=runs)


def aim_search(evaluator: Evaluator, budget: Budget, fraction: Callable[[nn.Module], float], rounds: int,
               say: Callable[[str], None] = print) -> tuple[float, list[dict[str, float]]]:
    """Before a search under a latency ``budget``: the evaluator's uniform policy fitted to the budget by
    measurement (``fraction``: model -> its paired latency over the dense one's; ``rounds`` candidates at
    most) and ``evaluator`` retargeted to the table's fraction that the corrected estimate puts at the
    budget (``amc.latency.fit.search_target``), so that the search aims at what measures within it;
    returns that fraction and the candidates measured."""
    target, fit = search_target(evaluator.uniform_policy(), evaluator.projector.under(budget),
                                lambda p: evaluator.build(p)[0], fraction, rounds=rounds)
    evaluator.retarget(target)
    say(f"latency estimate corrected before the search: the uniform policy predicted {fit.steps[0]['predicted']:.2%}, "
        f"measured {fit.steps[0]['measured']:.2%} of the dense latency; the search aims at {target:.2%} on the "
        f"table for {budget.fraction:.2%} measured")
    return target, fit.steps


def fit_to_budget(evaluator: Evaluator, budget: Budget, policy: Policy, fraction: Callable[[nn.Module], float],
                  rounds: int, say: Callable[[str], None] = print) -> Fit:
    """Tighten (or loosen) ``policy`` until the model ``evaluator`` builds from it meets ``budget`` by
    measurement (``fraction``; ``amc.latency.fit.fit_measured``), whatever fraction of the table the search
    aimed at; says what the table predicted and what was measured."""
    fit = fit_measured(policy, evaluator.projector.under(budget), lambda p: evaluator.build(p)[0], fraction,
                       rounds=rounds, fill=True)
    first = fit.steps[0]
    say(f"latency fit: the table predicted {first['predicted']:.2%}, measured {first['measured']:.2%}"
        + (f"; {'loosened' if first['measured'] <= budget.fraction else 'tightened'} in "
           f"{len(fit.steps) - 1} round(s) to {fit.measured:.2%} measured" if len(fit.steps) > 1 else "")
        + ("" if fit.within else " (still over the budget)"))
    return fit


__all__ = ["LatencyCheck", "Measure", "Paired", "aim_search", "check_latency", "cpu_measure", "fit_to_budget",
           "paired_fraction"]

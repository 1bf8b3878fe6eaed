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
               say: Callable[[str], None] = print, confirm: int = 0) -> tuple[float, list[dict[str, float]]]:
    """Before a search under a latency ``budget``: the evaluator's uniform policy fitted to the budget by
    measurement (``fraction``: model -> its paired latency over the dense one's; ``rounds`` candidates at
    most) and ``evaluator`` retargeted to the table's fraction that the corrected estimate puts at the
    budget (``amc.latency.fit.search_target``), so that the search aims at what measures within it;
    returns that fraction and the candidates measured (``confirm``: readings more of a candidate within the
    budget, judged on their median, as ``fit_measured`` takes them)."""
    target, fit = search_target(evaluator.uniform_policy(), evaluator.projector.under(budget),
                                lambda p: evaluator.build(p)[0], fraction, rounds=rounds, confirm=confirm)
    evaluator.retarget(target)
    say(f"latency estimate corrected before the search: the uniform policy predicted {fit.steps[0]['predicted']:.2%}, "
        f"measured {fit.steps[0]['measured']:.2%} of the dense latency; the search aims at {target:.2%} on the "
        f"table for {budget.fraction:.2%} measured")
    return target, fit.steps


def fit_to_budget(evaluator: Evaluator, budget: Budget, policy: Policy, fraction: Callable[[nn.Module], float],
                  rounds: int, say: Callable[[str], None] = print, confirm: int = 0) -> Fit:
    """Tighten (or loosen) ``policy`` until the model ``evaluator`` builds from it meets ``budget`` by
    measurement (``fraction``; ``amc.latency.fit.fit_measured``), whatever fraction of the table the search
    aimed at (``confirm``: readings more of a candidate within the budget, judged on their median); says what the
    table predicted and what was measured."""
    fit = fit_measured(policy, evaluator.projector.under(budget), lambda p: evaluator.build(p)[0], fraction,
                       rounds=rounds, fill=True, confirm=confirm)
    first = fit.steps[0]
    say(f"latency fit: the table predicted {first['predicted']:.2%}, measured {first['measured']:.2%}"
        + (f"; {'loosened' if first['measured'] <= budget.fraction else 'tightened'} in "
           f"{len(fit.steps) - 1} round(s) to {fit.measured:.2%} measured" if len(fit.steps) > 1 else "")
        + ("" if fit.within else " (still over the budget)"))
    return fit


def fitted(evaluator: Evaluator, budget: Budget, fraction: Callable[[nn.Module], float],
           rounds: int, confirm: int = 0) -> Callable[[Policy], Policy | None]:
    """A final choice's ``adjust`` (``amc.search.base.final_choice``) under a latency ``budget``: each candidate
    fitted to it by paired measurement (``fit_measured`` with ``fill``, ``rounds`` candidates at most; None when
    it still measures over), so that the candidates are compared as they will be kept. The table's error
    depends on the policy's shape (the shared MobileNetV2 at latency=0.6, a per-kind table aimed by the uniform
    policy: the uniform policy predicted 0.598 and measured 0.542, Optuna's pick 0.625 and 0.685), and a search
    drifts toward the shapes it under-predicts: fitted afterwards, its pick lost a tenth of its latency. The
    pipeline does this with ``latency_fit_candidates`` (off by default: one seed on that network, the agent's row
    +12.8 points and Optuna's -1.3, in twice the final choice's time; single paired measurements there differ by
    10% and more between calls)."""
    def adjust(policy: Policy) -> Policy | None:
        fit = fit_measured(policy, evaluator.projector.under(budget), lambda p: evaluator.build(p)[0], fraction,
                           rounds=rounds, fill=True, confirm=confirm)
        return fit.policy if fit.within else None

    return adjust


class Reaim:
    """A latency search's aim corrected as the search goes: an ``on_trial`` hook (``amc.search.loop.run_search``,
    ``run_agent``'s ``on_episode``) that every ``every`` trials takes the best policy so far that meets the
    current aim (of the trials it has seen: the loop's best may be one scored under a looser aim), fits it
    to ``budget`` by paired measurement (``amc.latency.fit.search_target``, ``rounds`` candidates at most;
    ``fraction``: model -> its paired latency over the dense one's) and retargets ``evaluator`` to the table's
    fraction that the estimate corrected for THAT policy puts at the budget. The table's error depends on the
    policy's shape (ResNet-20, search_hard's one-line table: the uniform policy predicted 0.499 and measured
    0.446, the agent's pick 0.553 and 0.575), so an aim taken from the uniform policy alone (``aim_search``)
    can hold the search's later picks well over the budget, and the final fit then prunes them harder than
    they were scored. The same best twice is not measured again. ``steps``: one entry per re-aim.

    Trials scored under an earlier aim keep their verdicts in the search's log; a final choice re-scores its
    candidates against the current aim (``amc.search.base.rerank``), or ``amc.search.base.refeasible``
    re-judges a log. Not used by the pipeline: tried on ResNet-20 at latency=0.5 (reports/agent.md,
    ``ls_rr_reaim``), the aim followed the noise of single paired measurements on a shared machine (up to 10%
    between calls) more than the shapes, and the row did worse than the aim taken once before the search."""

    def __init__(self, evaluator: Evaluator, budget: Budget, fraction: Callable[[nn.Module], float], every: int,
                 rounds: int = 2, say: Callable[[str], None] = print) -> None:
        self.evaluator, self.budget, self.fraction, self.every = evaluator, budget, fraction, every
        self.rounds, self.say = rounds, say
        self.trials = 0
        self.steps: list[dict[str, float]] = []
        self._last: tuple | None = None
        self._rows: list[dict] = []  # the feasible trials seen

    def __call__(self, row: dict, best: dict | None) -> None:
        from amc.search.loop import result_from_row

        self.trials += 1
        if (ok := row.get("feasible")) is not None and ok == ok and bool(ok):  # NaN: a trial with no result
            self._rows.append(row)
        if self.every <= 0 or self.trials % self.every:
            return
        ev = self.evaluator
        # the best of the trials that meet the CURRENT aim (the loop's best may be one scored under a looser one)
        fits = [(float(r["reward"]), i) for i, r in enumerate(self._rows)
                if ev.projector.feasible(result_from_row(r).policy)]
        if not fits:
            return
        policy = result_from_row(self._rows[max(fits)[1]]).policy
        if (key := tuple(sorted(policy.items()))) == self._last:
            return
        self._last = key
        target, fit = search_target(policy, ev.projector.under(self.budget), lambda p: ev.build(p)[0],
                                    self.fraction, rounds=self.rounds)
        before = ev.budget.fraction
        ev.retarget(target)
        first = fit.steps[0]
        self.steps.append({"trial": self.trials, "aim_before": before, "aim": target,
                           "predicted": first["predicted"], "measured": first["measured"]})
        self.say(f"latency aim corrected at trial {self.trials}: the best so far predicted {first['predicted']:.2%}, "
                 f"measured {first['measured']:.2%}; the search aims at {target:.2%} on the table (was {before:.2%})")


__all__ = ["LatencyCheck", "Measure", "Paired", "Reaim", "aim_search", "check_latency", "cpu_measure", "fit_to_budget",
           "fitted", "paired_fraction"]

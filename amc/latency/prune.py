"""Data-free channel pruning to a latency budget met by paired measurement.

``prune_to_latency(model, x, "latency=0.6")`` is the latency counterpart of
``amc.prune_to_budget`` (MACs and params): one uniform ratio per channel group, chosen on the
calibrated lookup table's estimate (``LatencyTable``), then the candidate is built and measured
paired with the dense model, the estimate corrected from the measured candidates and the policy
tightened or loosened (``amc.latency.fit.fit_measured``), so the result meets the budget by
measurement. Lifecycle::

    small, fit = prune_to_latency(model, x, "latency=0.6", Target(threads=1), runtime=None)
    fit.met, fit.measured, fit.predicted, fit.paired.line()

A budget the held layers put out of reach (every group at ``max_ratio`` estimated above it) is one
``BudgetError``; a budget the estimate reaches but the measurement does not after ``rounds`` comes
back with ``met=False`` and the last candidate.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from amc.budget import Budget, ChannelCost, Projector, make_bounds
from amc.errors import BudgetError
from amc.latency.fit import fit_measured
from amc.latency.paired import Paired, paired
from amc.latency.runtime import Runtime, current_runtime
from amc.latency.table import CALIBRATION_RATIOS, LatencyTable
from amc.latency.target import Target


@dataclass
class LatencyFit:
    budget: float  # the budget's fraction of the dense latency
    predicted: float  # the calibrated table's estimate of the returned model's fraction
    measured: float  # its paired measurement (the median of the rounds' ratios)
    met: bool  # measured <= budget
    paired: Paired  # the returned model's paired measurement
    policy: dict[str, float]  # ratio per channel-group root
    steps: list[dict[str, float]] = field(default_factory=list)  # the fit's rounds: predicted, measured, target
    scale: float = 1.0  # the table's calibration: scale * summed layers + overhead_ms
    overhead_ms: float = 0.0

    def row(self) -> dict[str, Any]:
        return {"budget": self.budget, "predicted_ratio": self.predicted, "measured_ratio": self.measured,
                "met": self.met, "fit_rounds": len(self.steps), "dense_ms": self.paired.dense_ms,
                "model_ms": self.paired.model_ms, "spread": self.paired.spread}


def latency_cost(model: nn.Module, example_inputs: torch.Tensor, lut: LatencyTable, round_to: int = 8,
                 skip: tuple[str, ...] = ()) -> tuple[Any, ChannelCost]:
    """The channel table of ``model`` and a latency cost model over its group roots (the table's
    calibrated estimate, ``policy -> {"latency": ms}``, dense total ``{}``)."""
    from amc.pruners.channel import channel_table, policy_counts

    table = channel_table(model, example_inputs)
    names = [r for r in table.roots if r not in skip]
    ms = lut.counts_cost(table)
    return table, ChannelCost("latency", names, lambda p: {"latency": ms(policy_counts(table, p, round_to))},
                              {"latency": float(ms({}))})


@dataclass
class LatencyProblem:
    """A model's latency budget on a target, data-free: the calibrated table's cost model and its projector,
    ``build`` (policy -> the physically pruned model) and ``fraction`` (model -> its paired latency over the
    dense one's, each measurement kept in ``seen``)."""
    dense: nn.Module
    projector: Projector
    lut: LatencyTable
    build: Callable[[Mapping[str, float]], nn.Module]
    fraction: Callable[[nn.Module], float]
    seen: list[Paired] = field(default_factory=list)  # every paired measurement, in order


def latency_problem(model: nn.Module, example_inputs: torch.Tensor, budget: str | Budget = "latency=0.6",
                    target: Target | None = None, *, runtime: Runtime | None = None, criterion: str = "l2",
                    round_to: int = 8, max_ratio: float = 0.9, paired_rounds: int = 5, runs: int = 20,
                    table_path: str | os.PathLike | None = None,
                    bounds: Mapping[str, tuple[float, float]] | None = None) -> LatencyProblem:
    """``model``'s latency ``budget`` on ``target`` (default: the CPU, eager PyTorch, 1 thread, batch 1,
    ``example_inputs``' shape): the lookup table calibrated on a copy of it, the channel cost and projector
    (every group within ``bounds``, default 0 to ``max_ratio``), and the build and paired measurement."""
    from amc.pruners.channel import plan_from_counts, policy_counts, prune_channels

    b = budget if isinstance(budget, Budget) else Budget.parse(budget)
    if b.kind != "latency":
        raise BudgetError(f"prune_to_latency takes a latency= budget, got {b}")
    x = example_inputs
    target = target or Target(input_shape=tuple(x.shape[1:]))
    rt = runtime or current_runtime()
    dense = copy.deepcopy(model).eval()  # the caller's model keeps its mode
    lut = LatencyTable(table_path, target=target, runtime=rt)
    lut.calibrate(dense, thin=CALIBRATION_RATIOS)
    table, cost = latency_cost(dense, x, lut, round_to)
    projector = Projector(cost, b, dict(bounds) if bounds is not None else make_bounds(cost.names, 0.0, max_ratio))

    def build(policy: Mapping[str, float]) -> nn.Module:
        counts = policy_counts(table, dict(policy), round_to)
        plan = plan_from_counts(dense, counts, criterion, table=table, round_to=round_to)
        return prune_channels(dense, plan, x).eval()

    seen: list[Paired] = []

    def fraction(m: nn.Module) -> float:
        seen.append(paired(m, dense, target, rounds=paired_rounds, runs=runs, runtime=rt))
        return seen[-1].fraction

    return LatencyProblem(dense, projector, lut, build, fraction, seen)


def prune_to_latency(model: nn.Module, example_inputs: torch.Tensor, budget: str | Budget = "latency=0.6",
                     target: Target | None = None, *, runtime: Runtime | None = None, criterion: str = "l2",
                     round_to: int = 8, max_ratio: float = 0.9, rounds: int = 6, paired_rounds: int = 5,
                     runs: int = 20, table_path: str | os.PathLike | None = None,
                     bounds: Mapping[str, tuple[float, float]] | None = None,
                     confirm: int = 2) -> tuple[nn.Module, LatencyFit]:
    """A physically smaller copy of ``model`` whose paired latency on ``target`` (default: the CPU, eager
    PyTorch, 1 thread, batch 1, ``example_inputs``' shape) is within ``budget``; see the module doc. ``confirm``:
    readings more of a candidate within the budget, judged on their median (``LatencyOptions.latency_confirm``)."""
    pb = latency_problem(model, example_inputs, budget, target, runtime=runtime, criterion=criterion,
                         round_to=round_to, max_ratio=max_ratio, paired_rounds=paired_rounds, runs=runs,
                         table_path=table_path, bounds=bounds)
    projector = pb.projector
    fit = fit_measured(projector.uniform(), projector, pb.build, pb.fraction, rounds=rounds, fill=True,
                       confirm=confirm)
    # the returned policy's measurement: the latest reading nearest the fit's verdict (the median of its readings)
    final = min(reversed(pb.seen), key=lambda p: abs(p.fraction - fit.measured))
    small = pb.build(fit.policy)  # deterministic: the model that was measured
    pb.lut.save()
    return small, LatencyFit(projector.budget.fraction, fit.predicted, final.fraction, fit.within, final,
                             dict(fit.policy), fit.steps, pb.lut.scale, pb.lut.overhead_ms)

"""What a plan or a policy costs: MACs and parameters from the table's analytic cost model, and the
uniform ratio that meets a MACs target.

Lifecycle::

    plan_cost(table, plan)                     # {"macs", "params"} of the pruned model, no forward pass
    policy_cost(table, policy, round_to=8)     # the same from a policy's channel counts (no scoring)
    find_uniform_ratio(table, 0.5)             # smallest uniform ratio within 50% of the dense MACs
    smallest_ratio(fits, hi, tol)              # the bisection it uses (and the one-shot pruner's)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from torch import nn

from amc.errors import BudgetError
from amc.layers import ExampleInputs
from amc.pruners.channel.graph import as_table
from amc.pruners.channel.plan import ChannelPlan, policy_counts, uniform_policy
from amc.pruners.channel.table import ChannelTable


def plan_cost(model_or_table: nn.Module | ChannelTable, plan: ChannelPlan | Mapping[str, int],
              example_inputs: ExampleInputs | None = None) -> dict[str, int]:
    """MACs (one input of the table's shape) and parameter count of the pruned model, analytically:
    no tracing, no forward pass. ``plan`` may be a ChannelPlan or ``{root: kept channels}``."""
    table = as_table(model_or_table, example_inputs)
    counts = plan.counts() if isinstance(plan, ChannelPlan) else dict(plan)
    return table.cost_of_counts(counts)


def policy_cost(model_or_table: nn.Module | ChannelTable, policy: Mapping[str, float],
                round_to: int = 8, example_inputs: ExampleInputs | None = None) -> dict[str, int]:
    """``plan_cost`` of a policy without scoring channels (the counts decide the cost)."""
    table = as_table(model_or_table, example_inputs)
    return table.cost_of_counts(policy_counts(table, policy, round_to))


def find_uniform_ratio(model_or_table: nn.Module | ChannelTable, macs_fraction: float, round_to: int = 8,
                       max_ratio: float = 0.95, tol: float = 1e-4,
                       example_inputs: ExampleInputs | None = None) -> float:
    """The smallest uniform ratio (to ``tol``) whose pruned MACs are <= ``macs_fraction`` of dense."""
    table = as_table(model_or_table, example_inputs)
    if not 0.0 < macs_fraction:
        raise BudgetError(f"MACs fraction must be > 0, got {macs_fraction}")
    target = macs_fraction * table.dense_macs

    def macs(r: float) -> int:
        return policy_cost(table, uniform_policy(table, r), round_to)["macs"]

    if macs(0.0) <= target:
        return 0.0
    hi = max_ratio
    if macs(hi) > target:
        raise BudgetError(f"uniform channel pruning cannot reach {macs_fraction:.1%} of dense MACs "
                          f"(at ratio {hi} it keeps {macs(hi) / table.dense_macs:.1%})")
    return smallest_ratio(lambda r: macs(r) <= target, hi, tol)


def smallest_ratio(fits: Callable[[float], bool], hi: float, tol: float) -> float:
    """Bisection on [0, hi] for the smallest ratio that ``fits`` (a cost falling as the ratio rises),
    to within ``tol``; ``hi`` itself when nothing smaller is found."""
    lo = 0.0
    while hi - lo > tol:
        mid = (lo + hi) / 2
        if fits(mid):
            hi = mid
        else:
            lo = mid
    return hi

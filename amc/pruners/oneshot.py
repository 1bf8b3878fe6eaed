"""Data-free one-shot channel pruning to a budget: the uniform and global baselines in one call.

::

    small, info = prune_to_budget(model, torch.randn(1, 3, 224, 224), "macs=0.5")
    info.macs_fraction, info.met, info.held   # measured on the pruned model, and what stayed whole

``mode="uniform"`` removes the same fraction of output channels from every prunable group and
bisects that fraction until the budget holds (held layers such as the classifier stay whole, so
the prunable ones go further than the budget's fraction). ``mode="global"`` ranks every channel of
every group on one scale (each group's scores over its mean) and bisects the share of channels
removed. Both cap a group at ``max_ratio`` and keep ``round_to`` multiples, and both check the
pruned model itself: if its measured cost is above the budget (a group whose cost the analytic
model only approximates), the target is tightened and the plan rebuilt. ``info.met`` is False,
with a note, when the held layers leave the budget out of reach.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from amc.budget import Budget
from amc.errors import BudgetError, PolicyError
from amc.layers import ExampleInputs, count_macs, count_params
from amc.pruners.channel import (
    ChannelPlan,
    ChannelTable,
    channel_scores,
    channel_table,
    find_uniform_ratio,
    plan_from_counts,
    policy_counts,
    prune_channels,
    round_channels,
    smallest_ratio,
    uniform_policy,
)
from amc.pruners.channel.limits import TraceLimits

MODES = ("uniform", "global")
BISECT_STEPS = 30  # 2^-30 of the ratio range: far finer than one channel
REFITS = 4  # rebuilds with a tighter target when the measured cost lands above the budget


@dataclass(frozen=True)
class OneShotInfo:
    """What ``prune_to_budget`` did: the budget, the ratio it settled on, measured costs, notes."""

    budget: str
    mode: str
    criterion: str
    round_to: int
    ratio: float  # uniform: the fraction removed from every group; global: the share of channels removed
    dense_macs: int
    macs: int
    dense_params: int
    params: int
    met: bool  # the measured cost is within the budget
    plan: ChannelPlan
    held: dict[str, str] = field(default_factory=dict)  # layer -> why its output channels stay
    notes: list[str] = field(default_factory=list)

    @property
    def macs_fraction(self) -> float:
        return self.macs / self.dense_macs if self.dense_macs else 1.0

    @property
    def params_fraction(self) -> float:
        return self.params / self.dense_params if self.dense_params else 1.0


def _counts_at(table: ChannelTable, mode: str, ratio: float, round_to: int, max_ratio: float,
               norm_scores: dict[str, torch.Tensor]) -> dict[str, int]:
    """Kept channels per group root when removing ``ratio`` (see the module docstring)."""
    if mode == "uniform":
        return policy_counts(table, uniform_policy(table, min(ratio, max_ratio)), round_to)
    allv = torch.cat([s for s in norm_scores.values()]) if norm_scores else torch.zeros(0)
    if ratio <= 0 or allv.numel() == 0:
        return {}
    threshold = torch.quantile(allv, min(ratio, 1.0)).item()
    counts = {}
    for root, s in norm_scores.items():
        c = int(s.numel())
        removed = min(int((s <= threshold).sum()), int(max_ratio * c))
        k = table.group(root).kept_count(round_channels(c - removed, c, round_to))
        if k < c:
            counts[root] = k
    return counts


def _largest_held(table: ChannelTable, n: int = 2) -> str:
    """``; largest held: <layer> (<share> of MACs: <why>), ...`` for the held layers of most MACs."""
    macs = {li.name: li.macs for li in table.layers}
    held = sorted(table.unprunable, key=lambda name: -macs.get(name, 0))[:n]
    if not held or not table.dense_macs:
        return ""
    return "; largest held: " + ", ".join(
        f"{name} ({macs.get(name, 0) / table.dense_macs:.1%} of MACs: {table.unprunable[name]})" for name in held)


def _bisect(cost: Callable[[float], int], target: float, hi: float) -> float:
    """The smallest ratio in [0, hi] whose cost is <= target (``hi`` itself if none is)."""
    if cost(0.0) <= target:
        return 0.0
    return smallest_ratio(lambda r: cost(r) <= target, hi, hi / 2**BISECT_STEPS)


def prune_to_budget(model: nn.Module, example_inputs: ExampleInputs, budget: str | Budget = "macs=0.5",
                    criterion: str = "l2", round_to: int = 8, mode: str = "uniform",
                    max_ratio: float = 0.95, limits: TraceLimits | None = None) -> tuple[nn.Module, OneShotInfo]:
    """A physically smaller copy of ``model`` within ``budget`` (``macs=F`` or ``params=F``), no data.

    ``example_inputs`` is one batch the model accepts (its shape sets the MACs): a tensor, a tuple of
    positional inputs or a dict of keyword inputs. Every tensor the model returns keeps its shape (the
    layers feeding an output are held, named in ``info.held``). ``limits`` bound the tracing (an
    ``amc.pruners.channel.TraceLimit`` past them) and carry an optional progress callback. Raises
    ``PolicyError`` when no layer of the model can be channel-pruned; a budget the held layers put
    out of reach is pruned as far as ``max_ratio`` allows and reported with ``info.met = False``.
    """
    b = budget if isinstance(budget, Budget) else Budget.parse(budget)
    if b.kind not in ("macs", "params"):
        raise BudgetError(f"one-shot pruning takes a macs= or params= budget, got {b}")
    if mode not in MODES:
        raise PolicyError(f"unknown mode {mode!r}; known: {', '.join(MODES)}")
    if not 0.0 < max_ratio < 1.0:
        raise PolicyError(f"max_ratio must be in (0, 1), got {max_ratio}")
    table = channel_table(model, example_inputs, limits)
    if not table.groups:
        why = "; ".join(f"{n}: {r}" for n, r in list(table.unprunable.items())[:3])
        raise PolicyError(f"{type(model).__name__} has no channel-prunable layer ({why or 'no conv or linear layer'})")
    scores = channel_scores(model, criterion, table)
    norm = {r: (s / s.mean().clamp(min=1e-12)).float() for r, s in scores.items()}
    dense = {"macs": table.dense_macs, "params": table.dense_params}
    target = b.fraction * dense[b.kind]
    notes: list[str] = []

    def analytic(ratio: float) -> int:
        return table.cost_of_counts(_counts_at(table, mode, ratio, round_to, max_ratio, norm))[b.kind]

    goal = target
    for _ in range(REFITS + 1):
        if mode == "uniform" and b.kind == "macs":
            try:
                ratio = find_uniform_ratio(table, goal / table.dense_macs, round_to, max_ratio, tol=1e-6)
            except BudgetError:
                ratio = max_ratio
        else:
            ratio = _bisect(analytic, goal, max_ratio if mode == "uniform" else 1.0)
        counts = _counts_at(table, mode, ratio, round_to, max_ratio, norm)
        plan = plan_from_counts(model, counts, criterion, scores=scores, table=table, round_to=round_to,
                                notes=[f"{n}: left alone ({r})" for n, r in table.unprunable.items()])
        pruned = prune_channels(model, plan, example_inputs, limits)
        measured = {"macs": count_macs(pruned, example_inputs=example_inputs)[0], "params": count_params(pruned)}
        if measured[b.kind] <= target or analytic(ratio) > goal:
            break  # met, or the analytic model cannot go lower: tightening would not help
        predicted = max(analytic(ratio), 1)
        notes.append(f"measured {b.kind} {measured[b.kind]:,} above the analytic {predicted:,}: target tightened")
        goal = goal * target / measured[b.kind]
    met = measured[b.kind] <= target * (1 + 1e-9)
    if not met:
        notes.append(f"budget {b} not met: the held layers keep {measured[b.kind] / dense[b.kind]:.1%} of dense "
                     f"{b.kind} with every prunable group at most {max_ratio:.0%} pruned{_largest_held(table)}")
    info = OneShotInfo(str(b), mode, criterion, round_to, float(ratio), table.dense_macs, measured["macs"],
                       table.dense_params, measured["params"], met, plan, dict(table.unprunable), notes)
    return pruned, info

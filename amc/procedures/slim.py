"""Network slimming (Liu et al., 2017): train with ``lambda * sum |gamma|`` over the BatchNorm
scales added to the loss, so unimportant channels' scales go to zero, then remove channels by
|gamma| with one global threshold to a MACs budget.

The penalty's subgradient ``lambda * sign(gamma)`` is added by a gradient hook on each BatchNorm
weight, so the ordinary :func:`amc.train.finetune` loop trains with it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator

import torch
from torch import nn

from amc.errors import BudgetError, PolicyError
from amc.pruners.channel import (
    ChannelPlan,
    ChannelTable,
    channel_scores,
    channel_table,
    plan_cost,
    plan_from_counts,
    round_channels,
)
from amc.train import FinetuneConfig, finetune

Batches = Iterable[tuple[torch.Tensor, torch.Tensor]]
_BN = nn.modules.batchnorm._BatchNorm


@contextlib.contextmanager
def bn_l1_penalty(model: nn.Module, penalty: float) -> Iterator[list[nn.Parameter]]:
    """While active, every backward adds ``penalty * sign(gamma)`` to each BatchNorm scale's grad."""
    if penalty < 0:
        raise PolicyError(f"the slimming penalty must be >= 0, got {penalty}")
    scales = [m.weight for m in model.modules() if isinstance(m, _BN) and m.weight is not None]
    handles = [p.register_hook(lambda g, p=p: g + penalty * torch.sign(p.detach())) for p in scales] if penalty else []
    try:
        yield scales
    finally:
        for h in handles:
            h.remove()


def slim_train(model: nn.Module, loader: Batches, cfg: FinetuneConfig, penalty: float = 1e-4) -> dict[str, float]:
    """Train ``model`` in place with the BN-scale L1 penalty; returns finetune's stats plus the
    mean |gamma| after training."""
    with bn_l1_penalty(model, penalty) as scales:
        stats = finetune(model, loader, cfg)
    if scales:
        stats["mean_abs_gamma"] = float(torch.cat([s.detach().abs().flatten() for s in scales]).mean())
    return stats


def slim_plan(model: nn.Module, macs_fraction: float, round_to: int = 8, table: ChannelTable | None = None,
              example_inputs: torch.Tensor | None = None) -> ChannelPlan:
    """One global threshold on |gamma| (criterion ``bn``, the mean over a coupled group's BNs):
    the lowest threshold whose surviving channels (rounded to ``round_to``, at least one
    multiple per group) keep at most ``macs_fraction`` of the dense MACs."""
    if not 0 < macs_fraction <= 1:
        raise BudgetError(f"the MACs fraction must be in (0, 1], got {macs_fraction}")
    table = table or channel_table(model, example_inputs)
    scores = channel_scores(model, "bn", table)

    def counts_at(t: float) -> dict[str, int]:
        out = {}
        for g in table.groups:
            k = round_channels(float((scores[g.root] > t).sum()), g.channels, round_to)
            if k < g.channels:
                out[g.root] = k
        return out

    budget = macs_fraction * table.dense_macs
    if plan_cost(table, counts_at(-1.0))["macs"] <= budget:
        return plan_from_counts(model, {}, "bn", scores=scores, table=table, round_to=round_to)
    values = torch.cat(list(scores.values())).double()
    lo, hi = -1.0, float(values.max())
    if plan_cost(table, counts_at(hi))["macs"] > budget:
        raise BudgetError(f"{macs_fraction:.1%} of the dense MACs cannot be reached by channel pruning "
                          f"(round to {round_to})")
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        if plan_cost(table, counts_at(mid))["macs"] <= budget:
            hi = mid
        else:
            lo = mid
    return plan_from_counts(model, counts_at(hi), "bn", scores=scores, table=table, round_to=round_to)

"""What differs by pruning granularity, behind one interface that the evaluator picks once.

Lifecycle: ``STRATEGIES[config.granularity](dense, work, layers, budget, ...)`` once in
``amc.evaluator.Evaluator.__init__`` (it caches what every episode needs: the rank of each weight, or the
coupled channel groups and their importance scores, and the cost model the projection uses) -> per episode
``apply(model, policy, training)`` on the working copy (masks: zeroed weights, or zeroed coupled
channels whose outputs equal the physically pruned model's), ``reapply`` after a recovery finetune,
``measure(model)`` (the costs read back from the masked model), ``latency(policy)`` -> ``build(dense,
policy)`` for the few policies that are kept, ``sensitivity_policy(curves, ...)`` for the baseline.

The evaluator keeps what is the same for every granularity (the working copy, recovery, scoring, the
reward); nothing here scores a model. One module beside the evaluator rather than in ``amc.pruners``:
a strategy joins a pruner with the budget's cost model and the sensitivity picker, which sit above the
pruners.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar

import pandas as pd
import torch
from torch import nn

from amc.budget import Bounds, Budget, ChannelCost, CostModel, FineCost, Policy, Projector
from amc.errors import BudgetError, PolicyError
from amc.layers import LayerInfo, layer_weight
from amc.train import Masks, apply_masks


def _channel():
    """``amc.pruners.channel``, imported only when channel pruning is asked for (and kept off instance
    attributes: environments get deep-copied by the env checkers, modules cannot be)."""
    from amc.pruners import channel

    return channel


def rank_weights(model: nn.Module, names: Sequence[str], criterion: str = "magnitude",
                 calib: Sequence[tuple[torch.Tensor, torch.Tensor]] = ()) -> dict[str, torch.Tensor]:
    """Layer -> the rank of each of its weights in increasing score (``amc.importance.weights``:
    ``|w|`` for magnitude; obd on the first 4 ``calib`` batches, synflow data-free, one round), stable
    sort (ties by index), shaped like the weight. A ratio ``r`` keeps the weights whose rank >=
    ``round(r * numel)``: magnitude_mask's exact count, one comparison per episode."""
    from amc.importance.weights import fine_criterion, needs_data, weight_scores

    crit = fine_criterion(criterion)
    scores = weight_scores(model, crit, list(names), list(calib[:4]) if needs_data(crit) else None, batches=4)
    ranks: dict[str, torch.Tensor] = {}
    for name in names:
        w = scores[name]
        order = torch.argsort(w.flatten().float(), stable=True)
        rank = torch.empty(order.numel(), dtype=torch.int32, device=order.device)
        rank[order] = torch.arange(order.numel(), dtype=torch.int32, device=order.device)
        ranks[name] = rank.view_as(w)
    return ranks


class Strategy:
    """One granularity's pruner, cost model and readers (see the module doc). ``names`` are the searched
    layers (channel pruning: the root layer of each coupled group), ``cost_model`` maps a policy to its
    cost fraction under the budget's kind."""

    granularity: ClassVar[str]
    names: list[str]
    cost_model: CostModel

    def __init__(self, layers: Sequence[LayerInfo], total_params: int, total_macs: float) -> None:
        self.layers, self.total_params, self.total_macs = list(layers), total_params, total_macs

    def apply(self, model: nn.Module, policy: Mapping[str, float], training: bool) -> Masks | None:
        """Emulate ``policy`` on ``model`` in place; the weight masks to keep applied while training
        (``training``), or None where none are needed."""
        raise NotImplementedError

    def reapply(self, model: nn.Module, policy: Mapping[str, float]) -> None:
        """After a recovery finetune (masks kept during it): restore what the finetune moved."""

    def build(self, dense: nn.Module, policy: Mapping[str, float]) -> tuple[nn.Module, Masks | None]:
        """A fresh copy of ``dense`` with ``policy`` applied, and its masks where it needs them."""
        raise NotImplementedError

    def latency(self, policy: Mapping[str, float]) -> float | None:
        """Predicted latency fraction of ``policy`` (None without a lookup table or a prediction)."""
        return None

    def architecture(self, policy: Mapping[str, float]) -> tuple:
        """What ``policy`` builds, hashable (policies with the same one build the same model): the ratios."""
        return tuple(sorted(policy.items()))

    def fine_masks(self, policy: Mapping[str, float]) -> Masks:
        raise PolicyError(f"weight masks are for fine-grained pruning; this evaluator prunes {self.granularity}s")

    def plan(self, policy: Mapping[str, float]) -> Any:
        raise PolicyError(f"a channel plan is for channel pruning; this evaluator prunes {self.granularity}")

    def _counts(self, model: nn.Module) -> list[torch.Tensor]:
        """The per-layer counts (0-d tensors) that ``_macs`` reads, gathered in one host sync."""
        raise NotImplementedError

    def _macs(self, vals: Sequence[float]) -> float:
        raise NotImplementedError

    @torch.no_grad()
    def measure(self, model: nn.Module) -> dict[str, float]:
        """Costs of the (masked) model as fractions of dense: non-zero params, and MACs from the
        non-zero weights (fine) or from the kept input/output channels (channel). One host sync."""
        counts = [torch.stack([p.count_nonzero() for p in model.parameters()]).sum(), *self._counts(model)]
        vals = torch.stack(counts).tolist()
        out = {"size": vals[0] / self.total_params, "params": vals[0] / self.total_params,
               "macs": self._macs(vals[1:])}
        out["macs_abs"] = out["macs"] * self.total_macs
        return out

    def sensitivity_policy(self, curves: pd.DataFrame, projector: Projector, bounds: Bounds,
                           budget: Budget) -> Policy:
        """One accuracy-drop threshold for all layers (``Projector.from_sensitivity``), projected."""
        return projector.from_sensitivity(curves)


class FineStrategy(Strategy):
    """Per-weight pruning by a weight criterion (magnitude, obd, synflow): cached weight ranks, masks kept
    during finetune, dense-speed weights."""

    granularity = "fine"

    def __init__(self, dense: nn.Module, work: nn.Module, layers: Sequence[LayerInfo], budget: Budget, *,
                 input_shape: tuple[int, ...], total_params: int, total_macs: float,
                 skip: Sequence[str] = (), criterion: str = "magnitude",
                 calib: Sequence[tuple[torch.Tensor, torch.Tensor]] = (), **_: Any) -> None:
        table = [t for t in layers if t.name not in skip]
        super().__init__(layers, total_params, total_macs)
        self.names = [t.name for t in table]
        # scored on the dense model: the working copy's training layout (channels_last) could change the
        # float sums of a data criterion and so tie-breaks; |w| is the same on both
        self._rank = rank_weights(dense, self.names, criterion, calib)
        self._numel = {n: r.numel() for n, r in self._rank.items()}
        if budget.kind == "latency":
            raise BudgetError("a latency budget needs channel pruning (sparse weights run at dense speed)")
        self.cost_model = FineCost.from_table(dense, table, budget.kind, input_shape)
        self._macs_cost = FineCost.from_table(dense, table, "macs", input_shape)

    @torch.no_grad()
    def fine_masks(self, policy: Mapping[str, float]) -> Masks:
        masks = {}
        for n in self.names:
            rank = self._rank[n]
            masks[n] = rank >= round(policy.get(n, 0.0) * rank.numel())  # magnitude_mask's count
        return masks

    @torch.no_grad()
    def apply(self, model: nn.Module, policy: Mapping[str, float], training: bool) -> Masks | None:
        masks = self.fine_masks(policy)
        apply_masks(model, masks)
        return masks

    def build(self, dense: nn.Module, policy: Mapping[str, float]) -> tuple[nn.Module, Masks | None]:
        model = copy.deepcopy(dense)
        masks = self.fine_masks(policy)
        apply_masks(model, masks)
        return model, masks

    def _counts(self, model: nn.Module) -> list[torch.Tensor]:
        return [layer_weight(model, n).count_nonzero() for n in self.names]

    def _macs(self, vals: Sequence[float]) -> float:
        fc = self._macs_cost
        return (fc.fixed + sum(v * w for v, w in zip(vals, fc.per_weight, strict=True))) / fc.total

    def sensitivity_policy(self, curves: pd.DataFrame, projector: Projector, bounds: Bounds,
                           budget: Budget) -> Policy:
        """Under a size budget the lab's picker (``amc.sensitivity.pick_policy``: least summed accuracy
        drop on the curves' convex hulls); when it cannot reach the budget from the scanned ratios, or
        for other budgets, the threshold of ``Strategy.sensitivity_policy``."""
        if budget.kind == "size":
            from amc.sensitivity import pick_policy

            try:
                pol = pick_policy(curves, self._numel, self.total_params, budget.fraction)
            except BudgetError:
                pol = None
            if pol is not None:
                clipped = {n: min(max(pol.get(n, 0.0), bounds[n][0]), bounds[n][1]) for n in self.names}
                return projector.project(clipped)
        return super().sensitivity_policy(curves, projector, bounds, budget)


class ChannelStrategy(Strategy):
    """Coupled channel groups (torch-pruning's DependencyGraph) traced once, importance scores cached; masks
    zero the removed channels of every layer of a group; ``build`` removes them physically."""

    granularity = "channel"

    def __init__(self, dense: nn.Module, work: nn.Module, layers: Sequence[LayerInfo], budget: Budget, *,
                 input_shape: tuple[int, ...], total_params: int, total_macs: float,
                 skip: Sequence[str] = (), criterion: str = "l2", round_to: int = 8,
                 calib: Sequence[tuple[torch.Tensor, torch.Tensor]] = (),
                 latency_table: object | None = None, device: torch.device | None = None,
                 example_inputs: Any = None, **_: Any) -> None:
        channel = _channel()
        super().__init__(layers, total_params, total_macs)
        self.dense, self.criterion, self.round_to = dense, criterion, round_to
        # the task's example inputs (a tensor, a tuple or a dict), else zeros of ``input_shape``
        self.example = example_inputs if example_inputs is not None else torch.zeros(input_shape, device=device)
        # coupled groups traced ONCE; one searched ratio per group, keyed by its root layer
        self.table = channel.channel_table(dense, self.example)
        self.names = [r for r in self.table.roots if r not in skip]
        if not self.names:
            raise PolicyError("the model has no layer whose output channels can be pruned")
        batches = list(calib[:4]) if channel.needs_data(criterion) else None  # 4 batches
        self.scores = channel.channel_scores(dense, criterion, self.table, batches)  # cached
        table = self.table
        self._ms = latency_table.counts_cost(table) if latency_table is not None else None  # type: ignore[attr-defined]
        if budget.kind == "latency":
            ms = self._ms
            if ms is None:
                raise BudgetError("a latency budget needs a latency lookup table (amc.latency.LatencyTable)")
            self.cost_model = ChannelCost("latency", self.names, lambda p: {
                "latency": ms(channel.policy_counts(table, p, round_to))}, {"latency": float(ms({}))})
            return
        totals = {"macs": float(table.dense_macs), "params": float(table.dense_params)}
        self.cost_model = ChannelCost(budget.kind, self.names, lambda p: channel.policy_cost(table, p, round_to),
                                      totals)

    def counts(self, policy: Mapping[str, float]) -> dict[str, int]:
        return _channel().policy_counts(self.table, policy, self.round_to)

    def architecture(self, policy: Mapping[str, float]) -> tuple:
        """The kept channels per group: ratios that round to the same channel counts build the same model."""
        return tuple(sorted(self.counts(policy).items()))

    def plan(self, policy: Mapping[str, float]) -> Any:
        """The ``amc.pruners.channel.ChannelPlan`` (kept channels per group) that ``policy`` gives, with the
        cached importance scores."""
        return _channel().plan_from_counts(self.dense, self.counts(policy), self.criterion, scores=self.scores,
                                           table=self.table, round_to=self.round_to)

    @torch.no_grad()
    def apply(self, model: nn.Module, policy: Mapping[str, float], training: bool) -> Masks | None:
        plan = self.plan(policy)
        _channel().apply_channel_masks(model, plan, self.table)
        if training:  # weight masks only matter while training
            return _channel().channel_masks(model, plan, self.table)
        return None

    @torch.no_grad()
    def reapply(self, model: nn.Module, policy: Mapping[str, float]) -> None:
        _channel().apply_channel_masks(model, self.plan(policy), self.table)  # zero removed BN shifts again

    def build(self, dense: nn.Module, policy: Mapping[str, float]) -> tuple[nn.Module, Masks | None]:
        return _channel().prune_channels(dense, self.plan(policy), self.example), None  # copies ``dense``

    def latency(self, policy: Mapping[str, float]) -> float | None:
        if self._ms is None:
            return None
        return float(self._ms(self.counts(policy)) / self._ms({}))  # predicted from the lookup table

    def _counts(self, model: nn.Module) -> list[torch.Tensor]:
        counts = []
        for t in self.layers:
            nz = layer_weight(model, t.name).detach().ne(0)
            counts.append(nz.flatten(1).any(1).sum())  # output channels with a non-zero weight
            counts.append(nz.any(0).reshape(nz.shape[1], -1).any(1).sum())  # input channels (per group)
        return counts

    def _macs(self, vals: Sequence[float]) -> float:
        macs = float(self.total_macs - sum(t.macs for t in self.layers))
        for i, t in enumerate(self.layers):
            keep_out, keep_in = vals[2 * i], vals[2 * i + 1]
            if t.groups == 1:
                macs += t.macs * keep_out / t.out_channels * keep_in / t.in_channels
            else:  # depthwise: MACs follow the channels alone
                macs += t.macs * keep_out / t.out_channels
        return macs / self.total_macs


STRATEGIES: dict[str, Callable[..., Strategy]] = {"fine": FineStrategy, "channel": ChannelStrategy}

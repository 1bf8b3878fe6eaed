"""Sensitivity scans and the policy pickers that meet a budget from the curves.

``scan_each`` is the one sensitivity loop (each layer alone at each ratio; the evaluator's scan and
the channel scan ``scan_sensitivity`` use it too);
``scan`` prunes one layer at a time (all others dense), scores the model, and restores the layer.
``finegrained_scan`` is that scan with magnitude pruning and held-out accuracy: the seed lab's
sensitivity scan. ``pick_policy`` chooses a sparsity per layer so that the whole model meets a
size target while the sum of the per-layer accuracy drops stays small: greedy on the lower convex
hull of each layer's drop-vs-weights-removed curve (the lab chose these by hand).

Per-layer curves measure each layer alone, and damage does not add up across layers: at 25% of
the lab VGG8's size, one global magnitude threshold ended at 91.50% after 5 finetune epochs, the
curve-picked policies at 91.30% and 90.94% (reports/vgg8_finegrained.md, reports/search.md).
``auto_policy`` therefore checks candidates jointly: the curve-picked policies (accuracy drop with
the loss as tie-breaker, and the loss rise alone), one global magnitude threshold, and LAMP's
layer-adaptive threshold, each applied to the whole model, BatchNorm recalibrated, and scored on
the held-out split; the best score wins (held-out accuracy minus 0.01 x held-out loss).

For channel pruning, ``scan_sensitivity`` scans each coupled group alone at each kept channel count
and ``pick_channel_policy`` picks counts greedily for a MACs target (with an optional cost such as
predicted latency). The two pickers share the monotone damage curves (``monotone``) but not the
search: a weight's cost is additive across layers, so ``pick_policy`` walks convex hulls and stops
part-way along its last step; a group's MACs depend on its neighbours' widths, so
``pick_channel_policy`` re-measures the coupled cost after every step and gives back what is not
needed.
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd
import torch
from torch import nn

from amc.errors import BudgetError
from amc.layers import count_params, layer_weight, prunable_names
from amc.metrics import size_fraction
from amc.pruners.channel import (
    ChannelPlan,
    ChannelTable,
    Counts,
    apply_channel_masks,
    as_table,
    channel_scores,
    channel_table,
    plan_from_counts,
    round_channels,
)
from amc.pruners.finegrained import Policy, apply_policy, global_policy, lamp_policy, prune_layer
from amc.train import evaluate, evaluate_full, recalibrate_bn

DEFAULT_SPARSITIES = (0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
# weight of the held-out loss rise beside the accuracy drop: a loss rise of 0.1 counts as a 0.1-point
# accuracy drop, enough to order layers whose held-out accuracy stays at 100%, too little to overrule it
LOSS_TIE_WEIGHT = 0.01


@torch.no_grad()
def _snapshot(model: nn.Module, name: str) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.get_submodule(name).state_dict().items()}


def scan(
    model: nn.Module,
    names: Sequence[str],
    ratios: Sequence[float],
    apply_fn: Callable[[nn.Module, str, float], object],
    score_fn: Callable[[nn.Module], dict[str, float]],
    on_point: Callable[[str, float, float], None] | None = None,
) -> pd.DataFrame:
    """For each layer alone and each ratio: ``apply_fn(model, name, ratio)``, ``score_fn(model)``
    (a dict of metrics, ``accuracy`` among them), then restore the layer's tensors. Returns columns
    ``layer, ratio`` and the metrics; ratio-0 rows hold the unpruned scores (measured once)."""

    def at(name: str, r: float) -> dict[str, float]:
        saved = _snapshot(model, name)
        apply_fn(model, name, r)
        try:
            return score_fn(model)
        finally:
            model.get_submodule(name).load_state_dict(saved)

    return scan_each(names, ratios, at, score_fn(model), on_point)


def scan_each(
    names: Sequence[str],
    ratios: Sequence[float] | Callable[[str], Sequence[float]],
    score_at: Callable[[str, float], dict[str, float]],
    base: dict[str, float],
    on_point: Callable[[str, float, float], None] | None = None,
) -> pd.DataFrame:
    """The one sensitivity loop: ``score_at(name, ratio)`` with that layer alone at each ratio (the
    others dense), a dict of metrics with ``accuracy`` among them (and ``ratio`` where it scored at
    another ratio than asked, say clipped into the layer's bounds). ``ratios`` may be a function of
    the layer's name (per-layer ratios). Columns ``layer, ratio`` and the metrics; a ratio-0 row per
    layer holds ``base`` (the dense scores, measured once)."""
    rows = []
    for name in names:
        rows.append({"layer": name, "ratio": 0.0, **base})
        for r in (ratios(name) if callable(ratios) else ratios):
            scores = dict(score_at(name, float(r)))
            used = float(scores.pop("ratio", r))
            rows.append({"layer": name, "ratio": used, **scores})
            if on_point is not None:
                on_point(name, used, scores["accuracy"])
    return pd.DataFrame(rows)


def finegrained_scan(
    model: nn.Module,
    loader: Iterable,
    names: Sequence[str] | None = None,
    sparsities: Sequence[float] = DEFAULT_SPARSITIES,
    on_point: Callable[[str, float, float], None] | None = None,
) -> pd.DataFrame:
    """Accuracy and loss on ``loader`` (the held-out split) with each layer alone magnitude-pruned."""
    names = list(names) if names is not None else prunable_names(model)

    def score(m: nn.Module) -> dict[str, float]:
        acc, loss = evaluate_full(m, loader)
        return {"accuracy": acc, "loss": loss}

    return scan(model, names, sparsities, prune_layer, score, on_point)


def monotone(damage: Iterable[float]) -> list[float]:
    """The running maximum of a layer's damage along increasing pruning: more pruning never scores as
    less damaging (noise on small ratios). Both pickers read their curves through it."""
    out, worst = [], 0.0
    for d in damage:
        worst = max(worst, d)
        out.append(worst)
    return out


def _hull_steps(ratios: list[float], drops: list[float], params: int) -> list[tuple[float, float, float]]:
    """Lower convex hull of (weights removed, accuracy drop) from ratio 0, as steps
    ``(to_ratio, weights_removed, drop_added)`` with non-decreasing drop per weight."""
    pts = [(r * params, d, r) for r, d in zip(ratios, drops, strict=True)]
    hull: list[tuple[float, float, float]] = [pts[0]]
    for p in pts[1:]:
        while len(hull) >= 2:
            (x1, y1, _), (x2, y2, _) = hull[-2], hull[-1]
            # drop hull[-1] if it lies above the segment hull[-2] -> p
            if (y2 - y1) * (p[0] - x1) >= (p[1] - y1) * (x2 - x1):
                hull.pop()
            else:
                break
        hull.append(p)
    return [(b[2], b[0] - a[0], b[1] - a[1]) for a, b in itertools.pairwise(hull)]


def pick_policy(
    curves: pd.DataFrame,
    layer_params: dict[str, int],
    total_params: int,
    size_target: float,
    metric: str | None = None,
) -> Policy:
    """Per-layer sparsities from sensitivity ``curves`` (columns layer, ratio and ``loss`` and/or
    ``accuracy``) so that non-zero parameters <= ``size_target`` x ``total_params`` (the lab's size
    measure), spending the least summed damage: the accuracy drop, with the held-out loss rise as a
    tie-breaker (``accuracy+loss``, the default when the curves have a loss: held-out accuracy of a
    model trained on those images sits at 100% for mild pruning), or either alone.
    Layers absent from ``curves`` stay dense. Raises ``BudgetError`` when even the largest scanned
    sparsities cannot meet the target."""
    if not 0 < size_target <= 1:
        raise BudgetError(f"size target must be in (0, 1], got {size_target}")
    budget = size_target * total_params
    metric = metric or ("accuracy+loss" if "loss" in curves.columns else "accuracy")
    if metric not in ("accuracy", "loss", "accuracy+loss"):
        raise ValueError(f"unknown sensitivity metric {metric!r}")
    steps: list[tuple[float, str, float, float]] = []  # (damage per weight, layer, to_ratio, removed)
    for name, g in curves.groupby("layer", sort=False):
        g = g.sort_values("ratio")
        ratios = [float(r) for r in g["ratio"]]
        if ratios[0] != 0.0:
            raise ValueError(f"curve of {name} has no ratio-0 point")
        damage = [0.0] * len(g)
        if "accuracy" in metric:
            acc = g["accuracy"].to_numpy(dtype=float)
            damage = [d + acc[0] - a for d, a in zip(damage, acc, strict=True)]
        if "loss" in metric:
            loss = g["loss"].to_numpy(dtype=float)
            # alone, the loss rise; beside accuracy, a tie-breaker where held-out accuracy is saturated
            w = 1.0 if metric == "loss" else LOSS_TIE_WEIGHT
            damage = [d + w * (x - loss[0]) for d, x in zip(damage, loss, strict=True)]
        p = layer_params[str(name)]
        for to_ratio, removed, drop in _hull_steps(ratios, monotone(damage), p):
            steps.append((drop / max(removed, 1e-9), str(name), to_ratio, removed))
    # Hull steps of one layer have non-decreasing slopes, so a global sort keeps each layer's order.
    steps.sort(key=lambda s: s[0])
    policy: Policy = {}
    remaining = float(total_params)
    for _, name, to_ratio, removed in steps:
        need = remaining - budget
        if need <= 0:
            break
        if removed > need:  # the last step: go only as far along it as the target needs
            start = policy.get(name, 0.0)
            # + n_layers weights of margin: each layer's pruned count is rounded to a whole weight
            margin = curves["layer"].nunique() / layer_params[name]
            to_ratio = min(to_ratio, start + (to_ratio - start) * need / removed + margin)
            removed = need
        policy[name] = to_ratio
        remaining -= removed
    if remaining > budget + 0.5:
        best = remaining / total_params
        raise BudgetError(f"size target {size_target:.4f} cannot be met from the scanned sparsities "
                          f"(at most down to {best:.4f}); scan higher sparsities")
    return {n: policy[n] for n in curves["layer"].unique() if n in policy}


def candidate_policies(model: nn.Module, curves: pd.DataFrame | None, size_target: float,
                       names: Sequence[str] | None = None) -> dict[str, Policy]:
    """The policies ``auto_policy`` chooses among, by name: ``curves`` and ``curves_loss`` (the
    picker on the sensitivity curves, when given and reachable from them), ``global`` and ``lamp``."""
    names = list(names) if names is not None else prunable_names(model)
    out: dict[str, Policy] = {}
    if curves is not None:
        params = {n: layer_weight(model, n).numel() for n in names}
        total = count_params(model)
        metrics = ["accuracy+loss", "loss"] if "loss" in curves.columns else ["accuracy"]
        for metric in metrics:
            try:
                pol = pick_policy(curves[curves["layer"].isin(names)], params, total, size_target, metric)
            except BudgetError:
                continue  # the scanned sparsities cannot reach the target: the thresholds still can
            out["curves" if metric != "loss" else "curves_loss"] = {n: pol.get(n, 0.0) for n in names}
    out["global"] = global_policy(model, size_target, names)
    out["lamp"] = lamp_policy(model, size_target, names)
    return out


def auto_policy(model: nn.Module, curves: pd.DataFrame | None, size_target: float, heldout: Iterable,
                calib: Iterable | None = None, names: Sequence[str] | None = None) -> tuple[Policy, pd.DataFrame]:
    """The best of ``candidate_policies`` checked jointly (see the module doc): each applied to a
    copy of ``model``, BatchNorm recalibrated on ``calib`` (when given) and scored on ``heldout``.
    Returns the winner and one row per candidate (``candidate, accuracy, loss, score, size, chosen``).
    ``model`` is not changed."""
    import copy

    cands = candidate_policies(model, curves, size_target, names)
    rows = []
    dense_bits = count_params(model) * 32
    for name, pol in cands.items():
        work = copy.deepcopy(model)
        apply_policy(work, pol)
        if calib is not None:
            recalibrate_bn(work, calib)
        acc, loss = evaluate_full(work, heldout)
        size = size_fraction(work, dense_bits)
        rows.append({"candidate": name, "accuracy": acc, "loss": loss, "score": acc - LOSS_TIE_WEIGHT * loss,
                     "size": size})
        del work
    table = pd.DataFrame(rows)
    best = int(table["score"].idxmax())  # the first of equal scores: the candidates' order
    table["chosen"] = table.index == best
    return dict(cands[table.loc[best, "candidate"]]), table


# --------------------------------------------------------------------------------------------
# sensitivity scan and a greedy per-layer policy for a MACs target
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SensitivityScan:
    """Held-out accuracy with one group pruned at a time (BN recalibrated), per kept count."""

    base_acc: float
    points: dict[str, list[tuple[int, float]]]  # root -> [(kept channels, accuracy)], kept descending
    criterion: str
    round_to: int

    def to_dict(self) -> dict[str, Any]:
        return {"base_acc": self.base_acc, "criterion": self.criterion, "round_to": self.round_to,
                "points": {k: [list(p) for p in v] for k, v in self.points.items()}}


DEFAULT_SCAN_RATIOS = tuple(round(0.1 * i, 2) for i in range(1, 10))


def scan_sensitivity(model: nn.Module, eval_loader: Iterable[tuple[torch.Tensor, torch.Tensor]],
                     recal_loader: Iterable[tuple[torch.Tensor, torch.Tensor]] | None = None,
                     criterion: str = "l2", round_to: int = 8, ratios: Iterable[float] = DEFAULT_SCAN_RATIOS,
                     grad_loader: Iterable[tuple[torch.Tensor, torch.Tensor]] | None = None,
                     cache: dict[tuple[str, int], float] | None = None,
                     on_point: Callable[[str, int, float], None] | None = None,
                     example_inputs: torch.Tensor | None = None) -> SensitivityScan:
    """Prune each group alone to each ratio (rounded, deduplicated), recalibrate BatchNorm on
    ``recal_loader``, measure accuracy on ``eval_loader`` (the held-out split, never test): the
    ``scan_each`` loop over kept channel counts. ``cache`` ({(root, kept): acc}) lets scans at several
    roundings share points; ``on_point(root, kept, acc)`` is called for each point measured anew."""
    table = channel_table(model, example_inputs)
    scores = channel_scores(model, criterion, table, grad_loader)
    work = copy.deepcopy(model)
    dense_state = {k: v.clone() for k, v in model.state_dict().items()}
    cache = cache if cache is not None else {}

    def acc_of(plan: ChannelPlan) -> float:
        work.load_state_dict(dense_state)
        apply_channel_masks(work, plan, table)
        if recal_loader is not None:
            recalibrate_bn(work, recal_loader)
        return evaluate(work, eval_loader)

    base = cache.get(("", 0))
    if base is None:
        base = cache[("", 0)] = acc_of(ChannelPlan({}))
    channels = {g.root: g.channels for g in table.groups}

    def kept(root: str, r: float) -> int:
        return round(channels[root] * (1 - r))  # exact: the ratios below are 1 - k / channels

    def ratios_of(root: str) -> list[float]:
        c = channels[root]
        ks = sorted({round_channels(c * (1 - r), c, round_to) for r in ratios} - {c}, reverse=True)
        return [1 - k / c for k in ks]

    def score_at(root: str, r: float) -> dict[str, float]:
        key = (root, kept(root, r))
        if key not in cache:
            cache[key] = acc_of(plan_from_counts(model, {root: key[1]}, criterion, scores, table))
            if on_point is not None:
                on_point(root, key[1], cache[key])
        return {"accuracy": cache[key]}

    ratios = list(ratios)
    curves = scan_each([g.root for g in table.groups], ratios_of, score_at, {"accuracy": base})
    points = {str(root): [(kept(str(root), float(r)), float(a)) for r, a in zip(g["ratio"], g["accuracy"], strict=True)]
              for root, g in curves.groupby("layer", sort=False)}
    return SensitivityScan(base, points, criterion, round_to)


def pick_channel_policy(model_or_table: nn.Module | ChannelTable, scan: SensitivityScan, macs_fraction: float,
                        cost: Callable[[Counts], float] | None = None,
                        until: Callable[[Counts], bool] | None = None,
                        example_inputs: torch.Tensor | None = None) -> Policy:
    """Greedy: repeatedly take the step (one group to a smaller scanned count) with the least
    held-out accuracy drop per unit of cost saved, until MACs <= ``macs_fraction`` of dense (and,
    with ``until``, until ``until(counts)`` holds too: say, a predicted-latency goal on top of the
    MACs budget); then give back steps that are not needed. ``cost`` defaults to MACs; pass a
    latency predictor (``amc.latency.LatencyTable.counts_cost``) to prefer what is fast on a
    target. The result is a policy ``{root: ratio}`` that ``policy_counts`` maps back to the same
    counts at the scan's rounding."""
    table = as_table(model_or_table, example_inputs)
    target = macs_fraction * table.dense_macs

    def macs(c: Counts) -> int:
        return table.cost_of_counts(c)["macs"]

    cost_fn = cost or (lambda c: float(macs(c)))

    def meets(c: Counts) -> bool:
        return macs(c) <= target and (until is None or until(c))

    levels: dict[str, list[tuple[int, float]]] = {}
    for root, pts in scan.points.items():
        if root not in table.group_of:
            continue
        # kept descending: the drop made non-decreasing, as pick_policy's damage
        drops = monotone(scan.base_acc - acc for _, acc in pts)
        levels[root] = [(k, d) for (k, _), d in zip(pts, drops, strict=True)]
    state = dict.fromkeys(levels, 0)

    def counts_of(st: Mapping[str, int]) -> Counts:
        return {r: levels[r][i][0] for r, i in st.items() if i > 0}

    counts = counts_of(state)
    while not meets(counts):
        cur = cost_fn(counts)
        cur_macs = macs(counts)
        best: tuple[float, float, str, int] | None = None
        for root, i in state.items():
            for j in range(i + 1, len(levels[root])):
                trial = dict(counts)
                trial[root] = levels[root][j][0]
                saved = cur - cost_fn(trial)
                if saved <= 0:  # a step that is not faster: judge it by MACs alone, last resort
                    saved_macs = cur_macs - macs(trial)
                    if saved_macs <= 0:
                        continue
                    saved = 1e-12 * saved_macs
                slope = (levels[root][j][1] - levels[root][i][1]) / saved
                cand = (slope, -saved, root, j)
                if best is None or cand < best:
                    best = cand
        if best is None:
            extra = " and the further goal" if until is not None else ""
            raise BudgetError(f"the scanned ratios cannot reach {macs_fraction:.1%} of dense MACs{extra}")
        state[best[2]] = best[3]
        counts = counts_of(state)
    # give back: undo single levels while the budget still holds, most accuracy regained first
    while True:
        best_back: tuple[float, str] | None = None
        for root, i in state.items():
            if i == 0:
                continue
            trial = dict(state)
            trial[root] = i - 1
            if meets(counts_of(trial)):
                gain = levels[root][i][1] - levels[root][i - 1][1]
                if best_back is None or gain > best_back[0]:
                    best_back = (gain, root)
        if best_back is None or best_back[0] <= 0:
            break
        state[best_back[1]] -= 1
        counts = counts_of(state)
    return {root: 1.0 - k / table.group(root).channels for root, k in counts.items()}


"""Budgets, per-layer ratio bounds, cost models, and AMC's projection onto the feasible set.

Lifecycle: ``Budget.parse("macs=0.5")`` -> a cost model for the granularity (``FineCost``,
``ChannelCost``, ``LatencyCost``) -> ``Projector(cost, budget, bounds)`` (raises ``BudgetError``
at once when even every layer at its upper bound misses the budget) -> ``projector.clamp(prefix,
name, ratio)`` per layer while an agent walks the layers, or ``projector.project(policy)`` for a
whole proposal.

A cost model maps a policy ``{layer: ratio}`` (missing layers at ratio 0) to the pruned model's
cost as a fraction of the dense model's, with the same integer rounding the pruning code uses, so
that the projection is exact; it is non-increasing in every ratio. The projection is AMC's: walking
the layers in order, each ratio is raised to the least value for which the budget still holds when
every later layer goes to its upper bound. Since the last layer is clamped with nothing left to
go, the projected policy always meets the budget under the cost model, whatever the proposal.
``projector.fill(policy)`` then scales a feasible policy's ratios toward their lower bounds until
the budget is spent (the environment does so at the end of each episode).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import pandas as pd
from torch import nn

from amc.errors import BudgetError, PolicyError
from amc.layers import LayerInfo, count_params
from amc.policy import Policy
from amc.registry import Registry

Bounds = dict[str, tuple[float, float]]  # layer -> (lower, upper) ratio

BUDGET_KINDS: Registry[str] = Registry("budget kind", BudgetError)  # kind -> the Result field that measures it
BUDGET_KINDS.register("size", "size", help="non-zero weights x 32 bits over the dense model's (fine-grained pruning)")
BUDGET_KINDS.register("macs", "macs", help="multiply-accumulates over the dense model's (channel pruning)")
BUDGET_KINDS.register("params", "params", help="parameters over the dense model's (channel pruning)")
BUDGET_KINDS.register("latency", "latency", help="predicted CPU latency over the dense model's (channel pruning, "
                                                 "a latency table)")
DEFAULT_UPPER = 0.9  # never remove more than 90% of a layer unless asked (AMC capped channel ratios at 0.8-0.9)
FINE_UPPER = 0.98  # fine-grained: a layer may keep 2% of its weights (size=0.1 needs ~0.95 on the big layers)


def default_upper(granularity: str) -> float:
    """The highest per-layer ratio searches may take when none is given: 0.9 of a layer's channels,
    0.98 of its weights (at 0.9 a ResNet-20 keeps 10.5% of its size: size=0.1 would be out of reach)."""
    return FINE_UPPER if granularity in ("fine", "nm") else DEFAULT_UPPER
BISECT_STEPS = 24  # 2^-24 of a ratio range: finer than a channel, about one weight in 16M


@dataclass(frozen=True)
class Budget:
    """At most ``fraction`` of the dense model's ``kind`` (size = non-zero bits, MACs, params, latency)."""

    kind: str
    fraction: float

    def __post_init__(self) -> None:
        BUDGET_KINDS.check(self.kind)
        if not (isinstance(self.fraction, int | float) and 0.0 < self.fraction <= 1.0):
            raise BudgetError(f"budget fraction must be in (0, 1], got {self.fraction!r}")

    @classmethod
    def parse(cls, text: str) -> Budget:
        """``"macs=0.5"``, ``"size=25%"`` or ``"params=0.3"``."""
        kind, sep, value = text.partition("=")
        if not sep:
            raise BudgetError(f"budget must look like KIND=FRACTION (e.g. macs=0.5), got {text!r}")
        value = value.strip()
        try:
            frac = float(value[:-1]) / 100 if value.endswith("%") else float(value)
        except ValueError:
            raise BudgetError(f"budget fraction is not a number: {value!r}") from None
        return cls(kind.strip().lower(), frac)

    def __str__(self) -> str:
        return f"{self.kind}={self.fraction:g}"


def make_bounds(names: Sequence[str], lower: float = 0.0, upper: float = DEFAULT_UPPER,
                overrides: Mapping[str, tuple[float, float]] | None = None) -> Bounds:
    """Same ``[lower, upper]`` for every layer, with per-layer ``overrides``; checked."""
    bounds = {n: (float(lower), float(upper)) for n in names}
    for n, lu in (overrides or {}).items():
        if n not in bounds:
            raise PolicyError(f"bounds name a layer that is not prunable: {n}")
        bounds[n] = (float(lu[0]), float(lu[1]))
    for n, (lo, hi) in bounds.items():
        if not 0.0 <= lo <= hi < 1.0:
            raise PolicyError(f"bounds of {n} must satisfy 0 <= lower <= upper < 1, got [{lo}, {hi}]")
    return bounds


def bounds_around(reference: Mapping[str, float], radius: float, lower: float = 0.0,
                  upper: float = DEFAULT_UPPER) -> dict[str, tuple[float, float]]:
    """Per-layer bounds ``[r - radius, r + radius]`` around a reference policy ``{layer: r}``,
    cut to ``[lower, upper]``: a search box that refines a known policy (the global magnitude
    one, a recipe's) instead of searching every layer's whole range. Pass the result as
    ``make_bounds(..., overrides=...)`` (``EvalConfig.bounds``)."""
    if not (math.isfinite(radius) and radius > 0.0):
        raise PolicyError(f"search radius must be > 0, got {radius!r}")
    out = {}
    for name, r in reference.items():
        if not math.isfinite(r):
            raise PolicyError(f"reference ratio of {name} is not finite: {r}")
        centre = min(max(float(r), lower), upper)
        out[name] = (max(lower, centre - radius), min(upper, centre + radius))
    return out


class CostModel(Protocol):
    """Cost of a policy as a fraction of the dense model's; non-increasing in every ratio."""

    kind: str
    names: list[str]

    def fraction(self, policy: Mapping[str, float]) -> float: ...


@dataclass
class FineCost:
    """Fine-grained (per-weight) pruning. ``size`` and ``params`` count non-zero parameters: each
    layer keeps ``numel - round(ratio * numel)`` weights (``magnitude_mask``'s count) and every
    other parameter (biases, BatchNorm, unlisted layers) counts in full. ``macs`` counts the MACs of
    non-zero weights (what a sparse kernel would do), the rest of the layer's MACs kept."""

    kind: str
    names: list[str]
    numel: list[int]
    per_weight: list[float]  # cost of one weight of each layer
    total: float  # dense cost
    fixed: float  # cost that no ratio touches

    @classmethod
    def from_table(cls, model: nn.Module, table: Sequence[LayerInfo], kind: str,
                   input_shape: tuple[int, ...] = (1, 3, 32, 32)) -> FineCost:
        if kind in ("size", "params"):
            total = float(count_params(model))
            per = [1.0] * len(table)
            fixed = total - sum(t.params for t in table)
        elif kind == "macs":
            from amc.layers import count_macs

            total = float(count_macs(model, input_shape)[0])
            per = [t.macs / max(t.params, 1) for t in table]
            fixed = total - sum(t.macs for t in table)
        else:
            raise BudgetError(f"fine-grained pruning has no {kind!r} cost model (use size, params or macs)")
        return cls(kind, [t.name for t in table], [t.params for t in table], per, total, fixed)

    def fraction(self, policy: Mapping[str, float]) -> float:
        kept = self.fixed
        for name, n, w in zip(self.names, self.numel, self.per_weight, strict=True):
            kept += (n - round(policy.get(name, 0.0) * n)) * w
        # a pruned model never costs more than the dense one: without the cap, summing in another order than
        # ``total`` made a policy that prunes nothing cost 1.0000000000000002, out of reach of a budget of 1
        return min(1.0, kept / self.total)


@dataclass
class ChannelCost:
    """Channel pruning: ``counter(policy)`` returns absolute costs of the pruned model (MACs and
    params from ``amc.pruners.channel.policy_cost``, exact and analytic; or predicted latency from a
    lookup table), ``total`` the dense model's."""

    kind: str
    names: list[str]
    counter: object  # callable: policy -> {"macs": int, "params": int}
    total: dict[str, float] = field(default_factory=dict)

    def fraction(self, policy: Mapping[str, float]) -> float:
        key = "params" if self.kind in ("size", "params") else self.kind
        return float(self.counter(policy)[key]) / self.total[key]  # type: ignore[operator]


class Projector:
    """AMC's projection of proposals onto ``{policy: cost.fraction(policy) <= budget.fraction}``."""

    def __init__(self, cost: CostModel, budget: Budget, bounds: Bounds) -> None:
        if cost.kind != budget.kind:
            raise BudgetError(f"cost model measures {cost.kind}, budget is on {budget.kind}")
        missing = [n for n in cost.names if n not in bounds]
        if missing:
            raise PolicyError(f"no bounds for layers: {', '.join(missing[:5])}")
        self.cost, self.budget, self.bounds = cost, budget, bounds
        self.names = list(cost.names)
        self.upper = {n: bounds[n][1] for n in self.names}
        self.lower = {n: bounds[n][0] for n in self.names}
        best = cost.fraction(self.upper)
        if best > budget.fraction:
            raise BudgetError(
                f"budget {budget} cannot be met: with every layer at its upper bound the model keeps "
                f"{best:.4f} of its dense {budget.kind}; raise the upper bounds or the budget")
        self.floor_cost = best  # the least cost the bounds allow
        self.dense_cost = cost.fraction(self.lower)

    def under(self, budget: Budget) -> Projector:
        """The same cost model and bounds under another ``budget`` (``BudgetError`` when the bounds cannot reach
        it): a latency search aimed at a measured budget, each round of a fit to a measurement."""
        return Projector(self.cost, budget, self.bounds)

    def _meets(self, prefix: Mapping[str, float], index: int, ratio: float) -> bool:
        trial = dict(prefix)
        trial[self.names[index]] = ratio
        for n in self.names[index + 1:]:
            trial[n] = self.upper[n]
        return self.cost.fraction(trial) <= self.budget.fraction

    def min_ratio(self, prefix: Mapping[str, float], name: str, start: float | None = None) -> float:
        """Least ratio for ``name`` (given the earlier layers' ratios in ``prefix``) that keeps the
        budget reachable with every later layer at its upper bound; searched above ``start``
        (default: the lower bound), which must not meet it."""
        i = self.names.index(name)
        lo, hi = (self.lower[name] if start is None else start), self.upper[name]
        if self._meets(prefix, i, lo):
            return lo
        if not self._meets(prefix, i, hi):
            raise BudgetError(f"earlier ratios already exceed budget {self.budget} at layer {name}: "
                              "the prefix was not projected")
        return _bisect(lambda r: not self._meets(prefix, i, r), lo, hi)[1]

    def clamp(self, prefix: Mapping[str, float], name: str, ratio: float) -> float:
        """``ratio`` inside the layer's bounds, raised to ``min_ratio`` when it would make the budget
        unreachable (kept as it is when it does not: no search then)."""
        if not math.isfinite(ratio):
            raise PolicyError(f"ratio for {name} is not finite: {ratio}")
        r = min(max(float(ratio), self.lower[name]), self.upper[name])
        return self.min_ratio(prefix, name, start=r)

    def project(self, policy: Mapping[str, float]) -> Policy:
        """Clamp every layer in order; the result meets the budget under the cost model."""
        out: Policy = {}
        for name in self.names:
            out[name] = self.clamp(out, name, policy.get(name, self.lower[name]))
        return out

    def clip(self, policy: Mapping[str, float]) -> Policy:
        """Every searched layer's ratio inside its bounds (a missing layer at its lower bound)."""
        return {n: min(max(float(policy.get(n, self.lower[n])), self.lower[n]), self.upper[n]) for n in self.names}

    def fill(self, policy: Mapping[str, float]) -> Policy:
        """``policy`` with every ratio moved toward its lower bound by one shared factor, as far as
        the budget allows: ``lower + lam * (ratio - lower)`` with the least ``lam`` in [0, 1] that
        still meets it. A feasible policy that prunes more than the budget asks (an agent that
        overshot early, or a projection that raised a late layer) then spends the whole budget,
        keeping its per-layer shape; an infeasible one is returned projected."""
        full = self.clip(policy)
        if not self.feasible(full):
            return self.project(full)

        def pol(lam: float) -> Policy:
            return {n: self.lower[n] + lam * (full[n] - self.lower[n]) for n in self.names}

        return pol(self._least_feasible(pol, 0.0, 1.0))

    def top_up(self, policy: Mapping[str, float], rounds: int | None = None) -> Policy:
        """``policy`` loosened one layer at a time, for a cost that moves in steps (channels rounded to
        multiples of 8: a 16-channel group keeps 8 or 16, and ``fill``'s shared factor can find no looser
        policy that fits): while some layer can keep its next step of channels within the budget, the most
        pruned such layer does (its ratio set just under the step). At most ``rounds`` steps (default: four
        per layer); a policy over the budget comes back projected."""
        pol = self.clip(policy)
        if not self.feasible(pol):
            return self.project(pol)
        for _ in range(4 * len(self.names) if rounds is None else rounds):
            now = self.cost.fraction(pol)
            steps = [(pol[n], n, r) for n in self.names if (r := self._step_down(pol, n, now)) is not None]
            fits = [(ratio, n, r) for ratio, n, r in steps if self.feasible({**pol, n: r})]
            if not fits:
                break
            _, name, r = max(fits)
            pol = {**pol, name: r}
        return pol

    def spend(self, policy: Mapping[str, float]) -> Policy:
        """A feasible ``policy`` made to spend the whole budget: ``fill`` (one shared factor, its shape kept),
        then ``top_up`` (a layer at a time, where channels move in steps and no shared factor fits). How a
        search takes its starting policies: a uniform policy of a stepped cost stops a whole step short of the
        budget (ResNet-20 at latency=0.5 on a table aimed at 0.52: 15.8% of the MACs, where the same policy
        loosened to the measured budget keeps 21.9%)."""
        return self.top_up(self.fill(policy))

    def _step_down(self, policy: Policy, name: str, now: float) -> float | None:
        """The largest ratio under ``policy[name]`` at which the cost rises above ``now`` (the next step of
        kept channels), by bisection; None when even the lower bound costs no more."""
        def dearer(r: float) -> bool:
            return self.cost.fraction({**policy, name: r}) > now * (1 + 1e-12)

        lo, hi = self.lower[name], policy[name]
        if hi <= lo or not dearer(lo):
            return None
        return _bisect(dearer, lo, hi)[0]

    def meet(self, policy: Mapping[str, float]) -> Policy:
        """``policy`` clipped and, when over the budget, tightened (``tighten``: its per-layer shape kept) rather
        than projected layer by layer (``project`` raises the last layers to their upper bounds). How a search
        takes a starting policy fitted elsewhere (a baseline fitted to a measured latency budget predicts a
        little over the table's budget: projected, ResNet-20's sensitivity-picked policy at latency=0.5 lost
        its shape and half its reward)."""
        pol = self.clip(policy)
        return pol if self.feasible(pol) else self.tighten(pol)

    def tighten(self, policy: Mapping[str, float]) -> Policy:
        """``policy`` with every ratio moved toward its upper bound by one shared factor, as little as
        meets the budget: ``ratio + lam * (upper - ratio)`` with the least ``lam`` in [0, 1]. The
        opposite of ``fill``: a policy found under a looser budget (a latency table that turned out
        optimistic) pruned a little harder everywhere, keeping its per-layer shape. A feasible
        policy comes back clipped and otherwise unchanged."""
        full = self.clip(policy)

        def pol(lam: float) -> Policy:
            return {n: full[n] + lam * (self.upper[n] - full[n]) for n in self.names}

        return pol(self._least_feasible(pol, 0.0, 1.0))

    def _least_feasible(self, pol: Callable[[float], Policy], lo: float, hi: float) -> float:
        """The least ``x`` in [lo, hi] whose ``pol(x)`` meets the budget, by bisection (costs are
        non-increasing in ``x``); ``hi`` when nothing below it is checked feasible."""
        if self.feasible(pol(lo)):
            return lo
        return _bisect(lambda x: not self.feasible(pol(x)), lo, hi)[1]

    def feasible(self, policy: Mapping[str, float], tol: float = 1e-9) -> bool:
        return self.cost.fraction(policy) <= self.budget.fraction + tol

    def uniform(self) -> Policy:
        """One ratio for every layer (each clipped to its bounds), the least that meets the budget."""
        lo, hi = 0.0, max(self.upper.values())

        def pol(r: float) -> Policy:
            return {n: min(max(r, self.lower[n]), self.upper[n]) for n in self.names}

        return self.project(pol(self._least_feasible(pol, lo, hi)))

    def from_sensitivity(self, curves: pd.DataFrame) -> Policy:
        """AMC's hand-design baseline made automatic: one accuracy-drop threshold ``t`` for all
        layers; each layer gets the largest scanned ratio whose drop is <= ``t`` (drops made
        monotone in the ratio); the least ``t`` that meets the budget wins, then projected.
        ``curves`` has columns layer, ratio, accuracy with a ratio-0 row per layer."""
        table: dict[str, list[tuple[float, float]]] = {}
        for name, g in curves.groupby("layer", sort=False):
            g = g.sort_values("ratio")
            base = float(g["accuracy"].iloc[0])
            worst, pts = 0.0, []
            for r, a in zip(g["ratio"], g["accuracy"], strict=True):
                worst = max(worst, base - float(a))
                pts.append((float(r), worst))
            table[str(name)] = pts

        def pol(t: float) -> Policy:
            out = {}
            for n in self.names:
                ok = [r for r, d in table.get(n, [(0.0, 0.0)]) if d <= t]
                out[n] = min(max(max(ok, default=0.0), self.lower[n]), self.upper[n])
            return out

        drops = sorted({d for pts in table.values() for _, d in pts})
        for t in drops:  # the least threshold whose policy meets the budget
            p = pol(t)
            if self.feasible(p):
                return self.project(p)
        return self.project(pol(drops[-1] if drops else 0.0))


def _bisect(below: Callable[[float], bool], lo: float, hi: float) -> tuple[float, float]:
    """The bracket ``(lo, hi)`` around where ``below`` turns from true (at ``lo``) to false (at ``hi``),
    narrowed by bisection: ``BISECT_STEPS`` halvings, or until it is under 1e-9 wide."""
    for _ in range(BISECT_STEPS):  # invariant: below(lo), not below(hi)
        mid = 0.5 * (lo + hi)
        if below(mid):
            lo = mid
        else:
            hi = mid
        if hi - lo < 1e-9:
            break
    return lo, hi

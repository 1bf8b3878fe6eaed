"""The paired measurement: the only way ``amc`` reports a speedup.

``paired(model, dense, target)`` prepares both models once, then times them in alternating rounds in
this process (dense first in even rounds, the model first in odd ones, ``runs`` forwards a side per
round, after one warm-up call each), so a busy spell of a shared machine hits both alike. The figure
is the median of the rounds' model / dense ratios, with its spread (the interquartile range of the
ratios) and each side's median milliseconds beside it; a measurement whose rounds spread widely (a stall
hit some of them) is extended by more rounds.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass

import numpy as np
from torch import nn

from amc.errors import BudgetError
from amc.latency.runtime import Runtime, current_runtime
from amc.latency.target import Target


@dataclass(frozen=True)
class Paired:
    fraction: float  # the median of the rounds' model / dense ratios
    low: float  # the ratios' first quartile
    high: float  # and third quartile
    model_ms: float  # the median of the model's round medians
    dense_ms: float
    ratios: tuple[float, ...]  # one per round, in order
    target: Target

    @property
    def speedup(self) -> float:
        """How many times faster than the dense model (1 / ``fraction``)."""
        return 1.0 / self.fraction

    @property
    def spread(self) -> float:
        """Half the interquartile range of the rounds' ratios."""
        return (self.high - self.low) / 2.0

    def metrics(self) -> dict[str, object]:
        """What the pipeline's metrics and summary.json hold of it."""
        return {"latency_fraction": self.fraction, "latency_speedup": self.speedup, "latency_ms": self.model_ms,
                "dense_latency_ms": self.dense_ms, "latency_fraction_spread": self.spread,
                "latency_fraction_q25": self.low, "latency_fraction_q75": self.high,
                "latency_rounds": len(self.ratios), "latency_device": self.target.describe()}

    def line(self) -> str:
        """One line: ``1.31x faster (0.763 of dense, +-0.012 over 7 rounds; 5.61 ms vs 7.35 ms)``."""
        return (f"{self.speedup:.2f}x faster ({self.fraction:.3f} of dense, +-{self.spread:.3f} over "
                f"{len(self.ratios)} paired rounds; {self.model_ms:.3g} ms vs {self.dense_ms:.3g} ms, "
                f"{self.target.describe()})")


def paired(model: nn.Module, dense: nn.Module, target: Target | None = None, rounds: int = 7, runs: int = 30,
           runtime: Runtime | None = None, spread_limit: float = 0.05, max_rounds: int | None = None) -> Paired:
    """``model``'s latency over ``dense``'s on ``target`` (default: CPU, eager PyTorch, 1 thread,
    batch 1, 3x32x32), timed in ``rounds`` alternating rounds of ``runs`` forwards a side. While the
    rounds' ratios spread by more than ``spread_limit`` of their median (half their interquartile range:
    a stall of the shared machine hit some rounds), two more rounds are timed, up to ``max_rounds``
    (default three times ``rounds``; ``spread_limit=inf``: never)."""
    if rounds < 1 or runs < 1:
        raise BudgetError(f"a paired measurement needs rounds >= 1 and runs >= 1, got {rounds}, {runs}")
    target = target or Target()
    rt = runtime or current_runtime()
    sides = {"dense": rt.prepare(dense, target), "model": rt.prepare(model, target)}
    for run in sides.values():
        run(max(1, runs // 5), 1)  # warm-up, untimed
    ms: dict[str, list[float]] = {"dense": [], "model": []}

    def time_rounds(n: int) -> None:
        for _ in range(n):
            i = len(ms["dense"])
            for side in (("dense", "model") if i % 2 == 0 else ("model", "dense")):
                ms[side].append(statistics.median(sides[side](0, runs)))
            if not ms["dense"][-1] > 0:
                raise BudgetError(f"the dense model's measured latency is {ms['dense'][-1]} ms; cannot form a fraction")

    time_rounds(rounds)
    limit = 3 * rounds if max_rounds is None else max_rounds
    while len(ms["dense"]) < limit and _spread(_ratios(ms)) > spread_limit:
        time_rounds(min(2, limit - len(ms["dense"])))
    ratios = _ratios(ms)
    q25, q75 = (float(v) for v in np.percentile(ratios, [25, 75]))
    return Paired(float(statistics.median(ratios)), q25, q75, float(statistics.median(ms["model"])),
                  float(statistics.median(ms["dense"])), ratios, target)


def _ratios(ms: dict[str, list[float]]) -> tuple[float, ...]:
    return tuple(m / d for m, d in zip(ms["model"], ms["dense"], strict=True))


def _spread(ratios: tuple[float, ...]) -> float:
    """Half the interquartile range of ``ratios`` over their median."""
    q25, q75 = np.percentile(ratios, [25, 75])
    return float(q75 - q25) / 2.0 / float(statistics.median(ratios))

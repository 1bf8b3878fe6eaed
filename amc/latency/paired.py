"""The paired measurement: the only way ``amc`` reports a speedup.

``paired(model, dense, target)`` prepares both models once, then times them in alternating rounds in
this process (dense first in even rounds, the model first in odd ones, ``runs`` forwards a side per
round, after one warm-up call each), so a busy spell of a shared machine hits both alike. The figure
is the median of the rounds' model / dense ratios, with its spread (the interquartile range of the
ratios) and each side's median milliseconds beside it.
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
           runtime: Runtime | None = None) -> Paired:
    """``model``'s latency over ``dense``'s on ``target`` (default: CPU, eager PyTorch, 1 thread,
    batch 1, 3x32x32), timed in ``rounds`` alternating rounds of ``runs`` forwards a side."""
    if rounds < 1 or runs < 1:
        raise BudgetError(f"a paired measurement needs rounds >= 1 and runs >= 1, got {rounds}, {runs}")
    target = target or Target()
    rt = runtime or current_runtime()
    sides = {"dense": rt.prepare(dense, target), "model": rt.prepare(model, target)}
    for run in sides.values():
        run(max(1, runs // 5), 1)  # warm-up, untimed
    ms: dict[str, list[float]] = {"dense": [], "model": []}
    for i in range(rounds):
        for side in (("dense", "model") if i % 2 == 0 else ("model", "dense")):
            ms[side].append(statistics.median(sides[side](0, runs)))
    if not all(d > 0 for d in ms["dense"]):
        raise BudgetError(f"the dense model's measured latency is {min(ms['dense'])} ms; cannot form a fraction")
    ratios = tuple(m / d for m, d in zip(ms["model"], ms["dense"], strict=True))
    q25, q75 = (float(v) for v in np.percentile(ratios, [25, 75]))
    return Paired(float(statistics.median(ratios)), q25, q75, float(statistics.median(ms["model"])),
                  float(statistics.median(ms["dense"])), ratios, target)

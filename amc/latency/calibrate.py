"""Calibrating a ``LatencyTable``: how its summed per-layer entries become a whole model's latency.

A table entry times one conv+BN+ReLU block (or Linear) alone. In the whole graph the same layer runs
at another speed (warm caches, its neighbours' memory traffic, a depthwise kernel timed alone against
one fed by the layer before it), and the graph does work no entry holds (residual adds, activations
other than ReLU, squeeze-excite gates and their products, pools). One factor on the summed entries
cannot follow that when a policy prunes some kinds of layers more than others, so the calibration
fits one scale per KIND of layer (``layer_kind``)::

    measured = sum_k scale_k * summed_k + elements_scale * elements + overhead_ms

``summed_k``: the table's summed entries of the layers of kind ``k``; ``elements``: the output
activation elements of the depthwise layers (where squeeze-excite products, swish activations and
the expanded blocks' elementwise work happen), expressed in the dense model's summed milliseconds
so that its scale reads like the others. The points are the dense model, its uniformly thinner
copies and a few copies pruned by seeded random per-group ratios (``random_counts``), so that the
kinds are told apart; the fit is non-negative least squares (``scipy.optimize.nnls``) on relative
errors, each kind's scale pulled weakly toward the single scale of ``fit_line`` (``PRIOR``): a kind
the points cannot tell apart, or a model measured alone, keeps the older rule
``scale * summed + overhead_ms``.

Lifecycle (``LatencyTable.calibrate`` does it)::

    feats = [features(keys, ms) for each measured model]     # per-kind summed entries, elements
    fit = fit_kinds([(feats_i, measured_i), ...])             # the dense model first
    fit.predict(features(keys, ms))                           # ms, the overhead included
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

KINDS = ("depthwise", "pointwise", "conv", "linear", "gate")  # see ``layer_kind``
ELEMENTS = "elements"  # the feature of the depthwise layers' output activation elements
DENSE_WEIGHT = 3.0  # the dense model's weight among the points: every predicted fraction is over its prediction
PRIOR = 1e-3  # weight of each scale's pull toward the single scale (1 scale unit ~ a 3% error on one point)
OUTLIER_FLOOR, OUTLIER_FACTOR = 0.05, 4.0  # a copy off by more than both (and 4x the median error) is left out
CALIBRATION_RANDOM = 10  # random-policy copies ``LatencyTable.calibrate(thin=...)`` also measures
CALIBRATION_SEED = 20_261_207  # their seed (never a benchmark's policies)
CALIBRATION_MAX_RATIO = 0.8  # their per-group ratios are uniform in [0, this]

Key = tuple[str, int, int, int, int, int, int, int]  # ``amc.latency.table.LutKey``


def layer_kind(key: Key) -> str:
    """The kind of a table key: ``linear``; ``gate`` (a conv on a 1x1 input: squeeze-excite gates,
    launch-bound); ``depthwise`` (grouped or depthwise); ``pointwise`` (1x1); ``conv`` (k x k dense)."""
    kind, _, _, h, w, k, _, groups = key
    if kind == "linear":
        return "linear"
    if h == 1 and w == 1:
        return "gate"
    if groups > 1:
        return "depthwise"
    return "pointwise" if k == 1 else "conv"


def out_elements(key: Key) -> int:
    """Output activation elements of one conv key (its padding ``kernel // 2``, as the table's block)."""
    _, _, cout, h, w, k, s, _ = key
    oh, ow = (h + 2 * (k // 2) - k) // s + 1, (w + 2 * (k // 2) - k) // s + 1
    return cout * oh * ow


def features(keys: Sequence[Key], ms: Sequence[float]) -> dict[str, float]:
    """Per-kind summed entries (ms) and the depthwise output elements (millions) of one model."""
    out = dict.fromkeys((*KINDS, ELEMENTS), 0.0)
    for key, t in zip(keys, ms, strict=True):
        kind = layer_kind(key)
        out[kind] += t
        if kind == "depthwise":
            out[ELEMENTS] += out_elements(key) / 1e6
    return out


def fit_line(points: Sequence[tuple[float, float]]) -> tuple[float, float]:
    """``(scale, overhead)`` of ``measured = scale * summed + overhead`` over ``(summed, measured)``
    points: one point, scale 1 and the gap (at least 0); more, least squares (``numpy.polyfit``) with
    the overhead at least 0 (through the origin when the free fit's is negative), falling back to the
    one-point rule for the first point when the fit is degenerate (no spread, or a scale not above 0)."""
    s0, m0 = points[0]
    xs, ys = np.array([p[0] for p in points]), np.array([p[1] for p in points])
    if len(points) > 1 and np.ptp(xs) > 0:
        a, b = (float(v) for v in np.polyfit(xs, ys, 1))
        if b < 0:
            a, b = float(xs @ ys / (xs @ xs)), 0.0
        if a > 0:
            return a, b
    return 1.0, max(0.0, m0 - s0)


@dataclass(frozen=True)
class KindFit:
    """A fitted calibration: ``scales`` per feature (``KINDS`` and ``ELEMENTS``, the latter per
    ``elements_unit`` million elements), ``overhead_ms``; ``scale`` is the single factor it amounts to
    on the dense model (its predicted summed-layers part over its summed entries) and ``line`` the
    older rule's ``(scale, overhead)`` on the same points; ``errors`` each point's relative error,
    ``dropped`` the points the fit left out as outliers."""

    scales: dict[str, float]
    overhead_ms: float
    elements_unit: float = 1.0
    scale: float = 1.0
    line: tuple[float, float] = (1.0, 0.0)
    errors: tuple[float, ...] = field(default=())
    dropped: tuple[int, ...] = field(default=())  # the points left out of the fit (their errors still above)

    def layers_ms(self, feats: Mapping[str, float]) -> float:
        """The summed-layers part of a prediction (without ``overhead_ms``)."""
        return sum(s * feats.get(k, 0.0) * (self.elements_unit if k == ELEMENTS else 1.0)
                   for k, s in self.scales.items())

    def predict(self, feats: Mapping[str, float]) -> float:
        return self.layers_ms(feats) + self.overhead_ms

    def describe(self) -> str:
        """One line for a user: each kind's factor on its table entries, the depthwise elements' cost, the
        overhead, the worst error on the copies it was fitted on."""
        kinds = ", ".join(f"{k} x{s:.2f}" for k, s in self.scales.items() if k != ELEMENTS)
        elements = self.scales.get(ELEMENTS, 0.0) * self.elements_unit
        return (f"per kind of layer {kinds}; {elements:.3f} ms per million depthwise output elements; "
                f"{self.overhead_ms:.2f} ms outside the table's layers; within {100 * self.max_abs_error:.1f}% "
                f"on the {len(self.errors) - len(self.dropped)} model(s) it was fitted on")

    @property
    def max_abs_error(self) -> float:
        """The largest relative error over the points the fit kept."""
        return max((abs(e) for i, e in enumerate(self.errors) if i not in self.dropped), default=0.0)

    def state(self) -> dict[str, object]:
        """Every field, JSON-ready (``from_state`` reads it back: a benchmark's cached calibration)."""
        return {"scales": dict(self.scales), "overhead_ms": self.overhead_ms, "elements_unit": self.elements_unit,
                "scale": self.scale, "line": list(self.line), "errors": list(self.errors),
                "dropped": list(self.dropped)}

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> KindFit:
        """The fit ``state()`` (or ``dataclasses.asdict``) wrote; a missing ``dropped`` is none."""
        return cls({str(k): float(v) for k, v in state["scales"].items()}, float(state["overhead_ms"]),
                   float(state.get("elements_unit", 1.0)), float(state.get("scale", 1.0)),
                   tuple(state.get("line", (1.0, 0.0))), tuple(state.get("errors", ())),
                   tuple(state.get("dropped", ())))

    def row(self) -> dict[str, object]:
        """JSON-ready: the scales, the overhead, the effective scale, the old rule's line, the errors."""
        return {"scales": dict(self.scales), "overhead_ms": self.overhead_ms, "scale": self.scale,
                "elements_ms_per_million": self.scales.get(ELEMENTS, 0.0) * self.elements_unit,
                "line": list(self.line), "points": len(self.errors), "dropped": list(self.dropped),
                "max_abs_error": self.max_abs_error}


def fit_kinds(points: Sequence[tuple[Mapping[str, float], float]], prior: float = PRIOR,
              dense_weight: float = DENSE_WEIGHT) -> KindFit:
    """Fit ``measured = sum_k scale_k * feature_k + overhead`` over ``(features, measured ms)`` points,
    the dense model first: non-negative least squares on relative errors, each scale pulled toward the
    single scale of ``fit_line`` (the elements' toward 0) with weight ``prior``, the dense model's
    error weighted ``dense_weight`` times; then once more without the copies whose error is above
    ``OUTLIER_FLOOR`` and ``OUTLIER_FACTOR`` times the median (a stall of the machine while one was
    timed), where at least 3 more points than features remain. A feature 0 on every point drops out;
    one point, or points the features cannot tell apart, give the older rule."""
    from scipy.optimize import nnls

    summed = [sum(f.get(k, 0.0) for k in KINDS) for f, _ in points]
    line = fit_line([(s, m) for s, (_, m) in zip(summed, points, strict=True)])
    s0 = line[0]
    dense = points[0][0]
    unit = summed[0] / dense[ELEMENTS] if dense.get(ELEMENTS, 0.0) > 0 and summed[0] > 0 else 1.0
    names = [k for k in (*KINDS, ELEMENTS) if any(f.get(k, 0.0) > 0 for f, _ in points)]
    if len(points) < 2 or not names:
        scales = {k: s0 for k in names if k != ELEMENTS} | ({ELEMENTS: 0.0} if ELEMENTS in names else {})
        return _finish(points, scales, line[1], unit, line)
    ys = np.array([m for _, m in points], dtype=float)
    x = np.array([[f.get(k, 0.0) * (unit if k == ELEMENTS else 1.0) for k in names] + [1.0] for f, _ in points])
    pull = np.sqrt(prior) * np.eye(len(names), len(names) + 1)
    target = np.sqrt(prior) * np.array([0.0 if k == ELEMENTS else s0 for k in names])

    def solve(w: np.ndarray) -> np.ndarray:
        return nnls(np.vstack([x * (w / ys)[:, None], pull]), np.concatenate([w, target]))[0]

    w = np.ones(len(points))
    w[0] = dense_weight
    coef = solve(w)
    errors = np.abs(x @ coef / ys - 1)
    # a copy measured during a stall of the machine: left out, once, where enough points remain
    out = [i for i in range(1, len(points)) if errors[i] > max(OUTLIER_FLOOR, OUTLIER_FACTOR * np.median(errors))]
    dropped: tuple[int, ...] = ()
    if out and len(points) - len(out) >= len(names) + 3:
        w[out], dropped = 0.0, tuple(out)
        coef = solve(w)
    return _finish(points, dict(zip(names, (float(c) for c in coef[:-1]), strict=True)), float(coef[-1]), unit,
                   line, dropped)


def _finish(points: Sequence[tuple[Mapping[str, float], float]], scales: dict[str, float], overhead: float,
            unit: float, line: tuple[float, float], dropped: tuple[int, ...] = ()) -> KindFit:
    fit = KindFit(scales, overhead, unit, line=line)
    dense_sum = sum(points[0][0].get(k, 0.0) for k in KINDS)
    scale = fit.layers_ms(points[0][0]) / dense_sum if dense_sum > 0 else line[0]
    errors = tuple(fit.predict(f) / m - 1 if m > 0 else 0.0 for f, m in points)
    return KindFit(scales, overhead, unit, scale, line, errors, dropped)


def random_counts(table, n: int, seed: int = CALIBRATION_SEED, max_ratio: float = CALIBRATION_MAX_RATIO,
                  round_to: int = 8) -> list[dict[str, int]]:
    """``n`` seeded random policies of a ChannelTable as kept channels per group root (a ratio per
    group uniform in [0, ``max_ratio``], rounded as ``policy_counts``)."""
    from amc.pruners.channel import policy_counts

    rng = np.random.default_rng(seed)
    return [policy_counts(table, {r: float(rng.uniform(0.0, max_ratio)) for r in table.roots}, round_to)
            for _ in range(n)]

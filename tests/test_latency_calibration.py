"""The latency table's per-kind calibration (``amc.latency.calibrate``), on runtimes with known times.

``KindRuntime`` times a lone block (what the table measures) at its MACs and a whole model at known
factors per kind of layer on the same MACs, plus a fixed overhead and a cost per depthwise output
element: the calibration must recover those factors from the dense model and its pruned copies, and
predict other pruned copies. Nothing here depends on this machine's clock.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from amc.errors import AmcError
from amc.latency import LatencyTable, Target
from amc.latency.calibrate import ELEMENTS, features, fit_kinds, fit_line, layer_kind, random_counts
from amc.latency.table import CALIBRATION_WARN_ERROR
from amc.pruners.channel import channel_table, plan_from_counts, prune_channels

SHAPE = (3, 16, 16)


class Block(nn.Module):
    """An inverted residual: 1x1 expand, 3x3 depthwise, 1x1 project, a residual add."""

    def __init__(self, c: int, hidden: int) -> None:
        super().__init__()
        self.expand = nn.Sequential(nn.Conv2d(c, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU())
        self.dw = nn.Sequential(nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden, bias=False),
                                nn.BatchNorm2d(hidden), nn.ReLU())
        self.project = nn.Sequential(nn.Conv2d(hidden, c, 1, bias=False), nn.BatchNorm2d(c))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.project(self.dw(self.expand(x)))


class Net(nn.Module):
    """Every kind of layer the calibration tells apart but the gate: k x k, 1x1, depthwise, linear."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
        self.body = nn.Sequential(nn.Conv2d(16, 32, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(32),
                                  nn.ReLU(), Block(32, 96), Block(32, 64))
        self.head = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(self.stem(x)).mean((2, 3)))


FACTORS = {"conv": 1.2, "pointwise": 2.0, "depthwise": 0.6, "linear": 3.0}  # in the graph vs alone
OVERHEAD_MS = 0.05
ELEMENT_MS = 0.01  # per thousand depthwise output elements


class KindRuntime:
    """Known times: a lone conv/linear (a table entry) takes its MMACs x 1 ms; a model of several
    takes each layer's lone time times ``factors[kind]`` plus ``element_ms`` per thousand depthwise
    output elements plus ``overhead_ms``."""

    label = "kinds"

    def __init__(self, factors=None, overhead_ms: float = OVERHEAD_MS, element_ms: float = ELEMENT_MS) -> None:
        self.factors = FACTORS if factors is None else factors
        self.overhead_ms, self.element_ms = overhead_ms, element_ms

    def prepare(self, model: nn.Module, target: Target):
        layers: list[tuple[str, float, int]] = []  # kind, lone ms, output elements

        def hook(m, inputs, out):
            x = inputs[0]
            if isinstance(m, nn.Linear):
                layers.append(("linear", m.in_features * m.out_features * 1e-6, 0))
                return
            key = ("conv", m.in_channels, m.out_channels, x.shape[2], x.shape[3], m.kernel_size[0], m.stride[0],
                   m.groups)
            macs = out.numel() * m.in_channels // m.groups * m.kernel_size[0] ** 2
            layers.append((layer_kind(key), macs * 1e-6, out.numel()))

        handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, nn.Conv2d | nn.Linear)]
        with torch.no_grad():
            model.eval()(torch.zeros(target.batch, *target.input_shape))
        for h in handles:
            h.remove()
        if len(layers) == 1:
            ms = layers[0][1]
        else:
            ms = self.overhead_ms + sum(self.factors[k] * t + (self.element_ms * e / 1e3 if k == "depthwise" else 0.0)
                                        for k, t, e in layers)
        return lambda warmup, runs: [ms] * runs


def _lut(runtime) -> LatencyTable:
    return LatencyTable(None, target=Target(input_shape=SHAPE), runtime=runtime, warmup=0, runs=1)


def _measured(runtime, model: nn.Module) -> float:
    return runtime.prepare(model, Target(input_shape=SHAPE))(0, 1)[0]


def test_layer_kinds_and_features():
    assert layer_kind(("linear", 8, 4, 1, 1, 1, 1, 1)) == "linear"
    assert layer_kind(("conv", 8, 8, 16, 16, 3, 1, 8)) == "depthwise"
    assert layer_kind(("conv", 8, 16, 16, 16, 1, 1, 1)) == "pointwise"
    assert layer_kind(("conv", 8, 16, 16, 16, 3, 2, 1)) == "conv"
    assert layer_kind(("conv", 8, 16, 1, 1, 1, 1, 1)) == "gate"  # a squeeze-excite gate's conv
    f = features([("conv", 8, 8, 16, 16, 3, 2, 8), ("linear", 8, 4, 1, 1, 1, 1, 1)], [0.5, 0.25])
    assert f["depthwise"] == 0.5 and f["linear"] == 0.25 and f["conv"] == 0.0
    assert f[ELEMENTS] == pytest.approx(8 * 8 * 8 / 1e6)  # stride 2: 8x8 outputs of 8 channels


def test_fit_kinds_recovers_known_scales():
    truth = {"conv": 1.5, "pointwise": 2.5, "depthwise": 0.5}
    rows = [{"conv": c, "pointwise": p, "depthwise": d}
            for c, p, d in [(4, 3, 2), (3, 3, 1), (2, 1, 2), (4, 1, 1), (1, 2, 2), (3, 2, 0.5)]]
    points = [(f, sum(truth[k] * v for k, v in f.items()) + 0.4) for f in rows]
    fit = fit_kinds(points, prior=0.0)
    assert fit.scales == pytest.approx(truth) and fit.overhead_ms == pytest.approx(0.4)
    assert max(abs(e) for e in fit.errors) < 1e-9
    assert fit.scale == pytest.approx((1.5 * 4 + 2.5 * 3 + 0.5 * 2) / 9)  # the single factor on the dense model
    pulled = fit_kinds(points)  # the default pull toward one scale moves exact data little
    assert pulled.scales == pytest.approx(truth, abs=0.1)


def test_fit_kinds_leaves_out_a_copy_timed_during_a_stall():
    truth = {"conv": 1.5, "pointwise": 2.5}
    rows = [{"conv": c, "pointwise": p} for c, p in [(4, 3), (3, 3), (2, 1), (4, 1), (1, 2), (3, 2), (2, 2), (1, 1)]]
    points = [(f, sum(truth[k] * v for k, v in f.items()) + 0.4) for f in rows]
    points[3] = (points[3][0], points[3][1] * 1.6)  # the machine stalled while this copy ran
    fit = fit_kinds(points, prior=0.0)
    assert fit.dropped == (3,) and fit.row()["dropped"] == [3]
    assert fit.scales == pytest.approx(truth) and fit.overhead_ms == pytest.approx(0.4)
    assert fit.errors[3] == pytest.approx(1 / 1.6 - 1)  # still reported
    assert fit.row()["max_abs_error"] < 1e-9  # over the points kept
    few = fit_kinds(points[:5], prior=0.0)  # too few points to leave one out
    assert few.dropped == ()
    import dataclasses
    import json

    from amc.latency.calibrate import KindFit

    back = KindFit.from_state(json.loads(json.dumps(fit.state())))  # a benchmark's cached calibration
    assert back == fit and back.predict(rows[0]) == fit.predict(rows[0])
    older = {k: v for k, v in dataclasses.asdict(few).items() if k != "dropped"}  # written before ``dropped``
    assert KindFit.from_state(json.loads(json.dumps(older))) == few


def test_fit_kinds_degrades_to_the_older_rule():
    one = [({"conv": 2.0, "linear": 1.0}, 3.6)]
    fit = fit_kinds(one)
    assert fit.scales == {"conv": 1.0, "linear": 1.0} and fit.overhead_ms == pytest.approx(0.6)
    assert (fit.scale, fit.overhead_ms) == pytest.approx(fit_line([(3.0, 3.6)]))
    same = fit_kinds(one * 4)  # no spread at all: nothing tells the kinds apart
    assert same.scales == pytest.approx({"conv": 1.0, "linear": 1.0}, abs=1e-6)
    assert same.overhead_ms == pytest.approx(0.6, abs=1e-6)
    # a kind that only ever moves with another keeps the common scale
    tied = [({"conv": 2.0 * t, "pointwise": 1.0 * t}, 1.2 * 3.0 * t) for t in (1.0, 0.8, 0.5, 0.3)]
    fit = fit_kinds(tied)
    assert fit.scales == pytest.approx({"conv": 1.2, "pointwise": 1.2}, rel=1e-3)
    assert fit.overhead_ms == pytest.approx(0.0, abs=1e-6)
    assert all(v >= 0 for v in fit_kinds([({"conv": 1.0}, 2.0), ({"conv": 2.0}, 1.0)]).scales.values())


def test_random_counts_are_seeded_and_feasible():
    table = channel_table(Net(), torch.zeros(1, *SHAPE))
    a, b = random_counts(table, 5, seed=3), random_counts(table, 5, seed=3)
    assert a == b and a != random_counts(table, 5, seed=4)
    for counts in a:
        for root, k in counts.items():
            assert 1 <= k < table.group(root).channels


def test_calibrate_recovers_the_kinds_and_predicts_other_policies():
    torch.manual_seed(0)
    dense = Net().eval()
    runtime = KindRuntime()
    lut = _lut(runtime)
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        lut.calibrate(dense, thin=(0.5, 0.8), random=10)
    assert not [w for w in said if "latency calibration" in str(w.message)]  # a fit that holds: no warning
    assert lut.fit is not None
    for kind in ("conv", "pointwise"):  # the depthwise time and its elements move together here (3x3
        # kernels only), and the classifier is too small to tell: those are checked by their predictions
        assert lut.fit.scales[kind] == pytest.approx(FACTORS[kind], rel=0.03), kind
    assert lut.overhead_ms == pytest.approx(OVERHEAD_MS, rel=0.1)
    x = torch.zeros(1, *SHAPE)
    table = channel_table(dense, x)
    cost = lut.counts_cost(table)
    assert cost({}) == pytest.approx(_measured(runtime, dense), rel=1e-3)
    assert lut.predict(dense) == pytest.approx(cost({}))
    old = _lut(runtime)  # the older rule, one factor on the same points
    old.scale, old.overhead_ms = lut.fit.line
    old_cost, worst = old.counts_cost(table), 0.0
    for counts in random_counts(table, 6, seed=99, max_ratio=0.7):  # not the calibration's policies
        small = prune_channels(dense, plan_from_counts(dense, counts, "l2", table=table, round_to=8), x)
        assert cost(counts) == pytest.approx(_measured(runtime, small), rel=0.01)
        worst = max(worst, abs(old_cost(counts) / _measured(runtime, small) - 1))
    assert worst > 0.03  # which misses some of them by more
    line = lut.fit.describe()  # what the pipeline tells the user
    assert f"conv x{lut.fit.scales['conv']:.2f}" in line and "depthwise" in line
    assert "on the 13 model(s) it was fitted on" in line


class SquaredRuntime(KindRuntime):
    """A model of several layers takes the square of what ``KindRuntime`` says (in ms): no per-kind scale and
    overhead describe it, as when a load changed between the table's entries and the calibration."""

    def prepare(self, model: nn.Module, target: Target):
        run = super().prepare(model, target)
        several = sum(isinstance(m, nn.Conv2d | nn.Linear) for m in model.modules()) > 1
        return (lambda warmup, runs: [t * t * 4.0 for t in run(warmup, runs)]) if several else run


def test_calibrate_warns_when_its_fit_misses_its_own_copies():
    torch.manual_seed(0)
    lut = _lut(SquaredRuntime())
    with pytest.warns(UserWarning, match=r"latency calibration: the fit misses the 13 models it was fitted on by up "
                                         r"to \d+%") as said:
        lut.calibrate(Net().eval(), thin=(0.5, 0.8), random=10)
    assert lut.fit is not None and lut.fit.max_abs_error > CALIBRATION_WARN_ERROR
    assert f"{lut.fit.max_abs_error:.0%}" in str(said[0].message)


def test_setting_scale_is_the_older_rule_again():
    """A cached calibration sets ``scale`` and ``overhead_ms`` directly: predictions are then
    ``scale * summed + overhead_ms``, whatever was fitted before."""
    dense = Net().eval()
    lut = _lut(KindRuntime())
    lut.calibrate(dense, thin=(0.5,), random=4)
    assert lut.fit is not None
    table = channel_table(dense, torch.zeros(1, *SHAPE))
    summed = lut.predict(dense, overhead=False)
    assert lut.counts_cost(table)({}) == pytest.approx(lut.scale * summed + lut.overhead_ms, rel=1e-9)
    lut.scale, lut.overhead_ms = 1.3, 0.2
    assert lut.fit is None
    assert lut.counts_cost(table)({}) == pytest.approx(1.3 * summed + 0.2)
    assert lut.predict(dense) == pytest.approx(1.3 * summed + 0.2)
    fresh = _lut(KindRuntime())
    assert fresh.fit is None and fresh.scale == 1.0 and fresh.predict(dense) == pytest.approx(summed)


def test_calibrate_without_copies_keeps_the_fixed_overhead(monkeypatch):
    import amc.latency.table

    dense = Net().eval()
    runtime = KindRuntime()
    lut = _lut(runtime)
    summed = lut.predict(dense, overhead=False)
    assert lut.calibrate(dense) == pytest.approx(_measured(runtime, dense))
    assert lut.fit is None and lut.scale == 1.0
    assert lut.overhead_ms == pytest.approx(_measured(runtime, dense) - summed)

    def fail(*a, **k):
        raise AmcError("cannot prune this one")

    monkeypatch.setattr(amc.latency.table, "_pruned", fail)
    with pytest.warns(UserWarning, match="dense model only"):
        lut.calibrate(dense, thin=(0.5, 0.8))
    assert lut.scale == pytest.approx(1.0) and lut.overhead_ms == pytest.approx(_measured(runtime, dense) - summed)


def test_onnxruntime_entries_leave_out_the_cost_of_a_run():
    """A block timed alone in its own ONNX Runtime session pays the session's per-run cost, which the
    layers of a whole model share: the table's entries on that runtime leave it out (never below a tenth)."""
    from amc.latency import FakeRuntime
    from amc.latency.table import CALL_KEY

    fake = FakeRuntime(ms_per_mmac=1.0, overhead_ms=0.05)  # every run: 0.05 ms plus 1 ms per MMAC
    key = ("conv", 16, 32, 8, 8, 3, 1, 1)
    macs = 16 * 32 * 8 * 8 * 9
    ort = LatencyTable(None, target=Target(runtime="onnxruntime", input_shape=SHAPE), runtime=fake)
    assert ort.lookup(key) == pytest.approx(macs / 1e6)
    assert ort.entries[CALL_KEY] == pytest.approx(0.05) and ort.entries[key] == pytest.approx(0.05 + macs / 1e6)
    tiny = ("conv", 1, 1, 1, 1, 1, 1, 1)  # faster than a run's own cost: a tenth of its entry
    assert ort.lookup(tiny) == pytest.approx(0.1 * ort.entries[tiny])
    eager = LatencyTable(None, target=Target(input_shape=SHAPE), runtime=fake)
    assert eager.lookup(key) == pytest.approx(0.05 + macs / 1e6) and CALL_KEY not in eager.entries

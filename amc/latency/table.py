"""The per-layer latency lookup table: a cheap latency estimate of any channel-pruned model.

A ``LatencyTable`` holds the time of one conv+BN+ReLU block (or Linear) per (kind, in channels,
out channels, input size, kernel, stride, groups), measured on its ``Target`` through its
``Runtime`` (``amc.latency.runtime``) the first time it is needed and cached as CSV (atomic
writes). ``predict`` sums it over a model's layers (or over a dense model with a ChannelPlan);
``validate`` compares predictions with end-to-end measurement.
"""

from __future__ import annotations

import csv
import math
import os
import statistics
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
import torch
from torch import nn

from amc.errors import AmcError
from amc.latency.runtime import Runtime, _check, current_runtime, describe_target, measure
from amc.latency.target import Target

CALIBRATION_RATIOS = (0.5, 0.8)  # the thinner copies ``LatencyTable.calibrate(thin=...)`` also measures


# --------------------------------------------------------------------------------------------
# per-layer lookup table
# --------------------------------------------------------------------------------------------
LutKey = tuple[str, int, int, int, int, int, int, int]  # kind, in_c, out_c, in_h, in_w, kernel, stride, groups
COLUMNS = ("target", "backend", "batch", "threads", "kind", "in_c", "out_c", "in_h", "in_w", "kernel", "stride",
           "groups", "ms")


def _block(key: LutKey) -> nn.Module:
    kind, cin, cout, _, _, k, s, g = key
    if kind == "linear":
        return nn.Linear(cin, cout)
    return nn.Sequential(nn.Conv2d(cin, cout, k, stride=s, padding=k // 2, groups=g, bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


def _conv_groups(li, cin: int, cout: int) -> tuple[int, int]:
    """``(in channels, groups)`` of a conv layer ``li`` with ``cout`` output channels kept.

    A depthwise conv (groups = its dense input channels) keeps one input channel and one group per
    ``multiplier`` output channels: its groups follow its channels, whatever the channel table says
    of its input side (the channel group prunes its filters, dim 0, and its input with them). Any
    other grouped conv keeps its groups where the channels still divide, else the largest common
    divisor (what a rebuilt layer of those channels can have)."""
    if li.groups > 1 and li.groups == li.in_channels:
        mult = max(1, li.out_channels // li.in_channels)  # the depthwise channel multiplier
        cin = max(1, cout // mult)
        return cin, cin
    if cin % li.groups == 0 and cout % li.groups == 0:
        return cin, li.groups
    return cin, math.gcd(math.gcd(cin, cout), li.groups)


class LatencyTable:
    """Per-layer latencies on one ``Target``, measured lazily through a ``Runtime``, cached as CSV.

    Lifecycle: ``LatencyTable(path, target=Target(...))`` (or the older ``device, batch, threads``;
    ``runtime`` defaults to ``current_runtime()``; loads the CSV's rows for this
    target) -> optionally ``calibrate(dense_model)`` -> ``predict(model[, plan])`` /
    ``counts_cost(channel_table)`` (measures missing entries) -> ``save()`` (atomic; ``predict``
    saves too when it measured something).

    ``calibrate`` measures the dense model end to end and keeps what its summed layers leave out
    (pools, adds, the head, Python dispatch) in every prediction: as a fixed ``overhead_ms``, or,
    with ``thin`` ratios, fitted as ``scale * summed + overhead_ms`` over the dense model and its
    uniformly thinner copies, since residual adds and reshapes shrink with the channels too. For
    ResNet-20 on one CPU thread the fixed overhead (0.25 of 2.37 ms) made thin policies look slow
    (every layer at 0.9: predicted 0.46-0.53, measured 0.38-0.39); the fit predicted 0.401 and
    measured 0.396. The final model's latency is still measured (``amc.latency_check``).
    """

    def __init__(self, path: str | os.PathLike | None = None, device: str | torch.device = "cpu",
                 batch: int = 1, threads: int = 1, warmup: int = 5, runs: int = 20,
                 cuda_graph: bool = True, *, target: Target | None = None, runtime: Runtime | None = None) -> None:
        self.path = Path(path) if path is not None else None
        _check(warmup, runs)
        if target is None:
            dev = torch.device(device)
            # one block alone is launch-bound on a GPU: time the device (graph replay) unless told not to
            target = Target.of(dev, "torch", threads=threads, batch=batch, cuda_graph=cuda_graph and dev.type == "cuda")
        self.target = target  # where every entry is measured; its input shape is each block's own
        self.runtime = runtime or current_runtime()
        self.warmup, self.runs = warmup, runs
        label = f" {self.runtime.label}" if self.runtime.label else ""
        # the CSV's ``target`` column: this machine (and a fake runtime's name), never mixed with another
        self.name = (describe_target(self.device, self.threads) + (" graph" if self.cuda_graph else "")
                     + (f" {target.layout}" if target.layout != "contiguous" else "") + label)
        self.entries: dict[LutKey, float] = {}
        self.overhead_ms = 0.0  # what the summed layers leave out (``calibrate``); in every prediction
        self.scale = 1.0  # and the factor on the summed layers (``calibrate`` with thinner copies)
        self._dirty = False
        self._foreign: list[dict[str, str]] = []  # rows of other targets, kept on save
        if self.path is not None and self.path.exists():
            self._load()

    @property
    def device(self) -> torch.device:
        return self.target.torch_device

    @property
    def batch(self) -> int:
        return self.target.batch

    @property
    def threads(self) -> int:
        return self.target.threads

    @property
    def cuda_graph(self) -> bool:
        return self.target.cuda_graph

    def _load(self) -> None:
        assert self.path is not None
        with open(self.path, newline="") as f:
            for n, row in enumerate(csv.DictReader(f), start=2):
                try:
                    key = (row["kind"], *(int(row[c]) for c in COLUMNS[5:12]))
                    ms, batch, threads = float(row["ms"]), int(row["batch"]), int(row["threads"])
                    mine = (row["target"] == self.name and row["backend"] == self.target.runtime
                            and batch == self.batch and threads == self.threads)
                except (KeyError, TypeError, ValueError) as e:
                    raise AmcError(f"latency table {self.path} has a malformed row (line {n}): {e}") from None
                if mine:
                    self.entries[key] = ms  # type: ignore[index]
                else:
                    self._foreign.append(row)

    def save(self) -> None:
        if self.path is None:
            return
        from amc.io import atomic_open

        with atomic_open(self.path, "w") as f:
            w = csv.writer(f)
            w.writerow(COLUMNS)
            for row in self._foreign:
                w.writerow([row[c] for c in COLUMNS])
            for key, ms in sorted(self.entries.items()):
                w.writerow([self.name, self.target.runtime, self.batch, self.threads, *key, f"{ms:.6f}"])
        self._dirty = False

    def _measure_key(self, key: LutKey) -> float:
        """One block of ``key`` timed on this table's target (its input shape the block's own)."""
        kind, cin, _, h, w, *_ = key
        shape = (cin,) if kind == "linear" else (cin, h, w)
        run = self.runtime.prepare(_block(key), self.target.with_input(shape))
        return statistics.median(run(self.warmup, self.runs))

    def lookup(self, key: LutKey) -> float:
        ms = self.entries.get(key)
        if ms is None:
            ms = self.entries[key] = self._measure_key(key)
            self._dirty = True
        return ms

    @staticmethod
    def layer_keys(table, counts: Mapping[str, int] | None = None) -> list[LutKey]:
        """One key per conv/linear layer of a ChannelTable's model with ``counts`` kept per group."""
        chans = table.layer_channels(counts or {})
        keys: list[LutKey] = []
        for li in table.layers:
            cin, cout = chans.get(li.name, (li.in_channels, li.out_channels))
            if li.kind == "linear":
                keys.append(("linear", cin, cout, 1, 1, 1, 1, 1))
            else:
                cin, groups = _conv_groups(li, cin, cout)
                keys.append((li.kind, cin, cout, li.in_hw[0], li.in_hw[1], li.kernel, li.stride, groups))
        return keys

    def predict(self, model: nn.Module, plan=None, overhead: bool = True,
                input_shape: tuple[int, ...] | None = None) -> float:
        """Summed per-layer latency (ms) of ``model`` on ``input_shape`` inputs (default: the target's), or
        of ``model`` pruned by ``plan``, times the calibrated ``scale`` plus ``overhead_ms`` (the bare sum
        with ``overhead=False``)."""
        from amc.pruners.channel import channel_table

        shape = tuple(input_shape) if input_shape is not None else self.target.input_shape
        table = channel_table(model, torch.zeros(1, *shape, device=next(model.parameters()).device))
        ms = sum(self.lookup(k) for k in self.layer_keys(table, plan.counts() if plan is not None else None))
        if self._dirty:
            self.save()
        return self.scale * ms + self.overhead_ms if overhead else ms

    def counts_cost(self, table) -> Callable[[Mapping[str, int]], float]:
        """``counts -> predicted ms`` (calibrated: scale and overhead) for the evaluator's cost model and
        ``amc.sensitivity.pick_channel_policy(cost=...)``."""
        def cost(counts: Mapping[str, int]) -> float:
            return self.scale * sum(self.lookup(k) for k in self.layer_keys(table, counts)) + self.overhead_ms

        return cost

    def calibrate(self, model: nn.Module, runs: int = 50, input_shape: tuple[int, ...] | None = None,
                  thin: tuple[float, ...] = ()) -> float:
        """Measure ``model`` (the dense one) end to end on this table's target and fit what the summed
        layers do not explain; returns the measured milliseconds.

        Without ``thin``: the whole gap is a fixed ``overhead_ms`` (never below 0). With ``thin``
        (channel ratios, e.g. ``(0.5, 0.8)``): ``model`` uniformly channel-pruned by each ratio is
        measured too, and ``measured = scale * summed + overhead_ms`` fitted by least squares over
        the models (``overhead_ms`` at least 0): what the table leaves out (residual adds, pools, the
        reshapes between blocks) also shrinks with the channels. On ResNet-20 (1 CPU thread, batch 1)
        the dense model measured 2.37 ms against 2.12 summed, and a fixed 0.25 ms overhead predicted
        every layer at a 0.9 ratio at 0.46-0.51 of the dense latency where it measured 0.38-0.39.
        A model that cannot be channel-pruned falls back to the fixed overhead, with a warning."""
        input_shape = tuple(input_shape) if input_shape is not None else self.target.input_shape

        def e2e(m: nn.Module) -> float:
            return measure(m, warmup=max(self.warmup, 10), runs=runs, target=self.target.with_input(input_shape),
                           runtime=self.runtime)

        ms = e2e(model)
        summed = self.predict(model, overhead=False, input_shape=input_shape)
        points = [(summed, ms)]
        if thin:
            try:
                for m in _thin_models(model, thin, input_shape):
                    points.append((self.predict(m, overhead=False, input_shape=input_shape), e2e(m)))
            except (AmcError, RuntimeError) as e:
                warnings.warn(f"latency calibration on the dense model only: its thinner copies failed ({e})",
                              stacklevel=2)
                points = points[:1]
        self.scale, self.overhead_ms = _fit_line(points)
        return ms


def _thin_models(model: nn.Module, ratios: tuple[float, ...], input_shape: tuple[int, ...]) -> list[nn.Module]:
    """``model`` uniformly channel-pruned (L2) by each ratio, for ``LatencyTable.calibrate``."""
    from amc.pruners.channel import channel_table, plan_channels, prune_channels, uniform_policy

    x = torch.zeros(1, *input_shape, device=next(model.parameters()).device)
    table = channel_table(model, x)
    return [prune_channels(model, plan_channels(model, uniform_policy(table, r), example_inputs=x), x).eval()
            for r in ratios]


def _fit_line(points: list[tuple[float, float]]) -> tuple[float, float]:
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


def validate(lut: LatencyTable, models: Mapping[str, nn.Module], dense: str | None = None,
             backend_runs: int = 50) -> list[dict[str, float | str]]:
    """Prediction vs end-to-end measurement on the LUT's target for each named model.

    ``error`` = predicted / measured - 1. With ``dense`` (a key of ``models``), also a
    ``calibrated`` prediction: every sum times the dense model's measured / predicted ratio (what
    the table leaves out, pools, adds, overhead, grows with the activations), and its error.
    """
    rows: list[dict[str, float | str]] = []
    for name, m in models.items():
        pred = lut.predict(m)
        meas = measure(m, warmup=10, runs=backend_runs, target=lut.target, runtime=lut.runtime)
        rows.append({"model": name, "predicted_ms": pred, "measured_ms": meas, "error": pred / meas - 1})
    if dense is not None:
        d = next(r for r in rows if r["model"] == dense)
        scale = float(d["measured_ms"]) / float(d["predicted_ms"])
        for r in rows:
            r["calibrated_ms"] = float(r["predicted_ms"]) * scale
            r["calibrated_error"] = float(r["calibrated_ms"]) / float(r["measured_ms"]) - 1
    lut.save()
    return rows

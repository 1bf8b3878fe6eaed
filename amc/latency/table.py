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

import torch
from torch import nn

from amc.errors import AmcError
from amc.latency.calibrate import CALIBRATION_RANDOM, CALIBRATION_SEED, KindFit, features, fit_kinds, random_counts
from amc.latency.calibrate import fit_line as _fit_line
from amc.latency.runtime import Runtime, _check, current_runtime, describe_target, measure
from amc.latency.target import Target

CALIBRATION_RATIOS = (0.5, 0.8)  # the thinner copies ``LatencyTable.calibrate(thin=...)`` also measures
ENTRY_ROUNDS = 3  # rounds of ``runs`` forwards per table entry, the least median kept
CALIBRATION_ROUNDS = 3  # rounds of each copy against the dense model in ``calibrate``, their ratios' median
# ``calibrate`` warns when its fit misses one of the copies it was fitted on by more than this: on this project's
# shared 2-core CPU, a load that changed between the table's entries and the calibration gave 22-25% and an
# estimate that missed most policies by 20% (reports/latency.md, ONNX Runtime resnet18); quiet runs gave 4-12%
CALIBRATION_WARN_ERROR = 0.2


# --------------------------------------------------------------------------------------------
# per-layer lookup table
# --------------------------------------------------------------------------------------------
# kind, in_c, out_c, in_h, in_w, kernel, stride, groups; a linear layer's in_h: the vectors it is applied to
LutKey = tuple[str, int, int, int, int, int, int, int]
COLUMNS = ("target", "backend", "batch", "threads", "kind", "in_c", "out_c", "in_h", "in_w", "kernel", "stride",
           "groups", "ms")


CALL_KEY: LutKey = ("call", 1, 1, 1, 1, 1, 1, 1)  # a block that computes (almost) nothing: one run's own cost


def _block(key: LutKey) -> nn.Module:
    kind, cin, cout, _, _, k, s, g = key
    if kind == "call":
        return nn.ReLU()
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
    with ``thin`` ratios, fitted over the dense model, its uniformly thinner copies and seeded
    random-policy copies as one scale per kind of layer plus ``overhead_ms`` (``fit``, a
    ``amc.latency.calibrate.KindFit``), since residual adds, other activations and gates shrink with
    the channels too, and differently for depthwise, 1x1 and k x k layers. For ResNet-20 on one CPU
    thread the fixed overhead (0.25 of 2.37 ms) made thin policies look slow (every layer at 0.9:
    predicted 0.46-0.53, measured 0.38-0.39); a single fitted scale predicted 0.401 and measured
    0.396, but missed MobileNet-like models (reports/latency.md). Setting ``scale`` (a cached
    calibration) predicts ``scale * summed + overhead_ms``. The final model's latency is still
    measured (``amc.latency_check``).
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
        self.fit: KindFit | None = None  # the per-kind calibration (``calibrate`` with copies), else ``scale``
        self.scale = 1.0  # and the factor on the summed layers (``calibrate`` with thinner copies)
        self._dirty = False
        self._foreign: list[dict[str, str]] = []  # rows of other targets, kept on save
        if self.path is not None and self.path.exists():
            self._load()

    @property
    def scale(self) -> float:
        """The factor on the summed layers: the older rule's, or the one the per-kind fit amounts to on
        the dense model. Setting it (a cached calibration) drops the per-kind fit: ``scale * summed +
        overhead_ms`` again."""
        return self._scale

    @scale.setter
    def scale(self, value: float) -> None:
        self._scale = float(value)
        self.fit = None

    def _layers_ms(self, keys: list[LutKey]) -> float:
        """The calibrated summed-layers part of a prediction (without ``overhead_ms``)."""
        ms = [self.lookup(k) for k in keys]
        if self.fit is not None:
            return self.fit.layers_ms(features(keys, ms))
        return self.scale * sum(ms)

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
        """One block of ``key`` timed on this table's target (its input shape the block's own): the least
        of ``ENTRY_ROUNDS`` medians of ``runs`` forwards, so that a stall of a shared machine during one
        round is not kept in the table."""
        kind, cin, _, h, w, *_ = key
        shape = (cin, h, w) if kind not in ("linear", "call") else (cin,) if h * w == 1 else (h * w, cin)
        run = self.runtime.prepare(_block(key), self.target.with_input(shape))
        return min(statistics.median(run(self.warmup if i == 0 else 0, self.runs)) for i in range(ENTRY_ROUNDS))

    def _entry(self, key: LutKey) -> float:
        ms = self.entries.get(key)
        if ms is None:
            ms = self.entries[key] = self._measure_key(key)
            self._dirty = True
        return ms

    def lookup(self, key: LutKey) -> float:
        """The entry of ``key`` (measured the first time). On ONNX Runtime, less the cost of a run that
        computes nothing (``CALL_KEY``: binding the input, allocating the output, the session's own
        work), which one block timed alone pays in full and the layers of a whole model share; at least
        a tenth of the entry."""
        ms = self._entry(key)
        if self.target.runtime == "onnxruntime":
            ms = max(ms - self._entry(CALL_KEY), 0.1 * ms)
        return ms

    @staticmethod
    def layer_keys(table, counts: Mapping[str, int] | None = None) -> list[LutKey]:
        """One key per conv/linear layer of a ChannelTable's model with ``counts`` kept per group."""
        chans = table.layer_channels(counts or {})
        keys: list[LutKey] = []
        for li in table.layers:
            cin, cout = chans.get(li.name, (li.in_channels, li.out_channels))
            if li.kind == "linear":  # applied to ``tokens`` vectors (a transformer's or ConvNeXt's MLP)
                tokens = max(1, li.macs // max(1, li.in_channels * li.out_channels))
                keys.append(("linear", cin, cout, tokens, 1, 1, 1, 1))
            else:
                cin, groups = _conv_groups(li, cin, cout)
                keys.append((li.kind, cin, cout, li.in_hw[0], li.in_hw[1], li.kernel, li.stride, groups))
        return keys

    def predict(self, model: nn.Module, plan=None, overhead: bool = True,
                input_shape: tuple[int, ...] | None = None) -> float:
        """Summed per-layer latency (ms) of ``model`` on ``input_shape`` inputs (default: the target's), or
        of ``model`` pruned by ``plan``, calibrated (each kind of layer times its scale in ``fit``, else
        the sum times ``scale``) plus ``overhead_ms`` (the bare sum with ``overhead=False``)."""
        from amc.pruners.channel import channel_table

        shape = tuple(input_shape) if input_shape is not None else self.target.input_shape
        table = channel_table(model, torch.zeros(1, *shape, device=next(model.parameters()).device))
        keys = self.layer_keys(table, plan.counts() if plan is not None else None)
        ms = self._layers_ms(keys) + self.overhead_ms if overhead else sum(self.lookup(k) for k in keys)
        if self._dirty:
            self.save()
        return ms

    def counts_cost(self, table) -> Callable[[Mapping[str, int]], float]:
        """``counts -> predicted ms`` (calibrated: scale and overhead) for the evaluator's cost model and
        ``amc.sensitivity.pick_channel_policy(cost=...)``."""
        def cost(counts: Mapping[str, int]) -> float:
            return self._layers_ms(self.layer_keys(table, counts)) + self.overhead_ms

        return cost

    def calibrate(self, model: nn.Module, runs: int = 50, input_shape: tuple[int, ...] | None = None,
                  thin: tuple[float, ...] = (), random: int = CALIBRATION_RANDOM,
                  seed: int = CALIBRATION_SEED) -> float:
        """Measure ``model`` (the dense one) end to end on this table's target and fit what the summed
        layers do not explain; returns the measured milliseconds.

        Without ``thin``: the whole gap is a fixed ``overhead_ms`` (never below 0), ``scale`` 1. With
        ``thin`` (channel ratios, e.g. ``(0.5, 0.8)``): ``model`` uniformly channel-pruned by each ratio
        and by ``random`` seeded random policies (``amc.latency.calibrate.random_counts``) is measured
        too, each copy in ``CALIBRATION_ROUNDS`` rounds alternating with the dense model (its time the
        median of the rounds' ratios times the dense model's median, so a load that changes meanwhile
        hits both), and one scale per kind of layer plus ``overhead_ms`` is fitted
        (``amc.latency.calibrate.fit_kinds``, kept as ``fit``; ``scale`` is what it amounts to on the
        dense model): what the table leaves out (residual adds,
        other activations, squeeze-excite gates, a depthwise kernel timed alone) differs by kind and
        shrinks with the channels. On ResNet-20 (1 CPU thread, batch 1) the dense model measured
        2.37 ms against 2.12 summed, and a fixed 0.25 ms overhead predicted every layer at a 0.9
        ratio at 0.46-0.51 of the dense latency where it measured 0.38-0.39. A model that cannot be
        channel-pruned falls back to the fixed overhead, with a warning."""
        from amc.pruners.channel import channel_scores, channel_table, policy_counts, uniform_policy

        input_shape = tuple(input_shape) if input_shape is not None else self.target.input_shape

        def e2e(m: nn.Module, n: int = runs) -> float:
            return measure(m, warmup=max(self.warmup, 10), runs=n, target=self.target.with_input(input_shape),
                           runtime=self.runtime)

        ms = e2e(model)
        summed = self.predict(model, overhead=False, input_shape=input_shape)
        if not thin:
            self.scale, self.overhead_ms = _fit_line([(summed, ms)])
            return ms
        x = torch.zeros(1, *input_shape, device=next(model.parameters()).device)
        table = channel_table(model, x)
        dense_keys = self.layer_keys(table)
        points = [(features(dense_keys, [self.lookup(k) for k in dense_keys]), ms)]
        try:
            scores = channel_scores(model, "l2", table)
            counts = [policy_counts(table, uniform_policy(table, r), 8) for r in thin]
            counts += random_counts(table, random, seed)
            dense_ms, each = [ms], max(5, runs // CALIBRATION_ROUNDS)
            for c in counts:
                copy = _pruned(model, table, c, x, scores)
                ratios = []
                for r in range(CALIBRATION_ROUNDS):  # alternating with the dense model, as ``paired``
                    if r % 2:
                        t, d = e2e(copy, each), e2e(model, each)
                    else:
                        d, t = e2e(model, each), e2e(copy, each)
                    ratios.append(t / d)
                    dense_ms.append(d)
                keys = self.layer_keys(table, c)
                points.append((features(keys, [self.lookup(k) for k in keys]), statistics.median(ratios)))
        except (AmcError, RuntimeError) as e:
            warnings.warn(f"latency calibration on the dense model only: its thinner copies failed ({e})",
                          stacklevel=2)
            points, dense_ms = points[:1], [ms]
        ms = statistics.median(dense_ms)
        points = [(f, y * ms if i else ms) for i, (f, y) in enumerate(points)]
        fit = fit_kinds(points)
        self.scale, self.overhead_ms = fit.scale, fit.overhead_ms
        self.fit = fit  # after ``scale``, whose setter drops it
        if len(points) > 1 and fit.max_abs_error > CALIBRATION_WARN_ERROR:
            warnings.warn(f"latency calibration: the fit misses the {len(points)} models it was fitted on by up to "
                          f"{fit.max_abs_error:.0%}: the machine's load changed while they or the table's entries "
                          "were timed, or the table's layers do not describe this model end to end; the estimate "
                          "may mislead a search (a budget is still met by measurement at the end)", stacklevel=2)
        if self._dirty:
            self.save()
        return ms


def _pruned(model: nn.Module, table, counts: Mapping[str, int], x: torch.Tensor, scores) -> nn.Module:
    """``model`` channel-pruned (L2) to ``counts``, for ``LatencyTable.calibrate``."""
    from amc.pruners.channel import plan_from_counts, prune_channels

    return prune_channels(model, plan_from_counts(model, counts, "l2", scores=scores, table=table, round_to=8),
                          x).eval()


def _thin_models(model: nn.Module, ratios: tuple[float, ...], input_shape: tuple[int, ...]) -> list[nn.Module]:
    """``model`` uniformly channel-pruned (L2) by each ratio."""
    from amc.pruners.channel import channel_table, plan_channels, prune_channels, uniform_policy

    x = torch.zeros(1, *input_shape, device=next(model.parameters()).device)
    table = channel_table(model, x)
    return [prune_channels(model, plan_channels(model, uniform_policy(table, r), example_inputs=x), x).eval()
            for r in ratios]


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

"""Measured latency: end to end (``measure``) and per layer (``LatencyTable``, a lookup table).

``measure`` returns the median milliseconds of ``runs`` timed forward passes after ``warmup``:

* ``backend="torch"``, CPU: eager PyTorch, the copy's tensors in the contiguous layout
  (``amc.cpuconv.inference_layout``), under ``inference_mode`` with ``threads`` intra-op
  threads (the caller's thread count is restored afterwards), wall clock per run.
* ``backend="torch"``, CUDA: bf16 autocast, channels_last, cuDNN autotuning on (as a server would
  run it; every model gets the same treatment), CUDA events around each run. Eager mode pays the
  host's kernel-launch time, which a small (pruned) model at batch 256 may not hide;
  ``cuda_graph=True`` captures the forward once and replays it, so the events time the device
  alone (what TensorRT or ``torch.compile(mode="reduce-overhead")`` would see).
* ``backend="onnxruntime"``: the model exported to ONNX (``amc.export.onnx``) and run by an
  ``InferenceSession`` with ``intra_op_num_threads=threads``.

The model passed in is never modified (a copy is moved, converted and timed).

A ``LatencyTable`` holds the time of one conv+BN+ReLU block (or Linear) per (kind, in channels,
out channels, input size, kernel, stride, groups), measured on the target the first time it is
needed and cached as CSV (atomic writes). ``predict`` sums it over a model's layers (or over a
dense model with a ChannelPlan); ``validate`` compares predictions with end-to-end measurement.
"""

from __future__ import annotations

import contextlib
import copy
import csv
import math
import os
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import numpy as np
import torch
from torch import nn

from amc.cpuconv import inference_layout
from amc.errors import AmcError

BACKENDS = ("torch", "onnxruntime")
CALIBRATION_RATIOS = (0.5, 0.8)  # the thinner copies ``LatencyTable.calibrate(thin=...)`` also measures


@contextlib.contextmanager
def _threads(n: int | None) -> Iterator[None]:
    old = torch.get_num_threads()
    if n:
        torch.set_num_threads(int(n))
    try:
        yield
    finally:
        torch.set_num_threads(old)


@contextlib.contextmanager
def _cudnn_benchmark(on: bool) -> Iterator[None]:
    old = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = on
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = old


def _check(device: torch.device, backend: str, warmup: int, runs: int) -> None:
    if backend not in BACKENDS:
        raise AmcError(f"unknown latency backend {backend!r}; known: {', '.join(BACKENDS)}")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise AmcError("CUDA latency asked for, but no CUDA device is available")
    if runs < 1 or warmup < 0:
        raise AmcError(f"need runs >= 1 and warmup >= 0, got runs={runs}, warmup={warmup}")


def _graphed(fn: Callable[[], object], device: torch.device) -> Callable[[], object]:
    """``fn`` captured into a CUDA graph (after warm-up on a side stream): returns the replay."""
    s = torch.cuda.Stream(device)
    s.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(s):
        for _ in range(3):
            fn()
    torch.cuda.current_stream(device).wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        fn()
    return g.replay


def time_callable(fn: Callable[[], object], device: torch.device, warmup: int, runs: int) -> list[float]:
    """Milliseconds of each of ``runs`` calls after ``warmup`` calls (CUDA events on a GPU)."""
    for _ in range(warmup):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(runs)]
        for start, end in events:
            start.record()
            fn()
            end.record()
        torch.cuda.synchronize(device)
        return [s.elapsed_time(e) for s, e in events]
    out = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t0) * 1e3)
    return out


def measure(model: nn.Module, device: str | torch.device = "cpu", batch: int = 1, threads: int = 1,
            backend: str = "torch", warmup: int = 10, runs: int = 50,
            input_shape: tuple[int, ...] = (3, 32, 32), cuda_graph: bool = False) -> float:
    """Median latency in milliseconds of one forward pass of a ``batch`` of ``input_shape`` inputs."""
    dev = torch.device(device)
    _check(dev, backend, warmup, runs)
    if backend == "onnxruntime":
        return _measure_ort(model, dev, batch, threads, warmup, runs, input_shape)
    work = copy.deepcopy(model).eval()
    with _threads(threads if dev.type == "cpu" else None), torch.inference_mode():
        if dev.type == "cuda":
            work = work.to(dev, memory_format=torch.channels_last)  # type: ignore[call-overload]
            x = torch.randn(batch, *input_shape, device=dev).contiguous(memory_format=torch.channels_last)
            # no autocast weight cache: it would be stale inside a captured graph
            with _cudnn_benchmark(True), torch.autocast("cuda", dtype=torch.bfloat16, cache_enabled=not cuda_graph):
                fn = (lambda: work(x)) if not cuda_graph else _graphed(lambda: work(x), dev)
                times = time_callable(fn, dev, warmup, runs)
        else:
            work = inference_layout(work.float().to(dev))
            x = torch.randn(batch, *input_shape, device=dev)
            times = time_callable(lambda: work(x), dev, warmup, runs)
    return statistics.median(times)


def _measure_ort(model: nn.Module, dev: torch.device, batch: int, threads: int, warmup: int, runs: int,
                 input_shape: tuple[int, ...]) -> float:
    from amc.export.onnx import INPUT, export_onnx, ort_session

    with tempfile.TemporaryDirectory(prefix="amc-ort-") as d:
        path = export_onnx(model, Path(d) / "model.onnx", (1, *input_shape))
        sess = ort_session(path, threads=threads, device=dev.type)
        x = torch.randn(batch, *input_shape).numpy()
        times = time_callable(lambda: sess.run(None, {INPUT: x}), torch.device("cpu"), warmup, runs)
    return statistics.median(times)


def describe_target(device: str | torch.device = "cpu", threads: int = 1) -> str:
    """A short name for the machine a latency was measured on."""
    dev = torch.device(device)
    if dev.type == "cuda":
        return torch.cuda.get_device_name(dev).replace(",", " ")
    from amc.system import cpu_name

    return f"{cpu_name()} x{threads}".replace(",", " ")


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
    """Per-layer latencies on one target (device, batch, threads), measured lazily, cached as CSV.

    Lifecycle: ``LatencyTable(path, device, batch, threads)`` (loads the CSV's rows for this
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
                 cuda_graph: bool = True) -> None:
        self.path = Path(path) if path is not None else None
        self.device = torch.device(device)
        _check(self.device, "torch", warmup, runs)
        self.batch, self.threads, self.warmup, self.runs = batch, threads, warmup, runs
        # one block alone is launch-bound on a GPU: time the device (graph replay) unless told not to
        self.cuda_graph = cuda_graph and self.device.type == "cuda"
        self.target = describe_target(self.device, threads) + (" graph" if self.cuda_graph else "")
        self.entries: dict[LutKey, float] = {}
        self.overhead_ms = 0.0  # what the summed layers leave out (``calibrate``); in every prediction
        self.scale = 1.0  # and the factor on the summed layers (``calibrate`` with thinner copies)
        self._dirty = False
        self._foreign: list[dict[str, str]] = []  # rows of other targets, kept on save
        if self.path is not None and self.path.exists():
            self._load()

    def _load(self) -> None:
        assert self.path is not None
        with open(self.path, newline="") as f:
            for n, row in enumerate(csv.DictReader(f), start=2):
                try:
                    key = (row["kind"], *(int(row[c]) for c in COLUMNS[5:12]))
                    ms, batch, threads = float(row["ms"]), int(row["batch"]), int(row["threads"])
                    mine = (row["target"] == self.target and row["backend"] == "torch"
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
                w.writerow([self.target, "torch", self.batch, self.threads, *key, f"{ms:.6f}"])
        self._dirty = False

    def _measure_key(self, key: LutKey) -> float:
        block = _block(key).to(self.device).eval()
        kind, cin, _, h, w, *_ = key
        shape = (self.batch, cin) if kind == "linear" else (self.batch, cin, h, w)
        with _threads(self.threads if self.device.type == "cpu" else None), torch.inference_mode():
            x = torch.randn(*shape, device=self.device)
            if self.device.type == "cuda":
                if kind != "linear":
                    block = block.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
                    x = x.contiguous(memory_format=torch.channels_last)
                with _cudnn_benchmark(True), torch.autocast("cuda", dtype=torch.bfloat16,
                                                            cache_enabled=not self.cuda_graph):
                    fn: Callable[[], object] = lambda: block(x)  # noqa: E731
                    if self.cuda_graph:
                        try:
                            fn = _graphed(fn, self.device)
                        except RuntimeError as e:  # a capture this PyTorch refuses: time it eagerly
                            warnings.warn(f"CUDA graph capture failed ({e}); timing {key} eagerly", stacklevel=2)
                    times = time_callable(fn, self.device, self.warmup, self.runs)
            else:
                times = time_callable(lambda: block(x), self.device, self.warmup, self.runs)
        return statistics.median(times)

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
                input_shape: tuple[int, ...] = (3, 32, 32)) -> float:
        """Summed per-layer latency (ms) of ``model`` on ``input_shape`` inputs, or of ``model`` pruned by
        ``plan``, times the calibrated ``scale`` plus ``overhead_ms`` (the bare sum with ``overhead=False``)."""
        from amc.pruners.channel import channel_table

        table = channel_table(model, torch.zeros(1, *input_shape, device=next(model.parameters()).device))
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

    def calibrate(self, model: nn.Module, runs: int = 50, input_shape: tuple[int, ...] = (3, 32, 32),
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
        def e2e(m: nn.Module) -> float:
            return measure(m, self.device, self.batch, self.threads, "torch", warmup=max(self.warmup, 10), runs=runs,
                           input_shape=input_shape, cuda_graph=self.cuda_graph)

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
        meas = measure(m, lut.device, lut.batch, lut.threads, "torch", warmup=10, runs=backend_runs,
                       cuda_graph=lut.cuda_graph)
        rows.append({"model": name, "predicted_ms": pred, "measured_ms": meas, "error": pred / meas - 1})
    if dense is not None:
        d = next(r for r in rows if r["model"] == dense)
        scale = float(d["measured_ms"]) / float(d["predicted_ms"])
        for r in rows:
            r["calibrated_ms"] = float(r["predicted_ms"]) * scale
            r["calibrated_error"] = float(r["calibrated_ms"]) / float(r["measured_ms"]) - 1
    lut.save()
    return rows

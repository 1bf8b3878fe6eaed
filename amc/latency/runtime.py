"""Every latency taken in ``amc`` goes through one ``Runtime``: the real one or a fake with known times.

A runtime turns a model and a ``Target`` into a timed runner::

    runner = runtime.prepare(model, target)   # a copy of the model, converted and made ready to run
    times = runner(warmup, runs)              # milliseconds of each of ``runs`` forwards after ``warmup``

``measure(model, target=...)`` is the median of one runner call; ``amc.latency.paired`` alternates
two runners in rounds; ``amc.latency.LatencyTable`` times one block per entry. The runtime used
where none is passed is ``current_runtime()``: ``MeasuredRuntime()`` unless a ``use_runtime(...)``
block says otherwise, so a test runs the whole pipeline on ``FakeRuntime`` (time = a fixed overhead
plus a cost per MAC) and its verdicts never follow this machine's timing.

``MeasuredRuntime`` on each target:

* ``torch`` on the CPU: eager PyTorch, float32, the copy's tensors in the target's layout
  (``amc.cpuconv.inference_layout`` for ``contiguous``), ``inference_mode``, ``threads`` intra-op
  threads (the caller's count restored after each call), wall clock per run.
* ``cuda``: bf16 autocast, channels_last, cuDNN autotuning on, CUDA events around each run;
  ``cuda_graph`` captures the forward once and replays it, so the events time the device alone.
* ``onnxruntime``: the model exported to ONNX (``amc.export.onnx``) and run by an
  ``InferenceSession`` with ``intra_op_num_threads=threads``.

The model passed in is never modified (a copy is converted and timed).
"""

from __future__ import annotations

import contextlib
import contextvars
import copy
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Protocol

import torch
from torch import nn

from amc.cpuconv import inference_layout
from amc.errors import AmcError
from amc.latency.target import Target

BACKENDS = ("torch", "onnxruntime")  # the older ``backend=`` argument of ``measure``
Runner = Callable[[int, int], list[float]]  # (warmup, runs) -> milliseconds per run


class Runtime(Protocol):
    """Makes timed runners; ``label`` names it in cached tables ("" for the real one)."""

    label: str

    def prepare(self, model: nn.Module, target: Target) -> Runner: ...


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


def time_callable(fn: Callable[[], object], device: torch.device, warmup: int, runs: int,
                  clock: Callable[[], float] = time.perf_counter) -> list[float]:
    """Milliseconds of each of ``runs`` calls after ``warmup`` calls (CUDA events on a GPU; ``clock``,
    in seconds, elsewhere)."""
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
        t0 = clock()
        fn()
        out.append((clock() - t0) * 1e3)
    return out


def _inputs(model: nn.Module, target: Target) -> tuple[nn.Module, torch.Tensor]:
    """A float32 eval copy of ``model`` and a random input, both on the target's device and layout."""
    dev = target.torch_device
    work = copy.deepcopy(model).eval().float().to(dev)
    x = torch.randn(target.batch, *target.input_shape, device=dev)
    if target.runtime == "cuda" or (target.layout == "channels_last" and x.dim() == 4):
        work = work.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        x = x.contiguous(memory_format=torch.channels_last)
    else:
        work = inference_layout(work)
    return work, x


class MeasuredRuntime:
    """The real clock on the real machine (see the module doc); ``clock`` (seconds) is injectable."""

    label = ""

    def __init__(self, clock: Callable[[], float] = time.perf_counter) -> None:
        self.clock = clock

    def prepare(self, model: nn.Module, target: Target) -> Runner:
        if target.runtime == "onnxruntime":
            return self._ort(model, target)
        if target.runtime == "cuda" and not torch.cuda.is_available():
            raise AmcError("CUDA latency asked for, but no CUDA device is available")
        work, x = _inputs(model, target)
        dev = target.torch_device

        def forward() -> object:
            return work(x)

        if target.runtime != "cuda":
            def cpu(warmup: int, runs: int) -> list[float]:
                with _threads(target.threads), torch.inference_mode():
                    return time_callable(forward, dev, warmup, runs, self.clock)
            return cpu

        def gpu(warmup: int, runs: int) -> list[float]:
            # no autocast weight cache: it would be stale inside a captured graph
            with torch.inference_mode(), _cudnn_benchmark(True), \
                    torch.autocast("cuda", dtype=torch.bfloat16, cache_enabled=not target.cuda_graph):
                fn: Callable[[], object] = forward
                if target.cuda_graph:
                    try:
                        fn = _graphed(forward, dev)
                    except RuntimeError as e:  # a capture this PyTorch refuses: time it eagerly
                        warnings.warn(f"CUDA graph capture failed ({e}); timing eagerly", stacklevel=2)
                return time_callable(fn, dev, warmup, runs)
        return gpu

    def _ort(self, model: nn.Module, target: Target) -> Runner:
        from amc.export.onnx import INPUT, export_onnx, ort_session

        with tempfile.TemporaryDirectory(prefix="amc-ort-") as d:
            path = export_onnx(model, Path(d) / "model.onnx", (1, *target.input_shape))
            sess = ort_session(path, threads=target.threads, device="cpu")
        x = torch.randn(target.batch, *target.input_shape).numpy()
        return lambda warmup, runs: time_callable(lambda: sess.run(None, {INPUT: x}), torch.device("cpu"),
                                                  warmup, runs, self.clock)


class FakeRuntime:
    """Known times: a model's forward takes ``overhead_ms + ms_per_mmac * MMACs`` (its MACs at the
    target's batch and input), times ``load(call)`` where given (a deterministic machine load, by
    the number of runner calls so far: a busy spell that hits whatever is timed then).

    ``calls`` counts runner calls; ``timed`` lists the MACs of each model timed, in order. Nothing is
    run but one MAC count per ``prepare``."""

    def __init__(self, ms_per_mmac: float = 0.01, overhead_ms: float = 0.2,
                 load: Callable[[int], float] | None = None) -> None:
        self.ms_per_mmac, self.overhead_ms, self.load = ms_per_mmac, overhead_ms, load
        self.label = f"fake {ms_per_mmac:g} ms/MMAC + {overhead_ms:g} ms"
        self.calls = 0
        self.timed: list[int] = []

    def ms(self, macs: int) -> float:
        """The unloaded time of a forward of ``macs`` MACs."""
        return self.overhead_ms + self.ms_per_mmac * macs / 1e6

    def prepare(self, model: nn.Module, target: Target) -> Runner:
        from amc.layers import count_macs

        macs = count_macs(model, (target.batch, *target.input_shape))[0]

        def run(warmup: int, runs: int) -> list[float]:
            factor = self.load(self.calls) if self.load is not None else 1.0
            self.calls += 1
            self.timed.append(macs)
            return [self.ms(macs) * factor] * runs

        return run


_CURRENT: contextvars.ContextVar[Runtime | None] = contextvars.ContextVar("amc_latency_runtime", default=None)


def current_runtime() -> Runtime:
    """The runtime used where none is passed: the innermost ``use_runtime``, else ``MeasuredRuntime()``."""
    rt = _CURRENT.get()
    return rt if rt is not None else MeasuredRuntime()


@contextlib.contextmanager
def use_runtime(runtime: Runtime) -> Iterator[Runtime]:
    """Within the block, every latency taken where no runtime is passed goes through ``runtime``."""
    token = _CURRENT.set(runtime)
    try:
        yield runtime
    finally:
        _CURRENT.reset(token)


def _check(warmup: int, runs: int) -> None:
    if runs < 1 or warmup < 0:
        raise AmcError(f"need runs >= 1 and warmup >= 0, got runs={runs}, warmup={warmup}")


def measure(model: nn.Module, device: str | torch.device = "cpu", batch: int = 1, threads: int = 1,
            backend: str = "torch", warmup: int = 10, runs: int = 50,
            input_shape: tuple[int, ...] = (3, 32, 32), cuda_graph: bool = False, *,
            target: Target | None = None, runtime: Runtime | None = None) -> float:
    """Median latency in milliseconds of one forward pass on ``target`` (built from the other arguments
    when not given: ``backend`` "torch" on a CUDA device is the ``cuda`` runtime), through ``runtime``
    (default ``current_runtime()``)."""
    if target is None:
        if backend not in BACKENDS:
            raise AmcError(f"unknown latency backend {backend!r}; known: {', '.join(BACKENDS)}")
        target = Target.of(device, backend, threads=threads, batch=batch, input_shape=tuple(input_shape),
                           cuda_graph=cuda_graph)
    _check(warmup, runs)
    return statistics.median((runtime or current_runtime()).prepare(model, target)(warmup, runs))


def describe_target(device: str | torch.device = "cpu", threads: int = 1) -> str:
    """A short name for the machine a latency was measured on."""
    dev = torch.device(device)
    if dev.type == "cuda":
        return torch.cuda.get_device_name(dev).replace(",", " ")
    from amc.system import cpu_name

    return f"{cpu_name()} x{threads}".replace(",", " ")

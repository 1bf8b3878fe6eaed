"""Latency: where it is taken (``Target``), how (``Runtime``: the real clock or a fake with known
times), the paired speed measurement (``paired``) and the per-layer estimate (``LatencyTable``).

* ``amc.latency.target``: ``Target`` (device, runtime "torch" | "onnxruntime" | "cuda", threads,
  batch, input shape, memory layout), the one description of a latency's conditions.
* ``amc.latency.runtime``: ``Runtime`` (``prepare(model, target) -> runner(warmup, runs) -> ms``),
  ``MeasuredRuntime``, ``FakeRuntime``, ``use_runtime`` / ``current_runtime``, ``measure``.
* ``amc.latency.paired``: ``paired(model, dense, target) -> Paired``, dense and model timed in
  alternating rounds; the only way a speedup is reported.
* ``amc.latency.table``: ``LatencyTable`` (the lookup table, calibrated on the dense model), and
  ``validate``.
* ``amc.latency.calibrate``: the table's calibration, one scale per kind of layer (``KindFit``,
  ``fit_kinds``, ``layer_kind``) fitted on the dense model and pruned copies of it.
* ``amc.latency.prune``: ``prune_to_latency(model, x, "latency=0.6")``, data-free channel pruning to a
  latency budget met by paired measurement (the estimate corrected from measured candidates).
"""

from amc.latency.calibrate import CALIBRATION_RANDOM, KINDS, KindFit, fit_kinds, layer_kind
from amc.latency.paired import Paired, paired
from amc.latency.prune import LatencyFit, LatencyProblem, latency_cost, latency_problem, prune_to_latency
from amc.latency.runtime import (
    BACKENDS,
    FakeRuntime,
    MeasuredRuntime,
    Runtime,
    current_runtime,
    describe_target,
    measure,
    time_callable,
    use_runtime,
)
from amc.latency.table import CALIBRATION_RATIOS, LatencyTable, LutKey, _block, _fit_line, _thin_models, validate
from amc.latency.target import LAYOUTS, RUNTIMES, Target

__all__ = [
    "BACKENDS", "CALIBRATION_RANDOM", "CALIBRATION_RATIOS", "KINDS", "LAYOUTS", "RUNTIMES", "FakeRuntime", "KindFit",
    "LatencyFit", "LatencyProblem", "LatencyTable", "LutKey", "MeasuredRuntime", "Paired", "Runtime", "Target",
    "_block", "_fit_line", "_thin_models", "current_runtime", "describe_target", "fit_kinds", "latency_cost",
    "latency_problem", "layer_kind", "measure", "paired", "prune_to_latency", "time_callable", "use_runtime",
    "validate",
]

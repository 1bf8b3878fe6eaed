"""Bounded tracing: a step budget and a wall-clock limit on the channel tracer, and its progress.

torch-pruning's analysis of some graphs runs away (torchvision's SSDlite: its shape inference recurses
to its depth limit again and again, minutes without end). Inside :func:`counted`, every unit of its work
is a *step*: a node of the autograd graph turned into a dependency-graph node, a dependency tested while
following a group, an index mapping, a call of its recursive channel-count inference. Past
``TraceLimits.steps`` steps, or ``TraceLimits.seconds`` seconds on ``TraceLimits.clock``, the tracer
stops with one :class:`TraceLimit` naming where it was (the group it was following). Lifecycle::

    limits = TraceLimits(steps=None, seconds=300.0, progress=print_progress)
    with counted(limits) as meter:          # patches torch-pruning's units of work (undone on leaving)
        meter.at("building the dependency graph")
        ...                                  # torch-pruning works; each unit calls meter.step()
        meter.report("groups", i, n)         # the optional progress callback: (stage, done, total)

A step budget makes the limit testable without timing; the clock is injectable for the same reason.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from amc.errors import AmcError

Progress = Callable[[str, int, int], None]  # (stage, done, total)

DEFAULT_SECONDS = 600.0  # no model of the zoo needs a tenth of this on a laptop CPU


class TraceLimit(AmcError):
    """The channel tracer went past its step budget or its time limit (the message says where)."""


@dataclass(frozen=True)
class TraceLimits:
    """How far the channel tracer may go: ``steps`` units of torch-pruning's work (None: unbounded),
    ``seconds`` on ``clock`` (None: unbounded), and an optional ``progress(stage, done, total)``."""

    steps: int | None = None
    seconds: float | None = DEFAULT_SECONDS
    clock: Callable[[], float] = time.monotonic
    progress: Progress | None = None


class Meter:
    """The steps taken and the time spent under one :class:`TraceLimits`, and where the tracer is."""

    def __init__(self, limits: TraceLimits, what: str = "the model") -> None:
        self.limits, self.what = limits, what
        self.steps = 0
        self.where = "starting"
        self.start = limits.clock()

    def at(self, where: str) -> None:
        """Say where the tracer is now (named in the error if it stops here)."""
        self.where = where
        self.step()

    def step(self, n: int = 1) -> None:
        self.steps += n
        lim = self.limits
        if lim.steps is not None and self.steps > lim.steps:
            raise TraceLimit(f"channel tracing of {self.what} stopped after {lim.steps:,} steps (its step "
                             f"budget) while {self.where}")
        if lim.seconds is not None:
            spent = lim.clock() - self.start
            if spent > lim.seconds:
                raise TraceLimit(f"channel tracing of {self.what} stopped: over {lim.seconds:g} s ({spent:.0f} s, "
                                 f"{self.steps:,} steps) while {self.where}; torch-pruning cannot analyse this "
                                 f"graph in time (raise the limit, or prune a part of the model)")

    def report(self, stage: str, done: int, total: int) -> None:
        if self.limits.progress is not None:
            self.limits.progress(stage, done, total)


def _counting(meter: Meter, fn: Callable[..., Any]) -> Callable[..., Any]:
    def counted_call(*args: Any, **kwargs: Any) -> Any:
        meter.step()
        return fn(*args, **kwargs)
    return counted_call


@contextlib.contextmanager
def counted(meter: Meter) -> Iterator[Meter]:
    """Inside, torch-pruning's units of work each take one step of ``meter`` (see the module docstring)."""
    from torch_pruning.dependency import dependency, graph, shape_infer

    patched: list[tuple[Any, str, Any]] = [
        (dependency.Dependency, "is_triggered_by", dependency.Dependency.is_triggered_by),
        (graph.Node, "__init__", graph.Node.__init__),
        (shape_infer, "infer_out_channels_recursively", shape_infer.infer_out_channels_recursively),
        (shape_infer, "infer_in_channels_recursively", shape_infer.infer_in_channels_recursively),
    ]
    if hasattr(shape_infer, "_infer_out_channels_recursively"):
        patched.append((shape_infer, "_infer_out_channels_recursively", shape_infer._infer_out_channels_recursively))
    for owner, name, fn in patched:
        setattr(owner, name, _counting(meter, fn))
    try:
        yield meter
    finally:
        for owner, name, fn in patched:
            setattr(owner, name, fn)

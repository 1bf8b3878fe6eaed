"""Which layers' output channels leave the traced graph: the model's outputs and the untraced ends.

torch-pruning follows channels backwards from the tensors a model returns. Two kinds of layer end that
walk, and keep their output channels (the channel tracer holds them, with the reason):

* **output layers** — their channels are (part of) a returned tensor, in any nesting, reached through
  whatever keeps channels (BatchNorm, activations, adds, splits, concatenations, reshapes, pooling);
* **untraced ends** — layers whose output reaches the returned tensors through no autograd path (a
  ``detach``, a use only through computed indices or only as coordinates: torchvision's RPN head, whose
  scores and box deltas become proposals under ``detach``; a spatial transformer's sampling grid).
  torch-pruning would never see the layers before them; the tracer traces from these ends as well, so
  those layers are coupled and pruned like any other.

The channels of an op that crops or samples features at coordinates (RoIAlign, RoIPool, grid
sampling) come from its first input alone: the boxes are not coupled with the features
(:func:`inputs_of`; ``amc.pruners.channel.graph`` cuts the same edges in torch-pruning's graph).

Lifecycle::

    traced = traced_forward(model, x)     # one forward under autograd, every prunable layer's outputs
    traced.roots()                        # what torch-pruning traces from: outputs, then the ends
    output_layers(model, x)               # {layer: why its output channels stay}
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from amc.errors import AmcError
from amc.layers import ExampleInputs, call_model, flat_outputs, map_inputs, prunable_names


def run_model(model: nn.Module, x: ExampleInputs) -> Any:
    """One forward of ``model`` on a copy of ``x`` (a forward that adds into its input in place must not
    change the caller's inputs); a model that rejects them is one ``AmcError``."""
    try:
        return call_model(model, map_inputs(x, torch.clone))
    except AmcError:
        raise
    except Exception as e:
        msg = str(e).strip().splitlines()[0][:200] if str(e).strip() else ""
        raise AmcError(f"{type(model).__name__} fails on its example inputs ({type(e).__name__}: {msg})") from None


# autograd nodes that make new channels (a convolution or matrix product): the walk from an output stops
_MIXING = ("Convolution", "Addmm", "Mm", "Bmm", "Linear", "Embedding")

# why a layer is held, by how its output leaves the traced graph
OUTPUT_REASON = "its output channels are the model's outputs ({name})"
DETACHED_REASON = ("its output leaves the autograd graph before the model's outputs (detached, used only "
                   "through computed indices, as torchvision's region proposals, or only as coordinates: boxes "
                   "into RoIAlign, a sampling grid): what it feeds cannot be traced, so its output channels "
                   "stay ({name})")


# autograd nodes of ops whose second input is coordinates, not channels: RoIAlign / RoIPool (boxes), grid
# sampling (a grid). torch-pruning reads any op it does not know as elementwise, coupling all inputs'
# channels: a detector's box offsets would be coupled with the features they crop (and held with them)
_COORDINATE_OPS = ("roi_align", "roi_pool", "roialign", "roipool", "gridsampler")


def is_coordinate_op(fn: Any) -> bool:
    """``fn`` (an autograd node) crops or samples its first input at coordinates given by the others."""
    name = fn.name().lower() if hasattr(fn, "name") else ""
    return any(k in name for k in _COORDINATE_OPS)


def inputs_of(fn: Any) -> list[Any]:
    """The autograd nodes whose channels flow into ``fn``'s output: its inputs, the first alone for an op
    that takes coordinates (:func:`is_coordinate_op`)."""
    nexts = fn.next_functions[:1] if is_coordinate_op(fn) else fn.next_functions
    return [f for f, _ in nexts if f is not None]


def _ancestors(roots: list[Any]) -> set[Any]:
    """Every autograd node reachable backwards from the nodes ``roots`` (themselves included)."""
    seen: set[Any] = set()
    stack = [r for r in roots if r is not None]
    while stack:
        fn = stack.pop()
        if fn in seen:
            continue
        seen.add(fn)
        stack.extend(inputs_of(fn))
    return seen


@dataclass
class Traced:
    """One forward of a model under autograd: what it returned, the autograd node that made each output
    of every prunable layer (read when the layer returned, before any in-place operation on the tensor)
    by dotted name, and the *untraced ends*: outputs of prunable layers from which no autograd path
    reaches the model's outputs (a detach, or a use only through computed indices, as torchvision's RPN
    head's scores and box deltas), and that feed no other such layer. torch-pruning traces the graph
    backwards from the outputs, so it would never see the layers before such an end; traced from the
    ends as well, they are, and the end layers themselves are held."""

    out: Any
    made: dict[Any, str]  # autograd node -> the layer whose output it made
    outputs: dict[str, list[torch.Tensor]]  # layer -> its output tensors (one per call)
    ends: dict[str, list[torch.Tensor]]

    def roots(self) -> list[torch.Tensor]:
        """The tensors to trace from: the model's outputs, then the untraced ends."""
        return flat_outputs(self.out) + [t for ts in self.ends.values() for t in ts]


def traced_forward(model: nn.Module, x: ExampleInputs) -> Traced:
    """``run_model`` under autograd, with the outputs of the prunable layers and the untraced ends (see
    :class:`Traced`)."""
    calls: dict[str, list[tuple[torch.Tensor, Any]]] = {}

    def record(name: str, out: Any) -> None:
        if isinstance(out, torch.Tensor):
            calls.setdefault(name, []).append((out, out.grad_fn))

    hooks = [model.get_submodule(n).register_forward_hook(lambda mod, inp, out, n=n: record(n, out))
             for n in prunable_names(model)]
    try:
        with torch.enable_grad():
            out = run_model(model, x)
    finally:
        for h in hooks:
            h.remove()
    reached = _ancestors([t.grad_fn for t in flat_outputs(out)])
    dead = [(n, t, fn) for n, cs in calls.items() for t, fn in cs if fn is not None and fn not in reached]
    upstream = _ancestors([f for _, _, fn in dead for f in inputs_of(fn)])
    ends: dict[str, list[torch.Tensor]] = {}
    for n, t, fn in dead:
        if fn not in upstream:
            ends.setdefault(n, []).append(t)
    made = {fn: n for n, cs in calls.items() for _, fn in cs if fn is not None}
    return Traced(out, made, {n: [t for t, _ in cs] for n, cs in calls.items()}, ends)


def output_layers(model: nn.Module, x: ExampleInputs) -> dict[str, str]:
    """Prunable layers whose output channels reach one of the model's outputs (any nesting) unmixed, or
    an untraced end (see :class:`Traced`), with why they are held: walking back from every output
    tensor's autograd node through whatever keeps channels (BatchNorm, activations, adds, splits,
    concatenations, reshapes, pooling) to the first layer that makes them."""
    traced = traced_forward(model, x)
    made = traced.made
    ys = flat_outputs(traced.out)
    found = {n: OUTPUT_REASON.format(name=n) for n, ts in traced.outputs.items()
             if any(o is t for o in ts for t in ys)}
    found.update({n: DETACHED_REASON.format(name=n) for n in traced.ends})
    stack = [t.grad_fn for t in ys if t.grad_fn is not None]
    seen: set[Any] = set()
    while stack:
        fn = stack.pop()
        if fn in seen:
            continue
        seen.add(fn)
        if fn in made:
            found.setdefault(made[fn], OUTPUT_REASON.format(name=made[fn]))
            continue
        if any(k in type(fn).__name__ for k in _MIXING):
            continue
        stack.extend(inputs_of(fn))
    if not found:  # no autograd graph (frozen parameters): fall back to the last Linear
        lin = [n for n in prunable_names(model) if isinstance(model.get_submodule(n), nn.Linear)]
        found = {n: OUTPUT_REASON.format(name=n) for n in lin[-1:]}
    return found

"""What is coupled, traced: torch-pruning's DependencyGraph read into a :class:`ChannelTable`, and its patches.

This is the one module that touches torch-pruning. Its patches reach into torch-pruning's private
``torch_pruning.dependency.index_mapping``, so the dependency is pinned to the range they are tested
against (``torch-pruning>=1.5,<1.7`` in pyproject.toml; 1.6.1 is the version the tests last ran on): a
new minor version must pass tests/test_channel_tracing.py and tests/test_channel.py before the upper
bound moves. Lifecycle::

    table = channel_table(model, x)      # traced once per architecture and input shape (LRU cache)
      -> _dependency_graph(copy, x)      # torch-pruning's graph, inside _tolerant_reshapes()
      -> _group_table(...)               # one ChannelGroup per root layer, by dotted name; the layers
                                         # whose channels cannot go are named with the reason
      -> _breaking_groups(...)           # groups that torch-pruning maps wrongly are held
      -> ChannelTable.measure(...)       # layer table, dense MACs / params, analytic cost model
    prune_groups(copy, x, removed)       # the physical removal (amc.pruners.channel.apply)

The patches of torch-pruning's ``index_mapping`` (all undone on leaving their context):

* ``_tolerant_reshapes`` — a reshape or concat torch-pruning cannot map (a channel shuffle, Swin's
  patch merging) is left unmapped and recorded, so the groups through it are held, not crashed;
  every ``*IndexMapping`` is bounded by ``MAPPING_LIMIT`` indices per traversal (window partitions
  otherwise grow the index lists without end: ``MappingDiverges``).
* ``_mapped_once`` — while tracing (nothing is pruned) the index mapping of the graph is inferred
  once, not on every ``get_pruning_group`` (seconds per call on a transformer).

Output layers (whose channels are the model's outputs, or leave the autograd graph before them:
``amc.pruners.channel.ends``), attention projections (whose channels are split into heads), grouped
and transposed convolutions keep their output channels; channels normalised by a GroupNorm go evenly
from every group (``ChannelGroup.parts``), or stay when the GroupNorm spans several layers' channels.
"""

from __future__ import annotations

import contextlib
import copy
import math
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from amc.errors import PolicyError
from amc.layers import (
    DEFAULT_INPUT_SHAPE,
    PRUNABLE,
    ExampleInputs,
    call_model,
    input_key,
    map_inputs,
    output_shapes,
    prunable_names,
    shape_change,
    stable_output_shapes,
)
from amc.pruners.channel.ends import inputs_of, is_coordinate_op, output_layers, traced_forward
from amc.pruners.channel.limits import Meter, TraceLimit, TraceLimits, counted
from amc.pruners.channel.table import ChannelGroup, ChannelItem, ChannelTable

_BN = nn.modules.batchnorm._BatchNorm


def _signature(model: nn.Module, inputs: ExampleInputs) -> tuple:
    mods = tuple((n, type(m).__name__) for n, m in model.named_modules())
    params = tuple((n, tuple(p.shape)) for n, p in model.named_parameters())
    return (type(model).__qualname__, mods, params, input_key(inputs))


_CACHE: OrderedDict[tuple, ChannelTable] = OrderedDict()
_CACHE_SIZE = 16


def example_input(model: nn.Module, example_inputs: ExampleInputs | None) -> ExampleInputs:
    """``example_inputs`` as given (a tensor, a tuple or a dict of tensors); only when the caller gave
    none, one random CIFAR-sized image."""
    if example_inputs is not None:
        if not isinstance(example_inputs, (torch.Tensor, tuple, list, dict)):
            raise PolicyError(f"example inputs must be a tensor, a tuple or a dict of tensors, "
                              f"got {type(example_inputs).__name__}")
        return example_inputs
    p = next(model.parameters(), None)
    return torch.randn(DEFAULT_INPUT_SHAPE, device=p.device if p is not None else "cpu")


def channel_table(model: nn.Module, example_inputs: ExampleInputs | None = None,
                  limits: TraceLimits | None = None) -> ChannelTable:
    """The coupled channel groups of ``model`` (cached per architecture and input shapes).

    ``example_inputs`` (a tensor, a tuple of positional inputs or a dict of keyword inputs) default to
    one 3x32x32 image; pass the model's own input (a 224x224 image for an ImageNet model) so MACs and
    shapes are measured where the model runs. ``limits`` bound the tracing (a ``TraceLimit`` error
    past them) and carry an optional progress callback."""
    x = example_input(model, example_inputs)
    key = _signature(model, x)
    hit = _CACHE.get(key)
    if hit is not None:
        _CACHE.move_to_end(key)
        return hit
    table = _build_table(model, x, limits or TraceLimits())
    _CACHE[key] = table
    while len(_CACHE) > _CACHE_SIZE:
        _CACHE.popitem(last=False)
    return table


def as_table(model_or_table: nn.Module | ChannelTable, example_inputs: ExampleInputs | None = None) -> ChannelTable:
    """A table as given, or the model's table on ``example_inputs`` (a table already carries its shape)."""
    if isinstance(model_or_table, ChannelTable):
        return model_or_table
    return channel_table(model_or_table, example_inputs)


def _in_attention(n2m: Mapping[str, nn.Module], name: str) -> bool:
    """``name`` is a projection inside an attention block (its parent splits channels into heads:
    timm's and torchvision's attention modules all carry ``num_heads``). Removing arbitrary output
    channels there would re-cut the heads, so such layers keep their outputs."""
    parent = n2m.get(name.rsplit(".", 1)[0]) if "." in name else None
    return parent is not None and isinstance(getattr(parent, "num_heads", None), int)


def _role(mod: nn.Module, is_out: bool) -> str | None:
    if isinstance(mod, nn.modules.conv._ConvNd):
        if getattr(mod, "transposed", False):
            return None
        if mod.groups > 1:
            return "dw" if mod.groups == mod.in_channels == mod.out_channels else None
        return "out" if is_out else "in"
    if isinstance(mod, nn.Linear):
        return "out" if is_out else "in"
    if isinstance(mod, _BN):
        return "bn"
    return "other"


MAPPING_LIMIT = 500_000  # channel indices torch-pruning may produce while following one group


class MappingDiverges(RuntimeError):
    """torch-pruning's index mapping of one group grew past ``MAPPING_LIMIT`` indices."""


@dataclass
class _Tolerance:
    """What ``_tolerant_reshapes`` saw: nodes left unmapped (by id), and the channel indices produced
    since the last ``reset`` (a group's traversal) by every index mapping of torch-pruning (each
    ``*IndexMapping`` class: flattens, concats, splits, slices and the rest), which ``MAPPING_LIMIT``
    bounds."""

    failed: set[int] = field(default_factory=set)
    produced: int = 0

    def reset(self) -> None:
        self.produced = 0


@contextlib.contextmanager
def _tolerant_reshapes() -> Iterator[_Tolerance]:
    """torch-pruning maps channels through flattening reshapes (4D <-> 2D) only; a channel shuffle's
    4D -> 5D view (ShuffleNet) makes it divide by zero, and a concat whose sizes it cannot infer
    (Swin's patch merging) makes it add None. Inside this context such a node is left unmapped and
    recorded (by id), so the groups that pass through it are held. Window partitions (Swin, MaxViT)
    read as flattens and splits make a group's index lists grow without end (minutes, then memory): past
    ``MAPPING_LIMIT`` indices in one traversal it raises ``MappingDiverges`` instead."""
    from torch_pruning.dependency import index_mapping

    tol = _Tolerance()
    reshape, concat = index_mapping.update_reshape_index_mapping, index_mapping.update_concat_index_mapping

    def tolerant_reshape(graph: Any, node: Any) -> None:
        try:
            reshape(graph, node)
        except ZeroDivisionError:
            tol.failed.add(id(node))

    def tolerant_concat(graph: Any, node: Any) -> None:  # Swin's concat on the last dim: sizes unknown
        try:
            concat(graph, node)
        except TypeError:
            tol.failed.add(id(node))

    mappings = [c for c in vars(index_mapping).values()
                if isinstance(c, type) and c.__name__.endswith("IndexMapping") and "__call__" in vars(c)]
    calls = {c: c.__call__ for c in mappings}

    def bounded(call: Callable[..., Any]) -> Callable[..., Any]:
        def mapped(self: Any, idxs: Any) -> Any:
            out = call(self, idxs)
            tol.produced += len(out)
            if tol.produced > MAPPING_LIMIT:
                raise MappingDiverges(f"its channel mapping through reshapes does not settle (over "
                                      f"{MAPPING_LIMIT:,} indices: a window partition or similar reshape)")
            return out
        return mapped

    index_mapping.update_reshape_index_mapping = tolerant_reshape
    index_mapping.update_concat_index_mapping = tolerant_concat
    for c, call in calls.items():
        c.__call__ = bounded(call)  # type: ignore[method-assign]
    try:
        yield tol
    finally:
        index_mapping.update_reshape_index_mapping = reshape
        index_mapping.update_concat_index_mapping = concat
        for c, call in calls.items():
            c.__call__ = call  # type: ignore[method-assign]


def _dependency_graph(model: nn.Module, x: ExampleInputs) -> Any:
    """torch-pruning's DependencyGraph of ``model`` on ``x`` (call inside ``_tolerant_reshapes``:
    the graph re-maps its reshapes on every ``get_pruning_group``). The forward is ours (``run_model``:
    a tensor, a tuple or a dict of inputs, copied), and every output tensor, in any nesting, is traced.
    torch-pruning's own forward tries ``model(*x)`` first, which for a tensor of one image is the
    unbatched call ``model(x[0])``: a fully convolutional model accepts it, and traced so, a residual
    add (in place or not) left its conv "not reached" and the coupled groups wrong. The graph is traced
    from the untraced ends too (``amc.pruners.channel.ends``), so that the layers before a detach are coupled."""
    import torch_pruning as tp

    with torch.enable_grad(), _coordinates_uncoupled():
        return tp.DependencyGraph().build_dependency(
            model, example_inputs=x, forward_fn=lambda m, xs: traced_forward(m, xs).roots(),
            output_transform=lambda roots: roots)


@contextlib.contextmanager
def _coordinates_uncoupled() -> Iterator[None]:
    """Inside, torch-pruning's traced graph keeps only the first input of an op that crops or samples
    features at coordinates (``amc.pruners.channel.ends.is_coordinate_op``: RoIAlign's boxes, a
    sampling grid), which it would otherwise couple with the features as an elementwise op's."""
    import torch_pruning as tp

    trace = tp.DependencyGraph._trace

    def traced(self: Any, *args: Any, **kwargs: Any) -> Any:
        module2node = trace(self, *args, **kwargs)
        for node in list(module2node.values()):
            if node.grad_fn is None or not is_coordinate_op(node.grad_fn):
                continue
            keep = inputs_of(node.grad_fn)
            coords = [f for f, _ in node.grad_fn.next_functions if f is not None and not any(f is k for k in keep)]
            # a node made by several calls carries one call's autograd node: only a node seen to be a
            # coordinate input, and not the features, is cut (else torch-pruning's coupling stays)
            for dropped in [n for n in node.inputs if any(n.grad_fn is f for f in coords)
                            and not any(n.grad_fn is f for f in keep)]:
                node.inputs.remove(dropped)
                dropped.outputs.remove(node)
        return module2node

    tp.DependencyGraph._trace = traced  # type: ignore[method-assign]
    try:
        yield
    finally:
        tp.DependencyGraph._trace = trace  # type: ignore[method-assign]


def _build_table(model: nn.Module, x: ExampleInputs, limits: TraceLimits) -> ChannelTable:
    meter = Meter(limits, type(model).__name__)
    with _tolerant_reshapes() as tol, counted(meter):
        return _trace_table(model, x, tol, meter)


def _trace_table(model: nn.Module, x: ExampleInputs, tol: _Tolerance, meter: Meter) -> ChannelTable:
    work = copy.deepcopy(model).eval()  # tracing runs a forward: keep BN statistics of the caller's model
    names = prunable_names(work)
    n2m = dict(work.named_modules())
    m2n = {id(m): n for n, m in n2m.items()}
    outputs = output_layers(work, x)
    meter.report("graph", 0, 1)
    meter.at("building the dependency graph")
    dg = _dependency_graph(work, x)
    meter.report("graph", 1, 1)
    meter.at("inferring the channel mapping of reshapes and concatenations")
    with _mapped_once(dg):  # nothing is pruned while tracing: the index mapping stays valid
        table = _group_table(work, x, dg, tol, names, n2m, m2n, outputs, meter)
    return table


@contextlib.contextmanager
def _mapped_once(dg: Any) -> Iterator[None]:
    """Inside, torch-pruning's ``get_pruning_group`` skips re-inferring the index mapping of every
    reshape and concat (seconds per call on a transformer) once it has been done: valid while the
    graph's modules keep their shapes, i.e. while nothing is pruned."""
    from torch_pruning.dependency import index_mapping

    update = index_mapping.update_index_mapping
    update(dg)
    index_mapping.update_index_mapping = lambda graph: None if graph is dg else update(graph)
    try:
        yield
    finally:
        index_mapping.update_index_mapping = update


def _group_table(work: nn.Module, x: ExampleInputs, dg: Any, tol: _Tolerance, names: list[str],
                 n2m: dict[str, nn.Module], m2n: dict[int, str], outputs: dict[str, str], meter: Meter) -> ChannelTable:

    groups: list[ChannelGroup] = []
    group_of: dict[str, int] = {}
    unprunable: dict[str, str] = {}
    visited: set[str] = set()
    hints: dict[str, str] = {}  # root -> a suspect mapping, told when pruning the group breaks the forward
    for i, name in enumerate(names):
        meter.report("groups", i, len(names))
        if name in visited:
            continue
        meter.at(f"following the channels of {name}")
        mod = n2m[name]
        if mod not in dg.module2node:
            unprunable[name] = ("not reached by a forward pass (its module is never called: unused, or its "
                                "weight used through a functional call, as in torchvision's Swin attention)")
            continue
        if name in outputs:
            # held whatever it is coupled with, so not followed: a detector's head outputs are reshaped and
            # concatenated into boxes, where torch-pruning's index mapping runs for minutes (SSDlite)
            unprunable[name] = outputs[name]
            continue
        pruner = dg.get_pruner_of_module(mod)
        channels = pruner.get_out_channels(mod) if pruner is not None else None
        if not channels:
            unprunable[name] = "torch-pruning has no output-channel pruner for it"
            continue
        tol.reset()
        try:
            grp = dg.get_pruning_group(mod, pruner.prune_out_channels, list(range(channels)))
        except MappingDiverges as e:
            unprunable[name] = f"torch-pruning cannot follow its channels: {e}"
            continue
        except (IndexError, ValueError, KeyError, ZeroDivisionError, RuntimeError) as e:
            through = " through a channel shuffle or concat it cannot map" if tol.failed else ""
            unprunable[name] = (f"torch-pruning cannot follow its channels{through} "
                                f"({type(e).__name__}: {str(e)[:80]})")
            continue
        merged: OrderedDict[tuple[str, str], tuple[list[int], list[int]]] = OrderedDict()
        members, consumers, problem, split = [], [], None, False
        parts: list[int] = []  # equal contiguous parts of the root's channels (GroupNorm groups)
        for item in grp.items:
            tmod = item.dep.target.module
            tname = m2n.get(id(tmod))
            is_out = dg.is_out_channel_pruning_fn(item.dep.handler)
            if id(item.dep.target) in tol.failed or id(item.dep.source) in tol.failed:
                problem = ("coupled through a channel shuffle or concat (a node whose channel mapping "
                           "torch-pruning cannot follow)")
                continue
            if tname is None:  # elementwise ops, reshapes, unwrapped parameters
                if isinstance(tmod, nn.Parameter):
                    problem = "it is coupled with an unwrapped nn.Parameter"
                split = split or type(tmod).__name__ in ("_SplitOp", "_UnbindOp")
                continue
            if isinstance(tmod, nn.GroupNorm) and tmod.num_groups > 1:
                # torch-pruning keeps num_groups: the channels must go evenly from every group, which the plan
                # does when the GroupNorm's channels are the root's own (``ChannelGroup.parts``)
                if tmod.num_channels == channels and _identity(item.idxs, item.root_idxs, int(channels)):
                    parts.append(tmod.num_groups)
                else:
                    problem = (f"it is coupled with {tname}, a GroupNorm of {tmod.num_groups} groups (its channels "
                               f"cannot be removed without regrouping them)")
                    continue
            if not any(True for _ in tmod.parameters(recurse=False)) and not isinstance(tmod, _BN):
                continue
            role = _role(tmod, is_out)
            if role is None:
                problem = f"it is coupled with {tname}, a grouped or transposed convolution"
                continue
            if isinstance(tmod, nn.MultiheadAttention) or (role == "out" and _in_attention(n2m, tname)):
                problem = f"attention heads / qkv: coupled with {tname}, whose channels are split into heads"
                continue
            if isinstance(tmod, PRUNABLE):
                if role in ("out", "dw") and tname not in members:
                    members.append(tname)
                if role in ("in", "dw") and tname not in consumers:
                    consumers.append(tname)
            idxs, roots = merged.setdefault((tname, role), ([], []))
            for i, r in zip(item.idxs, item.root_idxs, strict=True):
                if i not in idxs:
                    idxs.append(int(i))
                    roots.append(int(r))
        prunable_members = [m for m in names if m in members]
        for m in prunable_members:
            visited.add(m)
        out_layers = [m for m in prunable_members if m in outputs]
        if out_layers:
            problem = outputs[out_layers[0]]
        if problem is not None:
            for m in prunable_members or [name]:
                unprunable[m] = problem
            continue
        # ``name`` is the first member in registration order: earlier members would have visited it
        root = name
        hint = _partly_mapped(merged, n2m, int(channels)) or (_SPLIT_HINT if split else None)
        if hint is not None:
            hints[root] = hint
        items = tuple(ChannelItem(n, role, tuple(i), tuple(r)) for (n, role), (i, r) in merged.items())
        n_parts = math.lcm(*parts) if parts else 1
        if channels % n_parts:
            for m in prunable_members or [name]:
                unprunable[m] = f"its channels fall in parts of unequal sizes ({n_parts} parts of {channels})"
            continue
        g = ChannelGroup(root, int(channels), tuple(prunable_members), tuple(c for c in names if c in consumers), items,
                         n_parts)
        for m in prunable_members:
            group_of[m] = len(groups)
        groups.append(g)
    meter.report("groups", len(names), len(names))

    meter.at("checking that pruning each group keeps every output's shape")
    broken = _breaking_groups(work, x, groups)
    if broken:  # torch-pruning mapped these groups wrongly (seen: a concat before a flatten): hold them
        for g in groups:
            if g.root in broken:
                for m in g.members:
                    why = f"{hints[g.root]}: {broken[g.root]}" if g.root in hints else broken[g.root]
                    unprunable[m] = f"pruning its channels breaks the forward pass ({why})"
        groups = [g for g in groups if g.root not in broken]
        group_of = {m: i for i, g in enumerate(groups) for m in g.members}

    return ChannelTable.measure(work, x, groups, group_of, unprunable, names)


def _identity(idxs: tuple[int, ...] | list[int], root_idxs: tuple[int, ...] | list[int], channels: int) -> bool:
    """A group item maps the root's channels one to one, in order, onto its own."""
    return len(idxs) == channels and list(idxs) == list(root_idxs) == list(range(channels))


_SPLIT_HINT = ("the forward splits its channels into parts (torch.chunk or split, as YOLOv8's C2f blocks), "
               "whose sizes torch-pruning does not map here")


def _partly_mapped(merged: Mapping[tuple[str, str], tuple[list[int], list[int]]], n2m: Mapping[str, nn.Module],
                   channels: int) -> str | None:
    """A consumer whose input is at least as wide as the group (not one part of a split) but that
    receives only some of the group's channels, said in words; None if there is none. torch-pruning
    maps channels so through a reshape it reads wrongly (LeViT's subsampling ``view(B, H, W, C)[:, ::2,
    ::2]`` maps half of them), and pruning then cuts that consumer's input by another count than the
    channels removed. A split followed by a concat (CSP blocks) maps so too, rightly: this only names the
    suspect when ``_breaking_groups`` finds that pruning the group breaks the forward pass."""
    for (name, role), (_, roots) in merged.items():
        if role != "in":
            continue
        mod = n2m[name]
        width = getattr(mod, "in_features", None) or getattr(mod, "in_channels", None)
        mapped = len(set(roots))
        if isinstance(width, int) and width >= channels and mapped < channels:
            return (f"torch-pruning maps only {mapped} of its {channels} channels into {name}, through a "
                    f"reshape it cannot follow")
    return None


def _probe(group: ChannelGroup) -> list[int]:
    """The channels ``_breaking_groups`` removes from ``group``: a fixed pseudo-random half (a mapping that is
    wrong for some channels only shows when many go, and may be right for a regular pattern: a 2x
    subsampling maps every other channel, so removing those looks consistent), taking back one channel
    of any member that would lose all of its own (one side of a concat: a plan that empties it breaks,
    but that is the plan's ratio, not the mapping)."""
    gen = torch.Generator().manual_seed(0)
    if group.parts > 1:  # as a plan removes them: as many from every part
        size = group.channels // group.parts
        return sorted(p * size + int(i) for p in range(group.parts)
                      for i in torch.randperm(size, generator=gen)[: size // 2])
    perm = torch.randperm(group.channels, generator=gen).tolist()
    removed = set(perm[: group.channels // 2])
    for item in group.items:
        if item.role in ("out", "dw") and item.root_idxs and removed.issuperset(item.root_idxs):
            removed.discard(item.root_idxs[0])
    return sorted(removed)


def _breaking_groups(model: nn.Module, x: ExampleInputs, groups: list[ChannelGroup]) -> dict[str, str]:
    """Roots of the groups whose physical pruning (half of their channels removed, see ``_probe``) breaks
    the forward pass or changes the shape of any output, with the error. One copy and one forward when
    every group works; halving the set to find the culprits otherwise."""
    want = stable_output_shapes(model.eval(), x)

    def error(gs: list[ChannelGroup]) -> str | None:
        work = copy.deepcopy(model).eval()
        try:
            dg = _dependency_graph(work, x)
            for g in gs:
                mod = work.get_submodule(g.root)
                dg.get_pruning_group(mod, dg.get_pruner_of_module(mod).prune_out_channels, _probe(g)).prune()
            with torch.no_grad():
                out = call_model(work, map_inputs(x, torch.clone))
        except TraceLimit:
            raise
        except Exception as e:
            return f"{type(e).__name__}: {str(e).strip().splitlines()[0][:100] if str(e).strip() else ''}"
        return shape_change(want, output_shapes(out))

    found: dict[str, str] = {}

    def search(gs: list[ChannelGroup]) -> None:
        err = error(gs)
        if err is None:
            return
        if len(gs) == 1:
            found[gs[0].root] = err
            return
        search(gs[: len(gs) // 2])
        search(gs[len(gs) // 2:])

    with _tolerant_reshapes():
        search([g for g in groups if g.channels > 1])
    return found


def prune_groups(work: nn.Module, x: ExampleInputs, removed: Mapping[str, list[int]],
                 limits: TraceLimits | None = None) -> None:
    """Remove from ``work``, IN PLACE, the output channels ``removed[root]`` of each group root and
    every slice coupled with them (torch-pruning's DependencyGraph traced on ``x``, under the same
    patches and limits as the tracing)."""
    with _tolerant_reshapes(), counted(Meter(limits or TraceLimits(), type(work).__name__)):
        dg = _dependency_graph(work, x)
        for root, idxs in removed.items():
            mod = work.get_submodule(root)
            pruner = dg.get_pruner_of_module(mod)
            dg.get_pruning_group(mod, pruner.prune_out_channels, idxs).prune()

"""Channel (filter) pruning that physically shrinks any graph, plus the fast pieces a search needs.

Three nouns, as in Torch-Pruning:

* **what is coupled** — a :class:`ChannelTable`: every group of channels that must be removed
  together (a conv's filters, its BatchNorm, the next layers' input slices, every branch of a
  residual add, a depthwise conv's in = out channels), found once with torch-pruning's
  ``DependencyGraph`` and stored by dotted module name, so it applies to any copy of the model.
* **how to score** — a criterion of :data:`amc.importance.CHANNEL_CRITERIA` (the one registry of
  channel criteria), one score per channel, aggregated (mean) over the coupled group.
* **how much and where** — a policy ``{layer name: fraction of output channels to remove}``.

Lifecycle::

    table = channel_table(model)                       # cached by architecture
    plan = plan_channels(model, policy, "l2", 8)       # kept indices per group root
    plan_cost(table, plan)                             # MACs / params, analytic, microseconds
    apply_channel_masks(copy_of_model, plan)           # emulate (zeros), for a search
    small = prune_channels(model, plan)                # physically smaller nn.Module

When several layers named in a policy share one group (the convs that feed a residual add), the
**largest** of their ratios wins: it is the only choice that keeps every named layer at least as
pruned as asked, so a MACs budget computed per layer is never exceeded by the group.
Layers whose output channels cannot be removed (the classifier, whose outputs are the model's
outputs; grouped or transposed convolutions) are left alone and named in ``ChannelPlan.notes``.
"""

from __future__ import annotations

import contextlib
import copy
import itertools
import json
import math
import os
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from amc.errors import BudgetError, PolicyError
from amc.importance import CHANNEL_CRITERIA
from amc.importance.registry import channel_needs_data
from amc.layers import (
    DEFAULT_INPUT_SHAPE,
    PRUNABLE,
    LayerInfo,
    count_macs,
    count_params,
    layer_table,
    prunable_names,
)
from amc.policy import Policy, check_policy

Counts = dict[str, int]  # group root -> output channels kept

_BN = nn.modules.batchnorm._BatchNorm


# --------------------------------------------------------------------------------------------
# rounding
# --------------------------------------------------------------------------------------------
def round_channels(n_keep: float, total: int, multiple: int = 8) -> int:
    """Channels to keep: the multiple of ``multiple`` nearest to ``n_keep`` (or ``total`` itself,
    which is always allowed, so a ratio of 0 never prunes), never below ``multiple`` (``total`` if
    ``total < multiple``), never zero, never above ``total``. Ties round up (keep more).

    ``multiple=1`` turns rounding off: the nearest integer, at least 1.
    """
    if total < 1:
        raise ValueError(f"total channels must be >= 1, got {total}")
    if multiple < 1:
        raise ValueError(f"rounding multiple must be >= 1, got {multiple}")
    n = min(max(float(n_keep), 0.0), float(total))
    if multiple == 1:
        k = math.floor(n + 0.5)
    else:
        below = math.floor(n / multiple) * multiple
        cands = [c for c in (below, below + multiple, total) if 0 < c <= total]
        k = min(cands, key=lambda c: (abs(c - n), -c))
    return int(min(max(k, min(multiple, total), 1), total))


# --------------------------------------------------------------------------------------------
# the coupled groups
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ChannelItem:
    """One parameterised module touched when the group's channels go.

    ``role``: ``out`` (conv/linear filters, dim 0), ``in`` (conv/linear input slices, dim 1),
    ``dw`` (depthwise conv: in = out channels, dim 0), ``bn`` (BatchNorm affine and statistics),
    ``other`` (any other module with parameters along dim 0, e.g. PReLU, LayerNorm).
    """

    module: str
    role: str
    idxs: tuple[int, ...]  # indices in this module's own channel dimension
    root_idxs: tuple[int, ...]  # the matching indices in the group root's output channels


@dataclass(frozen=True)
class ChannelGroup:
    """Channels that are removed together, indexed like the root layer's output channels."""

    root: str  # first member in registration order: the name a ChannelPlan is keyed by
    channels: int
    members: tuple[str, ...]  # conv/linear layers whose OUTPUT channels are these
    consumers: tuple[str, ...]  # conv/linear layers whose INPUT channels are these
    items: tuple[ChannelItem, ...]


@dataclass
class ChannelTable:
    """The coupled groups of one architecture plus what ``plan_cost`` needs, precomputed.

    Built once per architecture (:func:`channel_table` caches it); holds names, never modules,
    so it serves every copy of the model.
    """

    groups: list[ChannelGroup]
    group_of: dict[str, int]  # member layer name -> index into groups
    unprunable: dict[str, str]  # layer name -> why its output channels stay
    layers: list[LayerInfo]
    names: list[str]  # all prunable (conv/linear) layer names, registration order
    dense_macs: int
    dense_params: int
    input_shape: tuple[int, ...]
    # cost model: one row per parameterised leaf module
    _mods: list[str] = field(default_factory=list, repr=False)
    _m_out: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), np.int64), repr=False)  # (M x G)
    _m_in: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), np.int64), repr=False)
    _out0: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64), repr=False)
    _in0: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64), repr=False)
    _unit_macs: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64), repr=False)
    _mac_in: np.ndarray = field(default_factory=lambda: np.zeros(0, bool), repr=False)  # MACs scale with in
    _p_outin: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64), repr=False)  # params ~ out*in
    _p_out: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64), repr=False)  # params ~ out
    _p_const: int = 0
    _macs_const: int = 0
    _simple: list[bool] = field(default_factory=list, repr=False)  # group mapping is one-to-one

    @property
    def roots(self) -> list[str]:
        return [g.root for g in self.groups]

    def group(self, name: str) -> ChannelGroup:
        """The group whose output channels ``name`` produces."""
        if name not in self.group_of:
            why = self.unprunable.get(name, "not a prunable layer of this model")
            raise PolicyError(f"layer {name} has no prunable output channels: {why}")
        return self.groups[self.group_of[name]]

    def prunable_layers(self) -> list[str]:
        """Layers (in registration order) whose output channels can be removed."""
        return [n for n in self.names if n in self.group_of]

    def layer_channels(self, counts: Mapping[str, int]) -> dict[str, tuple[int, int]]:
        """(in, out) channels of every prunable layer after keeping ``counts[root]`` per group."""
        out_k, in_k = self._kept(self._removed(counts))
        idx = {m: i for i, m in enumerate(self._mods)}
        return {n: (int(in_k[idx[n]]), int(out_k[idx[n]])) for n in self.names if n in idx}

    # -- fast cost ---------------------------------------------------------------------------
    def _removed(self, counts: Mapping[str, int]) -> np.ndarray:
        rem = np.zeros(len(self.groups), dtype=np.int64)
        for root, n in counts.items():
            g = self.group_of.get(root)
            if g is None or self.groups[g].root != root:
                raise PolicyError(f"{root} is not a channel-group root of this model "
                                  f"(roots: {', '.join(self.roots[:6])}{', ...' if len(self.groups) > 6 else ''})")
            rem[g] = self.groups[g].channels - int(n)
        return rem

    def _kept(self, rem: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self._out0 - self._m_out @ rem, self._in0 - self._m_in @ rem

    def cost_of_counts(self, counts: Mapping[str, int]) -> dict[str, int]:
        """MACs and parameters with ``counts[root]`` output channels kept per group (others whole).

        Exact for one-to-one groups (every model in the zoo); approximate (proportional) where a
        group maps onto a module through a reshape or concat.
        """
        rem = self._removed(counts)
        if not all(self._simple[g] for g in np.flatnonzero(rem)):
            return self._cost_slow(counts)
        out_k, in_k = self._kept(rem)
        macs = int((self._unit_macs * out_k * np.where(self._mac_in, in_k, 1)).sum()) + self._macs_const
        params = int((self._p_outin * out_k * in_k).sum() + (self._p_out * out_k).sum()) + self._p_const
        return {"macs": macs, "params": params}

    def _cost_slow(self, counts: Mapping[str, int]) -> dict[str, int]:
        """Proportional fallback where an item maps several indices per root channel."""
        frac = self._removed(counts) / np.array([g.channels for g in self.groups], dtype=float)
        out_k = self._out0 * (1 - ((self._m_out > 0) * frac[None, :]).sum(1))
        in_k = self._in0 * (1 - ((self._m_in > 0) * frac[None, :]).sum(1))
        macs = (self._unit_macs * out_k * np.where(self._mac_in, in_k, 1)).sum() + self._macs_const
        params = (self._p_outin * out_k * in_k).sum() + (self._p_out * out_k).sum() + self._p_const
        return {"macs": round(float(macs)), "params": round(float(params))}


def _signature(model: nn.Module, input_shape: tuple[int, ...]) -> tuple:
    mods = tuple((n, type(m).__name__) for n, m in model.named_modules())
    params = tuple((n, tuple(p.shape)) for n, p in model.named_parameters())
    return (type(model).__qualname__, mods, params, tuple(input_shape))


_CACHE: OrderedDict[tuple, ChannelTable] = OrderedDict()
_CACHE_SIZE = 16


def _example(model: nn.Module, example_inputs: torch.Tensor | None) -> torch.Tensor:
    """``example_inputs`` as given; only when the caller gave none, one random CIFAR-sized image."""
    if example_inputs is not None:
        return example_inputs
    p = next(model.parameters(), None)
    return torch.randn(DEFAULT_INPUT_SHAPE, device=p.device if p is not None else "cpu")


def channel_table(model: nn.Module, example_inputs: torch.Tensor | None = None) -> ChannelTable:
    """The coupled channel groups of ``model`` (cached per architecture and input shape).

    ``example_inputs`` default to one 3x32x32 image; pass the model's own input (a 224x224 image
    for an ImageNet model) so MACs and shapes are measured where the model runs."""
    x = _example(model, example_inputs)
    key = _signature(model, tuple(x.shape))
    hit = _CACHE.get(key)
    if hit is not None:
        _CACHE.move_to_end(key)
        return hit
    table = _build_table(model, x)
    _CACHE[key] = table
    while len(_CACHE) > _CACHE_SIZE:
        _CACHE.popitem(last=False)
    return table


def _output_layers(model: nn.Module, x: torch.Tensor) -> set[str]:
    """Prunable layers whose output tensor is (part of) the model's output."""
    outs: dict[str, torch.Tensor] = {}
    hooks = [model.get_submodule(n).register_forward_hook(
        lambda mod, inp, out, n=n: outs.__setitem__(n, out)) for n in prunable_names(model)]
    try:
        with torch.no_grad():
            y = model(x)
    finally:
        for h in hooks:
            h.remove()
    ys = [t for t in (y if isinstance(y, (tuple, list)) else [y]) if isinstance(t, torch.Tensor)]
    found = {n for n, o in outs.items() if isinstance(o, torch.Tensor) and any(o is t for t in ys)}
    if not found:  # output went through a reshape/activation: fall back to the last Linear
        lin = [n for n in prunable_names(model) if isinstance(model.get_submodule(n), nn.Linear)]
        if lin:
            found = {lin[-1]}
    return found


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


def _dependency_graph(model: nn.Module, x: torch.Tensor) -> Any:
    """torch-pruning's DependencyGraph of ``model`` on ``x`` (call inside ``_tolerant_reshapes``:
    the graph re-maps its reshapes on every ``get_pruning_group``)."""
    import torch_pruning as tp

    with torch.enable_grad():
        return tp.DependencyGraph().build_dependency(model, example_inputs=x)


def _build_table(model: nn.Module, x: torch.Tensor) -> ChannelTable:
    with _tolerant_reshapes() as tol:
        return _trace_table(model, x, tol)


def _trace_table(model: nn.Module, x: torch.Tensor, tol: _Tolerance) -> ChannelTable:
    work = copy.deepcopy(model).eval()  # tracing runs a forward: keep BN statistics of the caller's model
    names = prunable_names(work)
    n2m = dict(work.named_modules())
    m2n = {id(m): n for n, m in n2m.items()}
    outputs = _output_layers(work, x)
    dg = _dependency_graph(work, x)
    with _mapped_once(dg):  # nothing is pruned while tracing: the index mapping stays valid
        return _group_table(work, x, dg, tol, names, n2m, m2n, outputs)


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


def _group_table(work: nn.Module, x: torch.Tensor, dg: Any, tol: _Tolerance, names: list[str],
                 n2m: dict[str, nn.Module], m2n: dict[int, str], outputs: set[str]) -> ChannelTable:

    groups: list[ChannelGroup] = []
    group_of: dict[str, int] = {}
    unprunable: dict[str, str] = {}
    visited: set[str] = set()
    hints: dict[str, str] = {}  # root -> a suspect mapping, told when pruning the group breaks the forward
    for name in names:
        if name in visited:
            continue
        mod = n2m[name]
        if mod not in dg.module2node:
            unprunable[name] = ("not reached by a forward pass (its module is never called: unused, or its "
                                "weight used through a functional call, as in torchvision's Swin attention)")
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
        members, consumers, problem = [], [], None
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
            problem = f"its output channels are the model's outputs ({out_layers[0]})"
        if problem is not None:
            for m in prunable_members or [name]:
                unprunable[m] = problem
            continue
        # ``name`` is the first member in registration order: earlier members would have visited it
        root = name
        hint = _partly_mapped(merged, n2m, int(channels))
        if hint is not None:
            hints[root] = hint
        items = tuple(ChannelItem(n, role, tuple(i), tuple(r)) for (n, role), (i, r) in merged.items())
        g = ChannelGroup(root, int(channels), tuple(prunable_members), tuple(c for c in names if c in consumers), items)
        for m in prunable_members:
            group_of[m] = len(groups)
        groups.append(g)

    broken = _breaking_groups(work, x, groups)
    if broken:  # torch-pruning mapped these groups wrongly (seen: a concat before a flatten): hold them
        for g in groups:
            if g.root in broken:
                for m in g.members:
                    why = hints.get(g.root, broken[g.root])
                    unprunable[m] = f"pruning its channels breaks the forward pass ({why})"
        groups = [g for g in groups if g.root not in broken]
        group_of = {m: i for i, g in enumerate(groups) for m in g.members}

    table = ChannelTable(groups=groups, group_of=group_of, unprunable=unprunable,
                         layers=layer_table(work, example_inputs=x), names=names,
                         dense_macs=count_macs(work, example_inputs=x)[0], dense_params=count_params(work),
                         input_shape=tuple(x.shape))
    _fill_cost_model(table, work)
    return table


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
    perm = torch.randperm(group.channels, generator=torch.Generator().manual_seed(0)).tolist()
    removed = set(perm[: group.channels // 2])
    for item in group.items:
        if item.role in ("out", "dw") and item.root_idxs and removed.issuperset(item.root_idxs):
            removed.discard(item.root_idxs[0])
    return sorted(removed)


def _breaking_groups(model: nn.Module, x: torch.Tensor, groups: list[ChannelGroup]) -> dict[str, str]:
    """Roots of the groups whose physical pruning (half of their channels removed, see ``_probe``) breaks
    the forward pass or changes the output's shape, with the error. One copy and one forward when every
    group works; halving the set to find the culprits otherwise."""
    with torch.no_grad():
        y = model.eval()(x)
    shape = tuple(y.shape) if isinstance(y, torch.Tensor) else None

    def error(gs: list[ChannelGroup]) -> str | None:
        work = copy.deepcopy(model).eval()
        try:
            dg = _dependency_graph(work, x)
            for g in gs:
                mod = work.get_submodule(g.root)
                dg.get_pruning_group(mod, dg.get_pruner_of_module(mod).prune_out_channels, _probe(g)).prune()
            with torch.no_grad():
                out = work(x)
        except Exception as e:
            return f"{type(e).__name__}: {str(e).strip().splitlines()[0][:100] if str(e).strip() else ''}"
        if shape is not None and (not isinstance(out, torch.Tensor) or tuple(out.shape) != shape):
            return "the output's shape changes"
        return None

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


def _fill_cost_model(table: ChannelTable, model: nn.Module) -> None:
    """Per parameterised leaf module: how its MACs and parameters scale with kept channels."""
    macs = {li.name: li.macs for li in table.layers}
    mods, out0, in0, unit, mac_in, p_outin, p_out = [], [], [], [], [], [], []
    const = 0
    for name, mod in model.named_modules():
        own = list(mod.parameters(recurse=False))
        if not own:
            continue
        if isinstance(mod, nn.modules.conv._ConvNd) and not getattr(mod, "transposed", False):
            o, i, ng = mod.out_channels, mod.in_channels, mod.groups
            k = int(np.prod(mod.kernel_size))
            dw = ng > 1 and ng == i == o
            if ng > 1 and not dw:  # grouped conv: never pruned (its groups are unprunable)
                const += sum(p.numel() for p in own)
                continue
            mods.append(name)
            out0.append(o)
            in0.append(i)
            mac_in.append(not dw)
            per = o * (1 if dw else i)
            unit.append(macs.get(name, 0) // per if per else 0)
            p_outin.append(0 if dw else k)
            p_out.append((k if dw else 0) + (1 if mod.bias is not None else 0))
        elif isinstance(mod, nn.Linear):
            mods.append(name)
            out0.append(mod.out_features)
            in0.append(mod.in_features)
            mac_in.append(True)
            unit.append(macs.get(name, 0) // (mod.out_features * mod.in_features))
            p_outin.append(1)
            p_out.append(1 if mod.bias is not None else 0)
        else:  # BatchNorm and others: parameters along dim 0
            c = own[0].shape[0] if own[0].ndim else 1
            if not all(p.ndim >= 1 and p.shape[0] == c for p in own):
                const += sum(p.numel() for p in own)
                continue
            mods.append(name)
            out0.append(c)
            in0.append(1)
            mac_in.append(False)
            unit.append(0)
            p_outin.append(0)
            p_out.append(sum(p.numel() for p in own) // c)
    idx = {m: i for i, m in enumerate(mods)}
    m_out = np.zeros((len(mods), len(table.groups)), dtype=np.int64)
    m_in = np.zeros_like(m_out)
    simple = []
    for gi, g in enumerate(table.groups):
        one_to_one = True
        for it in g.items:
            if it.module not in idx:
                continue
            row = idx[it.module]
            n = len(it.idxs)
            if n != g.channels or sorted(it.root_idxs) != list(range(g.channels)):
                one_to_one = False
            target = m_in if it.role == "in" else m_out
            target[row, gi] += 1
        simple.append(one_to_one)
    table._mods = mods
    table._m_out, table._m_in = m_out, m_in
    table._out0, table._in0 = np.array(out0, dtype=np.int64), np.array(in0, dtype=np.int64)
    table._unit_macs = np.array(unit, dtype=np.int64)
    table._mac_in = np.array(mac_in, dtype=bool)
    table._p_outin, table._p_out = np.array(p_outin, dtype=np.int64), np.array(p_out, dtype=np.int64)
    modeled = int((table._p_outin * table._out0 * table._in0).sum() + (table._p_out * table._out0).sum())
    table._p_const = table.dense_params - modeled  # parameters no group touches (incl. grouped convs)
    table._macs_const = table.dense_macs - int(
        (table._unit_macs * table._out0 * np.where(table._mac_in, table._in0, 1)).sum())  # other ops
    table._simple = simple


def _as_table(model_or_table: nn.Module | ChannelTable, example_inputs: torch.Tensor | None = None) -> ChannelTable:
    """A table as given, or the model's table on ``example_inputs`` (a table already carries its shape)."""
    if isinstance(model_or_table, ChannelTable):
        return model_or_table
    return channel_table(model_or_table, example_inputs)


# --------------------------------------------------------------------------------------------
# scoring (the criteria themselves: amc.importance.CHANNEL_CRITERIA)
# --------------------------------------------------------------------------------------------
def accumulate_gradients(model: nn.Module, loader: Iterable[tuple[torch.Tensor, torch.Tensor]],
                         batches: int = 4) -> None:
    """Sum cross-entropy gradients over ``batches`` batches into ``.grad`` (BN in eval mode)."""
    was = model.training
    model.eval()
    model.zero_grad(set_to_none=True)
    dev = next(model.parameters()).device
    loss_fn = nn.CrossEntropyLoss()
    with torch.enable_grad():
        for i, (x, y) in enumerate(loader):
            if i >= batches:
                break
            loss_fn(model(x.to(dev)).float(), y.to(dev)).backward()
    model.train(was)


def needs_data(criterion: str) -> bool:
    """Whether a criterion scores from a few batches of images (gradients or activations)."""
    crit = CHANNEL_CRITERIA.get(criterion)
    return crit is not None and channel_needs_data(crit)


def channel_scores(model: nn.Module, criterion: str = "l2", table: ChannelTable | None = None,
                   loader: Iterable[tuple[torch.Tensor, torch.Tensor]] | None = None,
                   batches: int = 4, example_inputs: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """Per-channel importance of every group, keyed by root (higher = more important): the
    :data:`amc.importance.CHANNEL_CRITERIA` entry ``criterion``, run as its protocol says (a data
    criterion is prepared and scored on a deep copy, from the first ``batches`` of ``loader``)."""
    crit = CHANNEL_CRITERIA.get_or_raise(criterion)  # PolicyError "unknown criterion ..."
    table = table or channel_table(model, example_inputs)
    src = model
    if channel_needs_data(crit):
        if loader is None:
            what = "gradients" if getattr(crit, "needs_grad", False) else "data"
            raise PolicyError(f"criterion {criterion!r} needs {what}: pass a loader")
        data = list(itertools.islice(loader, batches))
        src = copy.deepcopy(model)
        if getattr(crit, "needs_grad", False):
            accumulate_gradients(src, data, len(data))
        prepare = getattr(crit, "prepare", None)
        if prepare is not None:
            prepare(src, data)
    return {g.root: crit(src, g) for g in table.groups}


# --------------------------------------------------------------------------------------------
# policies and plans
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ChannelPlan:
    """Which output channels each pruned group root keeps; replayable on a fresh dense model."""

    keep: dict[str, list[int]]  # root layer -> sorted kept output-channel indices
    notes: list[str] = field(default_factory=list)  # layers left alone and why
    channels: dict[str, int] = field(default_factory=dict)  # root layer -> original channels
    criterion: str = ""
    round_to: int = 1

    def counts(self) -> Counts:
        return {k: len(v) for k, v in self.keep.items()}

    def to_dict(self) -> dict[str, Any]:
        return {"format": "amc-channel-plan/1", "criterion": self.criterion, "round_to": self.round_to,
                "channels": dict(self.channels), "keep": {k: list(v) for k, v in self.keep.items()},
                "notes": list(self.notes)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ChannelPlan:
        try:
            keep = {str(k): sorted(int(i) for i in v) for k, v in d["keep"].items()}
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise PolicyError(f"not a channel plan: {e}") from None
        return cls(keep, list(d.get("notes", [])), {str(k): int(v) for k, v in d.get("channels", {}).items()},
                   str(d.get("criterion", "")), int(d.get("round_to", 1)))

    def save(self, path: str | os.PathLike) -> None:
        from amc.io import atomic_write_text

        atomic_write_text(path, json.dumps(self.to_dict(), indent=1) + "\n")

    @classmethod
    def load(cls, path: str | os.PathLike) -> ChannelPlan:
        try:
            return cls.from_dict(json.loads(Path(path).read_text()))
        except json.JSONDecodeError as e:
            raise PolicyError(f"{path} is not JSON: {e}") from None


def validate_channel_policy(table: ChannelTable, policy: Mapping[str, float]) -> Policy:
    """Names must be conv/linear layers of the model, ratios numbers in [0, 1) (``check_policy``)."""
    return check_policy(policy, list(table.names), meaning="it is the fraction of output channels to remove")


def group_ratios(table: ChannelTable, policy: Mapping[str, float]) -> tuple[dict[str, float], list[str]]:
    """Policy (any member names) -> ratio per group root (the largest named wins), and notes."""
    policy = validate_channel_policy(table, policy)
    ratios: dict[str, float] = {}
    notes: list[str] = []
    for name, r in policy.items():
        if name not in table.group_of:
            why = table.unprunable.get(name, "its output channels are not prunable")
            notes.append(f"{name}: left alone ({why})")
            continue
        root = table.groups[table.group_of[name]].root
        ratios[root] = max(ratios.get(root, 0.0), r)
    return ratios, notes


def policy_counts(model_or_table: nn.Module | ChannelTable, policy: Mapping[str, float],
                  round_to: int = 8, example_inputs: torch.Tensor | None = None) -> Counts:
    """Output channels kept per group root for ``policy`` (no scoring: counts only)."""
    table = _as_table(model_or_table, example_inputs)
    ratios, _ = group_ratios(table, policy)
    counts: Counts = {}
    for root, r in ratios.items():
        c = table.group(root).channels
        k = round_channels(c * (1.0 - r), c, round_to)
        if k < c:
            counts[root] = k
    return counts


def plan_from_counts(model: nn.Module, counts: Mapping[str, int], criterion: str = "l2",
                     scores: Mapping[str, torch.Tensor] | None = None, table: ChannelTable | None = None,
                     loader: Iterable[tuple[torch.Tensor, torch.Tensor]] | None = None,
                     notes: list[str] | None = None, round_to: int = 1,
                     example_inputs: torch.Tensor | None = None) -> ChannelPlan:
    """Keep the ``counts[root]`` highest-scoring channels of each group."""
    table = table or channel_table(model, example_inputs)
    if scores is None:
        scores = channel_scores(model, criterion, table, loader)
    keep, chans = {}, {}
    for root, k in counts.items():
        g = table.group(root)
        if not 1 <= k <= g.channels:
            raise PolicyError(f"{root}: cannot keep {k} of {g.channels} channels")
        if k == g.channels:
            continue
        s = scores[root]
        top = torch.topk(s, k, largest=True, sorted=False).indices  # ties: torch picks deterministically
        keep[root] = sorted(int(i) for i in top)
        chans[root] = g.channels
    return ChannelPlan(keep, list(notes or []), chans, criterion, round_to)


def plan_channels(model: nn.Module, policy: Mapping[str, float], criterion: str = "l2", round_to: int = 8,
                  example_inputs: torch.Tensor | None = None,
                  loader: Iterable[tuple[torch.Tensor, torch.Tensor]] | None = None) -> ChannelPlan:
    """Turn ``{layer: fraction of output channels to remove}`` into kept channel indices.

    Unknown layer names or ratios outside [0, 1) raise ``PolicyError``. Layers sharing a group
    take the largest ratio named for the group. ``loader`` gives gradients for ``taylor``.
    """
    table = channel_table(model, example_inputs)
    _, notes = group_ratios(table, policy)
    counts = policy_counts(table, policy, round_to)
    return plan_from_counts(model, counts, criterion, table=table, loader=loader, notes=notes,
                            round_to=round_to)


def uniform_policy(model_or_table: nn.Module | ChannelTable, ratio: float,
                   example_inputs: torch.Tensor | None = None) -> Policy:
    """The same ratio for every layer whose output channels can be removed."""
    table = _as_table(model_or_table, example_inputs)
    return validate_channel_policy(table, dict.fromkeys(table.prunable_layers(), ratio))


def plan_cost(model_or_table: nn.Module | ChannelTable, plan: ChannelPlan | Mapping[str, int],
              example_inputs: torch.Tensor | None = None) -> dict[str, int]:
    """MACs (one input of the table's shape) and parameter count of the pruned model, analytically:
    no tracing, no forward pass. ``plan`` may be a ChannelPlan or ``{root: kept channels}``."""
    table = _as_table(model_or_table, example_inputs)
    counts = plan.counts() if isinstance(plan, ChannelPlan) else dict(plan)
    return table.cost_of_counts(counts)


def policy_cost(model_or_table: nn.Module | ChannelTable, policy: Mapping[str, float],
                round_to: int = 8, example_inputs: torch.Tensor | None = None) -> dict[str, int]:
    """``plan_cost`` of a policy without scoring channels (the counts decide the cost)."""
    table = _as_table(model_or_table, example_inputs)
    return table.cost_of_counts(policy_counts(table, policy, round_to))


def find_uniform_ratio(model_or_table: nn.Module | ChannelTable, macs_fraction: float, round_to: int = 8,
                       max_ratio: float = 0.95, tol: float = 1e-4,
                       example_inputs: torch.Tensor | None = None) -> float:
    """The smallest uniform ratio (to ``tol``) whose pruned MACs are <= ``macs_fraction`` of dense."""
    table = _as_table(model_or_table, example_inputs)
    if not 0.0 < macs_fraction:
        raise BudgetError(f"MACs fraction must be > 0, got {macs_fraction}")
    target = macs_fraction * table.dense_macs

    def macs(r: float) -> int:
        return policy_cost(table, uniform_policy(table, r), round_to)["macs"]

    if macs(0.0) <= target:
        return 0.0
    hi = max_ratio
    if macs(hi) > target:
        raise BudgetError(f"uniform channel pruning cannot reach {macs_fraction:.1%} of dense MACs "
                          f"(at ratio {hi} it keeps {macs(hi) / table.dense_macs:.1%})")
    return smallest_ratio(lambda r: macs(r) <= target, hi, tol)


def smallest_ratio(fits: Callable[[float], bool], hi: float, tol: float) -> float:
    """Bisection on [0, hi] for the smallest ratio that ``fits`` (a cost falling as the ratio rises),
    to within ``tol``; ``hi`` itself when nothing smaller is found."""
    lo = 0.0
    while hi - lo > tol:
        mid = (lo + hi) / 2
        if fits(mid):
            hi = mid
        else:
            lo = mid
    return hi


# --------------------------------------------------------------------------------------------
# emulation (masks) and physical pruning
# --------------------------------------------------------------------------------------------
def _removed_positions(group: ChannelGroup, kept: Iterable[int]) -> list[tuple[ChannelItem, list[int]]]:
    keep = set(kept)
    return [(it, [i for i, r in zip(it.idxs, it.root_idxs, strict=True) if r not in keep]) for it in group.items]


@torch.no_grad()
def apply_channel_masks(model: nn.Module, plan: ChannelPlan, table: ChannelTable | None = None,
                        example_inputs: torch.Tensor | None = None) -> None:
    """Zero, IN PLACE, every parameter slice of the removed channels (filters and biases, BN
    scale and shift, the next layers' input slices). The model then computes exactly what the
    physically pruned model computes. The groups come from the cached table: no re-tracing."""
    table = table or channel_table(model, example_inputs)
    for root, kept in plan.keep.items():
        g = table.group(root)
        if g.root != root:
            raise PolicyError(f"{root} is not a channel-group root (its group's root is {g.root})")
        for item, idxs in _removed_positions(g, kept):
            if not idxs:
                continue
            mod = model.get_submodule(item.module)
            dev = next(iter(mod.parameters(recurse=False)), None)
            idx = torch.tensor(idxs, dtype=torch.long, device=dev.device if dev is not None else "cpu")
            if item.role == "in":
                w: torch.Tensor = mod.weight  # type: ignore[assignment]
                w.index_fill_(1, idx, 0.0)
            else:
                for p in mod.parameters(recurse=False):
                    if p.ndim >= 1:
                        p.index_fill_(0, idx, 0.0)


def channel_masks(model: nn.Module, plan: ChannelPlan, table: ChannelTable | None = None,
                  example_inputs: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """Weight masks ``{layer name: float mask}`` (filters, input slices, BN scales) for
    ``amc.train.finetune(..., masks=...)``: keeping these at zero keeps the model equivalent to
    the physically pruned one (every consumer of a removed channel sees a zero weight)."""
    table = table or channel_table(model, example_inputs)
    masks: dict[str, torch.Tensor] = {}
    for root, kept in plan.keep.items():
        for item, idxs in _removed_positions(table.group(root), kept):
            if not idxs:
                continue
            w = getattr(model.get_submodule(item.module), "weight", None)
            if w is None:
                continue
            m = masks.setdefault(item.module, torch.ones_like(w))
            idx = torch.tensor(idxs, dtype=torch.long, device=w.device)
            m.index_fill_(1 if item.role == "in" else 0, idx, 0.0)
    return masks


def prune_channels(model: nn.Module, plan: ChannelPlan, example_inputs: torch.Tensor | None = None) -> nn.Module:
    """A deep copy of ``model`` with the plan's removed channels physically gone (torch-pruning
    DependencyGraph). The input model is not modified."""
    x = _example(model, example_inputs)
    table = channel_table(model, x)
    work = copy.deepcopy(model)
    was = work.training
    work.eval()
    with _tolerant_reshapes():
        dg = _dependency_graph(work, x)
        for root, kept in plan.keep.items():
            g = table.group(root)
            mod = work.get_submodule(root)
            removed = sorted(set(range(g.channels)) - set(kept))
            if not removed:
                continue
            if len(removed) >= g.channels:
                raise PolicyError(f"{root}: the plan removes every channel")
            pruner = dg.get_pruner_of_module(mod)
            dg.get_pruning_group(mod, pruner.prune_out_channels, removed).prune()
    check_forward(work, x)
    work.train(was)
    return work


def check_forward(model: nn.Module, x: torch.Tensor) -> None:
    """One forward of a pruned ``model`` on ``x`` (no grad); a failure is one ``PolicyError`` that names
    the innermost module that raised (read from forward pre-hooks), not a bare shape error."""
    n2m = {id(m): n for n, m in model.named_modules()}
    stack: list[nn.Module] = []

    def enter(mod: nn.Module, args: Any) -> None:
        stack.append(mod)

    def leave(mod: nn.Module, args: Any, out: Any) -> None:
        stack.pop()

    handles = [h for m in model.modules() for h in (m.register_forward_pre_hook(enter), m.register_forward_hook(leave))]
    try:
        with torch.no_grad():
            model(x)
    except Exception as e:
        where = n2m.get(id(stack[-1]), "") if stack else ""
        msg = str(e).strip().splitlines()[0][:200] if str(e).strip() else ""
        raise PolicyError(f"the channel-pruned model fails in {where or 'its top-level forward'} "
                          f"({type(e).__name__}: {msg})") from e
    finally:
        for h in handles:
            h.remove()

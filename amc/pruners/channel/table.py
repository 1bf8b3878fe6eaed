"""What is coupled, as data: the channel groups of one architecture by dotted name, and what they cost.

A :class:`ChannelTable` is built once per architecture by :func:`amc.pruners.channel.graph.channel_table`
(which traces the model with torch-pruning and calls :meth:`ChannelTable.measure`); it holds names,
never modules, so it serves every copy of the model. Lifecycle::

    table = ChannelTable.measure(model, x, groups, group_of, unprunable, names)   # by the tracer
    table.group(layer)                       # the ChannelGroup whose output channels ``layer`` makes
    table.cost_of_counts({root: kept})       # MACs and params, analytic: microseconds, no forward
    table.layer_channels({root: kept})       # (in, out) channels of every prunable layer

The cost model (``_fill_cost_model``) is one row per parameterised leaf module: its channels, and
how its MACs and parameters scale with the kept output and input channels; a policy's cost is then
two matrix products over the groups' removed channels, each entry the module's indices per root channel
of the group (1 for a one-to-one group; 2 where a reshape maps each root channel onto two indices). It is
exact for one-to-one groups (every model in the zoo) and proportional where a group maps onto a module
through a reshape; a module fed by a concatenation of several groups loses each group's own channels.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
from torch import nn

from amc.errors import PolicyError
from amc.layers import ExampleInputs, LayerInfo, count_macs, count_params, input_shapes, layer_table

Counts = dict[str, int]  # group root -> output channels kept


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
    # the root's channels fall in ``parts`` equal contiguous parts, each of which must keep as many: the
    # groups of a GroupNorm (RetinaNet v2's and FCOS's heads), which torch-pruning leaves at their number
    parts: int = 1

    def kept_count(self, k: int) -> int:
        """``k`` kept channels made a multiple of ``parts`` (rounded up, at most ``channels``)."""
        return min(-(-int(k) // self.parts) * self.parts, self.channels) if self.parts > 1 else int(k)


@dataclass
class ChannelTable:
    """The coupled groups of one architecture plus what ``plan_cost`` needs, precomputed.

    Built once per architecture (:func:`amc.pruners.channel.graph.channel_table` caches it); holds
    names, never modules, so it serves every copy of the model.
    """

    groups: list[ChannelGroup]
    group_of: dict[str, int]  # member layer name -> index into groups
    unprunable: dict[str, str]  # layer name -> why its output channels stay
    layers: list[LayerInfo]
    names: list[str]  # all prunable (conv/linear) layer names, registration order
    dense_macs: int
    dense_params: int
    input_shape: tuple  # the example input's shape; a tuple of shapes for several inputs
    # cost model: one row per parameterised leaf module
    _mods: list[str] = field(default_factory=list, repr=False)
    # (M x G) indices of module m lost per removed root channel of group g
    _m_out: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), np.float64), repr=False)
    _m_in: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), np.float64), repr=False)
    _out0: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64), repr=False)
    _in0: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64), repr=False)
    _unit_macs: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64), repr=False)
    _mac_in: np.ndarray = field(default_factory=lambda: np.zeros(0, bool), repr=False)  # MACs scale with in
    _p_outin: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64), repr=False)  # params ~ out*in
    _p_out: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64), repr=False)  # params ~ out
    _p_const: int = 0
    _macs_const: int = 0

    @classmethod
    def measure(cls, model: nn.Module, x: ExampleInputs, groups: list[ChannelGroup], group_of: dict[str, int],
                unprunable: dict[str, str], names: list[str]) -> ChannelTable:
        """The table of traced ``groups``, with the layer table, dense MACs and parameters of ``model``
        measured on ``x`` and the analytic cost model filled in."""
        table = cls(groups=groups, group_of=group_of, unprunable=unprunable,
                    layers=layer_table(model, example_inputs=x), names=names,
                    dense_macs=count_macs(model, example_inputs=x)[0], dense_params=count_params(model),
                    input_shape=input_shapes(x))
        _fill_cost_model(table, model)
        return table

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
        return {n: (round(float(in_k[idx[n]])), round(float(out_k[idx[n]]))) for n in self.names if n in idx}

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

        Exact for one-to-one groups (every model in the zoo); proportional where a group maps
        several indices of a module onto each root channel (a reshape).
        """
        out_k, in_k = self._kept(self._removed(counts))
        macs = (self._unit_macs * out_k * np.where(self._mac_in, in_k, 1)).sum() + self._macs_const
        params = (self._p_outin * out_k * in_k).sum() + (self._p_out * out_k).sum() + self._p_const
        return {"macs": round(float(macs)), "params": round(float(params))}


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
    m_out = np.zeros((len(mods), len(table.groups)), dtype=np.float64)
    m_in = np.zeros_like(m_out)
    for gi, g in enumerate(table.groups):
        for it in g.items:
            if it.module in idx and g.channels:
                # a module fed by a concatenation of several groups loses each group's own channels only
                target = m_in if it.role == "in" else m_out
                target[idx[it.module], gi] += len(it.idxs) / g.channels
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

"""The prunability check: what each layer is, what it costs, and whether its output channels can go.

::

    report = inspect_model(model, torch.randn(1, 3, 224, 224))
    report.held()        # {layer: reason} for the layers whose output channels stay
    report.prunable()    # layers whose output channels can be removed (with their coupled group)

Built on the layer table (``amc.layers.layer_table``: kind, shapes, params, MACs) and the coupled
channel groups (``amc.pruners.channel.channel_table``: torch-pruning's DependencyGraph). A model that fails
on ``example_inputs``, or that has nothing to prune, is one ``AmcError``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from amc.errors import AmcError
from amc.layers import ExampleInputs, call_model, count_params, input_shapes, layer_table, map_inputs
from amc.pruners.channel import ChannelTable, TraceLimits, channel_table


@dataclass(frozen=True)
class LayerCheck:
    """One conv / linear layer: what it is, what it costs, and whether its output channels can go."""

    name: str
    kind: str  # conv, dwconv (depthwise / grouped), linear
    in_channels: int
    out_channels: int
    in_hw: tuple[int, int]
    out_hw: tuple[int, int]
    params: int
    macs: int
    prunable: bool  # its output channels can be removed (with its group)
    group: str  # the root of its channel group ("" when held)
    reason: str  # why it is held, or how it is coupled ("" for a layer pruned alone)


@dataclass(frozen=True)
class Prunability:
    """The check's answer for one model on one input shape."""

    input_shape: tuple  # the example input's shape; a tuple of shapes for several inputs
    dense_macs: int
    dense_params: int
    groups: int  # coupled channel groups that can be pruned
    layers: tuple[LayerCheck, ...]

    def prunable(self) -> list[str]:
        return [la.name for la in self.layers if la.prunable]

    def held(self) -> dict[str, str]:
        return {la.name: la.reason for la in self.layers if not la.prunable}

    @property
    def prunable_macs_share(self) -> float:
        """Share of the model's MACs spent in layers whose output channels can be removed."""
        return sum(la.macs for la in self.layers if la.prunable) / self.dense_macs if self.dense_macs else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"input_shape": list(self.input_shape), "dense_macs": self.dense_macs,
                "dense_params": self.dense_params, "groups": self.groups,
                "prunable_macs_share": self.prunable_macs_share, "layers": [asdict(la) for la in self.layers]}


def _held_reason(raw: str) -> str:
    """The channel table's reason in the check's vocabulary (the detail kept after a colon)."""
    if "leaves the autograd graph" in raw:
        return f"detached end ({raw})"
    if "model's outputs" in raw:
        return f"output layer ({raw})"
    if raw.startswith("attention heads"):
        return raw
    if "unwrapped nn.Parameter" in raw:
        return "coupled with a bare nn.Parameter (layer scale, class token, position embedding)"
    if "grouped or transposed" in raw:
        return f"grouped or transposed convolution: {raw}"
    if "GroupNorm" in raw:
        return f"group normalisation: {raw}"
    if "channel shuffle" in raw:
        return f"channel shuffle: {raw}"
    if "not reached" in raw:
        return ("not traceable: not reached by a forward pass on the example inputs (never called, or its "
                "weight used through a functional call)")
    return raw


def _coupling(table: ChannelTable, name: str, kind: str) -> str:
    g = table.group(name)
    others = [m for m in g.members if m != name]
    if kind == "dwconv":
        return f"depthwise (pruned with its producer's group {g.root})"
    if not others:
        return ""
    shown = ", ".join(others[:3]) + (f" (+{len(others) - 3} more)" if len(others) > 3 else "")
    return f"coupled group with {shown}"


def inspect_model(model: nn.Module, example_inputs: ExampleInputs, limits: TraceLimits | None = None) -> Prunability:
    """Per conv / linear layer (dotted name): kind, shapes, params, MACs, prunable or held and why.

    ``example_inputs``: a tensor, a tuple of positional inputs or a dict of keyword inputs; ``limits``
    bound the tracing (step budget, seconds, progress callback)."""
    was = model.training
    model.eval()
    try:
        try:
            with torch.no_grad():
                call_model(model, map_inputs(example_inputs, torch.clone))
        except AmcError:
            raise
        except Exception as e:
            raise AmcError(f"{type(model).__name__} fails on example inputs of shape "
                           f"{input_shapes(example_inputs)}: {type(e).__name__}: {str(e).strip()[:200]}") from None
        try:
            table = channel_table(model, example_inputs, limits)
        except AmcError:
            raise
        except Exception as e:
            raise AmcError(f"{type(model).__name__} is not traceable by torch-pruning's DependencyGraph: "
                           f"{type(e).__name__}: {str(e).strip()[:200]}") from None
        infos = layer_table(model, example_inputs=example_inputs)
    finally:
        model.train(was)
    rows = []
    for li in infos:
        prunable = li.name in table.group_of
        if prunable:
            reason, group = _coupling(table, li.name, li.kind), table.group(li.name).root
        else:
            reason = _held_reason(table.unprunable.get(li.name, "its output channels are not prunable"))
            group = ""
        rows.append(LayerCheck(li.name, li.kind, li.in_channels, li.out_channels, li.in_hw, li.out_hw, li.params,
                               li.macs, prunable, group, reason))
    if not rows:
        raise AmcError(f"{type(model).__name__} has no conv or linear layer: nothing to prune")
    if not any(r.prunable for r in rows):
        why = "; ".join(f"{r.name}: {r.reason}" for r in rows[:3])
        raise AmcError(f"{type(model).__name__} has no layer whose output channels can be pruned ({why})")
    return Prunability(input_shapes(example_inputs), table.dense_macs, count_params(model), len(table.groups),
                       tuple(rows))

"""Applying a plan: emulate it with zeros (for a search) or remove the channels physically.

Lifecycle::

    apply_channel_masks(copy_of_model, plan, table)   # zero every slice of the removed channels, in place
    masks = channel_masks(model, plan, table)         # weight masks that keep them zero while finetuning
    small = prune_channels(model, plan, x)            # a physically smaller deep copy (torch-pruning)
    check_forward(small, x, shapes)                   # one forward; every output keeps its shape

``x`` is the model's example inputs: a tensor, a tuple of positional inputs or a dict of keyword inputs.

The masked model computes exactly what the physically pruned one computes (but for a group normalised by
a GroupNorm, ``ChannelGroup.parts``: a zeroed channel still counts in its group's statistics); the groups
come from the cached table, so neither emulation re-traces the model.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from amc.errors import PolicyError
from amc.layers import ExampleInputs, call_model, map_inputs, output_shapes, shape_change, stable_output_shapes
from amc.pruners.channel.graph import channel_table, example_input, prune_groups
from amc.pruners.channel.limits import TraceLimits
from amc.pruners.channel.plan import ChannelPlan
from amc.pruners.channel.table import ChannelGroup, ChannelItem, ChannelTable


def removed_positions(group: ChannelGroup, kept: Iterable[int]) -> list[tuple[ChannelItem, list[int]]]:
    """Each item of ``group`` with its own channel indices that go when only ``kept`` root channels stay."""
    keep = set(kept)
    return [(it, [i for i, r in zip(it.idxs, it.root_idxs, strict=True) if r not in keep]) for it in group.items]


@torch.no_grad()
def apply_channel_masks(model: nn.Module, plan: ChannelPlan, table: ChannelTable | None = None,
                        example_inputs: ExampleInputs | None = None) -> None:
    """Zero, IN PLACE, every parameter slice of the removed channels (filters and biases, BN
    scale and shift, the next layers' input slices). The model then computes exactly what the
    physically pruned model computes. The groups come from the cached table: no re-tracing."""
    table = table or channel_table(model, example_inputs)
    for root, kept in plan.keep.items():
        g = table.group(root)
        if g.root != root:
            raise PolicyError(f"{root} is not a channel-group root (its group's root is {g.root})")
        for item, idxs in removed_positions(g, kept):
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
                  example_inputs: ExampleInputs | None = None) -> dict[str, torch.Tensor]:
    """Weight masks ``{layer name: float mask}`` (filters, input slices, BN scales) for
    ``amc.train.finetune(..., masks=...)``: keeping these at zero keeps the model equivalent to
    the physically pruned one (every consumer of a removed channel sees a zero weight)."""
    table = table or channel_table(model, example_inputs)
    masks: dict[str, torch.Tensor] = {}
    for root, kept in plan.keep.items():
        for item, idxs in removed_positions(table.group(root), kept):
            if not idxs:
                continue
            w = getattr(model.get_submodule(item.module), "weight", None)
            if w is None:
                continue
            m = masks.setdefault(item.module, torch.ones_like(w))
            idx = torch.tensor(idxs, dtype=torch.long, device=w.device)
            m.index_fill_(1 if item.role == "in" else 0, idx, 0.0)
    return masks


def prune_channels(model: nn.Module, plan: ChannelPlan, example_inputs: ExampleInputs | None = None,
                   limits: TraceLimits | None = None) -> nn.Module:
    """A deep copy of ``model`` with the plan's removed channels physically gone (torch-pruning
    DependencyGraph), checked to return outputs of the same shapes. The input model is not modified."""
    x = example_input(model, example_inputs)
    table = channel_table(model, x, limits)
    removed: dict[str, list[int]] = {}
    for root, kept in plan.keep.items():
        g = table.group(root)
        gone = sorted(set(range(g.channels)) - set(kept))
        if not gone:
            continue
        if len(gone) >= g.channels:
            raise PolicyError(f"{root}: the plan removes every channel")
        removed[root] = gone
    work = copy.deepcopy(model)
    was = work.training
    work.eval()
    want = stable_output_shapes(work, x)
    prune_groups(work, x, removed, limits)
    check_forward(work, x, want)
    work.train(was)
    return work


def check_forward(model: nn.Module, x: ExampleInputs, shapes: list[tuple[int, ...]] | None = None) -> None:
    """One forward of a pruned ``model`` on ``x`` (no grad); a failure is one ``PolicyError`` that names
    the innermost module that raised (read from forward pre-hooks), not a bare shape error. With
    ``shapes`` (the dense model's ``amc.layers.output_shapes``, or ``stable_output_shapes``, whose -1 is any
    size), every tensor it returns, in any nesting, must keep its shape."""
    n2m = {id(m): n for n, m in model.named_modules()}
    stack: list[nn.Module] = []

    def enter(mod: nn.Module, args: Any) -> None:
        stack.append(mod)

    def leave(mod: nn.Module, args: Any, out: Any) -> None:
        stack.pop()

    handles = [h for m in model.modules() for h in (m.register_forward_pre_hook(enter), m.register_forward_hook(leave))]
    try:
        with torch.no_grad():
            out = call_model(model, map_inputs(x, torch.clone))
    except Exception as e:
        where = n2m.get(id(stack[-1]), "") if stack else ""
        msg = str(e).strip().splitlines()[0][:200] if str(e).strip() else ""
        raise PolicyError(f"the channel-pruned model fails in {where or 'its top-level forward'} "
                          f"({type(e).__name__}: {msg})") from e
    finally:
        for h in handles:
            h.remove()
    change = shape_change(shapes, output_shapes(out))
    if change is not None:
        raise PolicyError(f"the channel-pruned model fails the output check: {change} (a layer feeding it "
                          f"should have been held)")

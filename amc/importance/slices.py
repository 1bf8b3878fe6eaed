"""Channel scores from the weights of each coupled slice: the building block of the channel criteria.

A channel group's items are the layers (and their roles: ``out``/``dw`` filters, ``in`` input
slices, ``bn`` scales, ``other`` parameters) that keep or lose a channel together;
``group_score`` is the mean over the chosen roles' items of each root channel's slice score.
Used by every criterion of :mod:`amc.importance.channels`. The group types below are protocols of
what the criteria read from ``amc.pruners.channel.table``'s dataclasses, so that this package needs
nothing from ``amc.pruners``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, Protocol

import torch
from torch import nn


class ChannelItem(Protocol):  # what amc.pruners.channel.table.ChannelItem offers the scores
    @property
    def module(self) -> str: ...
    @property
    def role(self) -> str: ...
    @property
    def idxs(self) -> Sequence[int]: ...
    @property
    def root_idxs(self) -> Sequence[int]: ...


class ChannelGroup(Protocol):  # amc.pruners.channel.table.ChannelGroup, as far as the scores read it
    @property
    def channels(self) -> int: ...
    @property
    def items(self) -> Sequence[ChannelItem]: ...


def slice_scores(mod: nn.Module, item: ChannelItem, p: float, use_grad: bool = False) -> torch.Tensor | None:
    """Sum of |w|^p (or |w * dL/dw| with ``use_grad``) over each indexed channel's slice."""
    idx = torch.tensor(item.idxs, dtype=torch.long)

    def term(t: Any) -> torch.Tensor | None:
        if use_grad:
            if t.grad is None:
                return None
            return (t.detach() * t.grad.detach()).abs().float()
        return t.detach().abs().float().pow(p)

    params: list[tuple[Any, int]] = []
    if item.role in ("out", "dw"):
        params = [(mod.weight, 0)] + ([(mod.bias, 0)] if use_grad and getattr(mod, "bias", None) is not None else [])
    elif item.role == "in":
        params = [(mod.weight, 1)]
    elif item.role == "bn":
        if getattr(mod, "weight", None) is None:
            return None
        params = [(mod.weight, 0)] + ([(mod.bias, 0)] if use_grad and mod.bias is not None else [])
    else:
        params = [(q, 0) for q in mod.parameters(recurse=False)]
    total = None
    for t, dim in params:
        v = term(t)
        if v is None:
            continue
        v = v.index_select(dim, idx.to(v.device)).transpose(0, dim).reshape(len(idx), -1).sum(1)
        total = v if total is None else total + v
    return None if total is None else total.double().cpu()


def group_score(model: nn.Module, group: ChannelGroup, roles: Iterable[str], p: float,
                 use_grad: bool = False) -> torch.Tensor | None:
    """Mean over the group's items (of the given roles) of each root channel's slice score."""
    roles = set(roles)
    total = torch.zeros(group.channels, dtype=torch.float64)
    count = torch.zeros(group.channels, dtype=torch.float64)
    for item in group.items:
        if item.role not in roles:
            continue
        s = slice_scores(model.get_submodule(item.module), item, p, use_grad)
        if s is None:
            continue
        r = torch.tensor(item.root_idxs, dtype=torch.long)
        total.index_add_(0, r, s)
        count.index_add_(0, r, torch.ones_like(s))
    if not bool((count > 0).any()):
        return None
    return total / count.clamp(min=1)

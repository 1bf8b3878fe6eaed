"""How much and where: a policy ``{layer: fraction of output channels to remove}`` -> a :class:`ChannelPlan`.

Lifecycle::

    policy = uniform_policy(table, 0.3)                 # or any {layer name: ratio}
    ratios, notes = group_ratios(table, policy)         # per group root: the LARGEST named ratio wins
    counts = policy_counts(table, policy, round_to=8)   # kept channels per root, rounded (no scoring)
    plan = plan_from_counts(model, counts, "l2")        # the top-scoring channels of each group
    plan = plan_channels(model, policy, "l2", 8)        # the three steps above in one call
    plan.save(path); ChannelPlan.load(path)             # replayable on a fresh dense model

When several layers named in a policy share one group (the convs that feed a residual add), the
**largest** of their ratios wins: it is the only choice that keeps every named layer at least as
pruned as asked, so a MACs budget computed per layer is never exceeded by the group. Layers whose
output channels cannot be removed are left alone and named in ``ChannelPlan.notes``.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from amc.errors import PolicyError
from amc.layers import ExampleInputs
from amc.policy import Policy, check_policy
from amc.pruners.channel.graph import as_table, channel_table
from amc.pruners.channel.scores import channel_scores
from amc.pruners.channel.table import ChannelTable, Counts


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
                  round_to: int = 8, example_inputs: ExampleInputs | None = None) -> Counts:
    """Output channels kept per group root for ``policy`` (no scoring: counts only)."""
    table = as_table(model_or_table, example_inputs)
    ratios, _ = group_ratios(table, policy)
    counts: Counts = {}
    for root, r in ratios.items():
        g = table.group(root)
        k = g.kept_count(round_channels(g.channels * (1.0 - r), g.channels, round_to))
        if k < g.channels:
            counts[root] = k
    return counts


def plan_from_counts(model: nn.Module, counts: Mapping[str, int], criterion: str = "l2",
                     scores: Mapping[str, torch.Tensor] | None = None, table: ChannelTable | None = None,
                     loader: Iterable[tuple[torch.Tensor, torch.Tensor]] | None = None,
                     notes: list[str] | None = None, round_to: int = 1,
                     example_inputs: ExampleInputs | None = None) -> ChannelPlan:
    """Keep the ``counts[root]`` highest-scoring channels of each group; in a group of equal parts
    (``ChannelGroup.parts``: a GroupNorm's groups), the count rounded up to a multiple
    of the parts and the highest-scoring of each part."""
    table = table or channel_table(model, example_inputs)
    if scores is None:
        scores = channel_scores(model, criterion, table, loader)
    keep, chans = {}, {}
    for root, k in counts.items():
        g = table.group(root)
        if not 1 <= k <= g.channels:
            raise PolicyError(f"{root}: cannot keep {k} of {g.channels} channels")
        k = g.kept_count(k)
        if k == g.channels:
            continue
        s = scores[root]
        if g.parts > 1:
            size, each = g.channels // g.parts, k // g.parts
            top = torch.cat([p * size + torch.topk(s[p * size:(p + 1) * size], each, sorted=False).indices
                             for p in range(g.parts)])
        else:
            top = torch.topk(s, k, largest=True, sorted=False).indices  # ties: torch picks deterministically
        keep[root] = sorted(int(i) for i in top)
        chans[root] = g.channels
    return ChannelPlan(keep, list(notes or []), chans, criterion, round_to)


def plan_channels(model: nn.Module, policy: Mapping[str, float], criterion: str = "l2", round_to: int = 8,
                  example_inputs: ExampleInputs | None = None,
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
                   example_inputs: ExampleInputs | None = None) -> Policy:
    """The same ratio for every layer whose output channels can be removed."""
    table = as_table(model_or_table, example_inputs)
    return validate_channel_policy(table, dict.fromkeys(table.prunable_layers(), ratio))

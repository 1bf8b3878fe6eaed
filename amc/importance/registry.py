"""The criterion protocol and its two registries: the one place a criterion's name is listed.

A criterion says *how to score* (the second of the three nouns of pruning, after *what is coupled*
and before *how much and where*), in the form of Torch-Pruning's ``Importance``: an object, called,
returning scores where higher means keep, that declares what it needs before it can score.

* :class:`ChannelCriterion` — ``criterion(model, group) -> one score per channel of the group``
  (``group``: :class:`amc.importance.slices.ChannelGroup`, the coupled items of one channel group).
  Registered in :data:`CHANNEL_CRITERIA`; ``amc.pruners.channel.channel_scores`` looks it up there.
* :class:`WeightCriterion` — ``criterion(model, names, loader, batches) -> {layer: one score per
  weight}``, scored across all the layers at once (fine-grained pruning takes one global threshold).
  Registered in :data:`WEIGHT_CRITERIA`; ``amc.importance.weights.weight_scores`` looks it up there.

Lifecycle of a channel criterion, as the channel pruner runs it::

    crit = CHANNEL_CRITERIA.get_or_raise(name)     # PolicyError "unknown criterion ..."
    if crit.needs_data:                            # else: scored on the caller's model, untouched
        work = copy.deepcopy(model)                # the caller's model keeps its weights and .grad
        if crit.needs_grad:                        # cross-entropy gradients summed into .grad
            accumulate_gradients(work, batches)
        crit.prepare(work, batches)                # anything else it reads (a Fisher, activations)
    scores = {g.root: crit(work, g) for g in groups}

A new criterion is one call, ``CHANNEL_CRITERIA.register("mine", Mine(), help="...")``, and then
works everywhere a criterion name is accepted (``channel_scores``, ``plan_channels``, the CLI's
choices, the evaluator). ``needs_grad`` implies ``needs_data``. A registered plain function
(``fn(model, group)``) works too and counts as needing nothing.

``import amc.importance`` registers every built-in criterion of both kinds (its ``__init__``
imports :mod:`amc.importance.channels` and :mod:`amc.importance.weights`, which register into the
registries below).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import nn

from amc.errors import PolicyError
from amc.importance.slices import ChannelGroup
from amc.registry import Registry

Batch = tuple[torch.Tensor, torch.Tensor]  # images, labels
Scores = dict[str, torch.Tensor]  # layer name -> score shaped like its weight (higher = keep)


class ChannelCriterion:
    """How to score the channels of one coupled group: one float per root channel, higher = keep."""

    needs_data: bool = False  # scored from a few batches of images (the pruner then needs a loader)
    needs_grad: bool = False  # reads cross-entropy gradients from ``.grad`` (implies ``needs_data``)

    def prepare(self, model: nn.Module, batches: Sequence[Batch]) -> None:
        """Called once on the pruner's deep copy of the model before scoring, when ``needs_data``:
        store on it what ``__call__`` reads (``batches``: a few (images, labels), at most the
        pruner's ``batches``). Nothing by default."""

    def __call__(self, model: nn.Module, group: ChannelGroup) -> torch.Tensor:
        """Scores of ``group``'s channels, indexed like the group root's output channels."""
        raise NotImplementedError


class WeightCriterion:
    """How to score single weights: ``{layer: a tensor shaped like its weight}``, higher = keep."""

    needs_data: bool = False  # scored from a few batches of images (a loader must be given)
    needs_grad: bool = False  # differentiates the loss (scored under ``torch.enable_grad``)

    def __call__(self, model: nn.Module, names: list[str], loader: Iterable[Batch] | None,
                 batches: int) -> Scores:
        raise NotImplementedError


CHANNEL_CRITERIA: Registry[ChannelCriterion] = Registry("criterion", error=PolicyError)
"""Channel criteria by name (``ChannelCriterion`` objects); ``--criterion`` of channel pruning."""

WEIGHT_CRITERIA: Registry[WeightCriterion] = Registry("weight criterion", error=PolicyError)
"""Weight (fine-grained) criteria by name (``WeightCriterion`` objects)."""


def channel_needs_data(criterion: Any) -> bool:
    """Whether a channel criterion object scores from images (``needs_data`` or ``needs_grad``);
    an object that declares neither (a plain function) needs nothing."""
    return bool(getattr(criterion, "needs_data", False) or getattr(criterion, "needs_grad", False))

"""How to score, run: a criterion of :data:`amc.importance.CHANNEL_CRITERIA` over every channel group.

The criteria themselves live (and register) in :mod:`amc.importance.channels`; this module only looks
one up by name and runs it as :mod:`amc.importance.registry` says. Lifecycle::

    needs_data("taylor")                                  # True: give a loader
    scores = channel_scores(model, "taylor", table, loader)
      -> CHANNEL_CRITERIA.get_or_raise("taylor")          # PolicyError "unknown criterion ..."
      -> a deep copy; accumulate_gradients if needs_grad; criterion.prepare(copy, first batches)
      -> {group root: criterion(copy, group)}             # one score per channel, higher = keep
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Iterable

import torch
from torch import nn

from amc.errors import PolicyError
from amc.importance import CHANNEL_CRITERIA
from amc.importance.registry import channel_needs_data
from amc.layers import ExampleInputs
from amc.pruners.channel.graph import channel_table
from amc.pruners.channel.table import ChannelTable


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
                   batches: int = 4, example_inputs: ExampleInputs | None = None) -> dict[str, torch.Tensor]:
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

"""Importance criteria beyond magnitude: Optimal Brain Damage (diagonal Fisher), APoZ, SynFlow.

* :mod:`amc.importance.weights` — per-weight scores (``magnitude``, ``obd``, ``synflow``) and a
  global threshold that turns scores into fine-grained masks at a size target.
* :mod:`amc.importance.channels` — per-channel scores (``obd``, ``apoz``) registered in
  :data:`amc.pruners.channel.CRITERIA`, so ``--criterion obd|apoz`` works wherever the channel
  criteria are dispatched (``amc prune --granularity channel``, the searchers' evaluator).
"""

from amc.importance.weights import (
    WEIGHT_CRITERIA,
    fine_criterion,
    fisher_diagonal,
    masks_from_scores,
    obd_scores,
    prune_by_criterion,
    synflow_masks,
    synflow_scores,
    weight_scores,
)

__all__ = ["WEIGHT_CRITERIA", "fine_criterion", "fisher_diagonal", "masks_from_scores", "obd_scores",
           "prune_by_criterion", "synflow_masks", "synflow_scores", "weight_scores"]

"""How to score: the channel and weight criteria, each registered once by name.

* :mod:`amc.importance.registry` — the criterion protocol (:class:`ChannelCriterion`,
  :class:`WeightCriterion`: called, higher = keep, declaring ``needs_data`` / ``needs_grad``) and the
  two registries :data:`CHANNEL_CRITERIA` and :data:`WEIGHT_CRITERIA`, the only lists of their names.
* :mod:`amc.importance.channels` — every channel criterion (``l1``, ``l2``, ``l2_next``, ``bn``,
  ``taylor``, ``group_l2``, ``obd``, ``apoz``), scored per coupled group by the channel pruner
  (``amc.pruners.channel.channel_scores``).
* :mod:`amc.importance.weights` — per-weight scores (``magnitude``, ``obd``, ``synflow``) and a
  global threshold that turns scores into fine-grained masks at a size target.
* :mod:`amc.importance.slices` — the per-slice sums that the channel criteria are built from.

Importing this package registers every built-in criterion. It imports nothing from ``amc.pruners``:
the pruners import it.
"""

from amc.importance import channels as channels  # registers the channel criteria
from amc.importance.registry import CHANNEL_CRITERIA, WEIGHT_CRITERIA, ChannelCriterion, WeightCriterion
from amc.importance.weights import (
    fine_criterion,
    fisher_diagonal,
    masks_from_scores,
    obd_scores,
    prune_by_criterion,
    synflow_masks,
    synflow_scores,
    weight_scores,
)

__all__ = ["CHANNEL_CRITERIA", "WEIGHT_CRITERIA", "ChannelCriterion", "WeightCriterion", "fine_criterion",
           "fisher_diagonal", "masks_from_scores", "obd_scores", "prune_by_criterion", "synflow_masks",
           "synflow_scores", "weight_scores"]

"""Channel (filter) pruning that physically shrinks any graph, plus the fast pieces a search needs.

Three nouns, as in Torch-Pruning, and one module per step of the data flow:

* **what is coupled** — a :class:`ChannelTable` (:mod:`.table`): every group of channels that must be
  removed together (a conv's filters, its BatchNorm, the next layers' input slices, every branch of a
  residual add, a depthwise conv's in = out channels), traced once with torch-pruning's
  ``DependencyGraph`` (:mod:`.graph`, the one module that touches torch-pruning) and stored by dotted
  module name, so it applies to any copy of the model.
* **how to score** — a criterion of :data:`amc.importance.CHANNEL_CRITERIA`, run over every group by
  :func:`channel_scores` (:mod:`.scores`), one score per channel, mean over the coupled group.
* **how much and where** — a policy ``{layer name: fraction of output channels to remove}``, turned
  into kept indices per group root (:mod:`.plan`), costed analytically (:mod:`.cost`), applied as
  masks or physically (:mod:`.apply`).

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

from amc.pruners.channel.apply import (
    apply_channel_masks,
    channel_masks,
    check_forward,
    prune_channels,
    removed_positions,
)
from amc.pruners.channel.cost import find_uniform_ratio, plan_cost, policy_cost, smallest_ratio
from amc.pruners.channel.graph import MappingDiverges, as_table, channel_table
from amc.pruners.channel.limits import TraceLimit, TraceLimits
from amc.pruners.channel.plan import (
    ChannelPlan,
    group_ratios,
    plan_channels,
    plan_from_counts,
    policy_counts,
    round_channels,
    uniform_policy,
    validate_channel_policy,
)
from amc.pruners.channel.scores import accumulate_gradients, channel_scores, needs_data
from amc.pruners.channel.table import ChannelGroup, ChannelItem, ChannelTable, Counts

__all__ = [
    "ChannelGroup", "ChannelItem", "ChannelPlan", "ChannelTable", "Counts", "MappingDiverges", "TraceLimit",
    "TraceLimits",
    "accumulate_gradients", "apply_channel_masks", "as_table", "channel_masks", "channel_scores",
    "channel_table", "check_forward", "find_uniform_ratio", "group_ratios", "needs_data", "plan_channels",
    "plan_cost", "plan_from_counts", "policy_cost", "policy_counts", "prune_channels", "removed_positions",
    "round_channels", "smallest_ratio", "uniform_policy", "validate_channel_policy",
]

"""Pruning procedures that involve training: the lottery ticket (iterative magnitude pruning with
rewinding, and its random-reinit control), network slimming (an L1 penalty on BatchNorm scales,
then channels pruned by scale) and training a pruned architecture from scratch."""

from amc.procedures.lottery import LotteryResult, lottery, random_reinit, reinitialise
from amc.procedures.scratch import scratch_model
from amc.procedures.slim import bn_l1_penalty, slim_plan, slim_train

__all__ = ["LotteryResult", "bn_l1_penalty", "lottery", "random_reinit", "reinitialise", "scratch_model",
           "slim_plan", "slim_train"]

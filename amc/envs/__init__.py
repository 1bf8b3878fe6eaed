"""Gymnasium environments over the evaluator: ``pruning`` (``PruningEnv``, registered with gymnasium
as ``amc/Pruning-v0`` on import: one step per searched layer, the evaluator's reward at the last).
The searchers that act in them live in ``amc.search`` (the AMC agent: ``amc.search.agent``)."""

from amc.envs.pruning import ENV_ID, OBS_DIM, PruningEnv

__all__ = ["ENV_ID", "OBS_DIM", "PruningEnv"]

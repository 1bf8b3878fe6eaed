"""The gymnasium environment of the AMC search, kept at the top level for existing imports: it lives
in ``amc.search.env`` (importing it registers ``gymnasium.make("amc/Pruning-v0", evaluator=...)``)."""

from amc.search.env import ENV_ID, OBS_DIM, PruningEnv

__all__ = ["ENV_ID", "OBS_DIM", "PruningEnv"]

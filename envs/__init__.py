"""Gymnasium environments of the AMC search, registered by id: ``gymnasium.make("amc/Pruning-v0",
evaluator=...)``."""

from gymnasium.envs.registration import register, registry

ENV_ID = "amc/Pruning-v0"

if ENV_ID not in registry:
    register(id=ENV_ID, entry_point="envs.pruning_env:PruningEnv", disable_env_checker=True)

__all__ = ["ENV_ID"]

"""The searchers over the one evaluator: ``base`` (the propose / observe interface, re-ranking),
``optuna`` (TPE / NSGA-II on a real database), ``env`` (the gymnasium ``amc/Pruning-v0``
environment) and ``agent`` (the AMC DDPG / TD3 agent that acts in it)."""

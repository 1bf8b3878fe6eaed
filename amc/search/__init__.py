"""The searchers over the one evaluator: ``base`` (the propose / observe interface, re-ranking),
``optuna`` (TPE / NSGA-II on a real database) and ``agent`` (the AMC DDPG / TD3 agent that acts in
the gymnasium environment ``amc.envs.PruningEnv``); ``registry`` builds one by method name."""

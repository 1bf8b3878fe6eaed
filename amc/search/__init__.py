"""The searchers over the one evaluator: ``base`` (the propose / observe interface with the loop's
hooks, re-ranking), ``loop`` (the one search loop: propose -> evaluate -> observe, resume, progress,
the trials log, row <-> Result), ``optuna`` (an Optuna study on a real database; its samplers by
name in ``samplers``: TPE, NSGA-II, random, CMA-ES) and ``agent`` (the AMC DDPG / TD3 agent that acts
in the gymnasium environment ``amc.envs.PruningEnv``); ``registry`` builds one by method name."""

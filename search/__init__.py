"""Searchers over the evaluator: the Optuna searcher (the AMC agent lives in ``amc.agent``)."""

from search.optuna_search import OptunaConfig, OptunaResult, OptunaSearcher

__all__ = ["OptunaConfig", "OptunaResult", "OptunaSearcher"]

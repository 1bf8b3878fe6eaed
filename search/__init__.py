"""The Optuna searcher, kept at the top level for existing imports: it lives in ``amc.search.optuna``
(the AMC agent in ``amc.search.agent``); ``amc`` itself never imports this package."""

from amc.search.optuna import OptunaConfig, OptunaResult, OptunaSearcher

__all__ = ["OptunaConfig", "OptunaResult", "OptunaSearcher"]

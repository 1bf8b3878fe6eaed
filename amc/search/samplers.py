"""Optuna's samplers by name: the one place a sampler of the Optuna searcher is listed.

``SAMPLERS`` is an ``amc.registry.Registry`` of ``Sampler`` entries: how to build the sampler from
the searcher's ``OptunaConfig`` (its seed, startup trials, population) and whether its study has two
objectives (accuracy up, cost down: a Pareto front) instead of one (the reward). Lifecycle:
``OptunaConfig(sampler=name)`` checks the name here -> ``amc.search.optuna.make_sampler(config)``
builds it -> the searcher's study asks it for every trial. A new sampler is one ``SAMPLERS.register``
entry; the search methods ``random`` and ``cmaes`` of ``amc.search.registry`` are the Optuna searcher
over the entries of the same names.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import optuna

from amc.registry import Registry

if TYPE_CHECKING:
    from amc.search.optuna import OptunaConfig


@dataclass(frozen=True)
class Sampler:
    make: Callable[[OptunaConfig], optuna.samplers.BaseSampler]
    multi_objective: bool = False  # the study maximises accuracy and minimises cost (NSGA-II)


SAMPLERS: Registry[Sampler] = Registry("sampler")


def _tpe(config: OptunaConfig) -> optuna.samplers.BaseSampler:
    return optuna.samplers.TPESampler(seed=config.seed, n_startup_trials=config.n_startup_trials, multivariate=True)


def _nsga2(config: OptunaConfig) -> optuna.samplers.BaseSampler:
    return optuna.samplers.NSGAIISampler(seed=config.seed, population_size=config.population)


def _random(config: OptunaConfig) -> optuna.samplers.BaseSampler:
    return optuna.samplers.RandomSampler(seed=config.seed)


class _CmaEs(optuna.samplers.CmaEsSampler):
    """Optuna's CMA-ES, quiet about the budget constraint every trial records: CMA-ES ignores it, and
    needs no warning per trial, since the searcher projects every proposal onto the budget."""

    def after_trial(self, study: optuna.Study, trial: optuna.trial.FrozenTrial, state: optuna.trial.TrialState,
                    values: Sequence[float] | None) -> None:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", "Constraints have been set, but CmaEsSampler", UserWarning)
            super().after_trial(study, trial, state, values)


def _cmaes(config: OptunaConfig) -> optuna.samplers.BaseSampler:
    # the first n_startup_trials (the enqueued baselines among them) come from a seeded random
    # sampler; CMA-ES then adapts its mean and covariance to the completed trials
    return _CmaEs(seed=config.seed, n_startup_trials=config.n_startup_trials,
                                        warn_independent_sampling=False)


SAMPLERS.register("tpe", Sampler(_tpe), help="tree-structured Parzen estimator, multivariate (Optuna's default)")
SAMPLERS.register("nsga2", Sampler(_nsga2, multi_objective=True),
                  help="NSGA-II: the accuracy vs cost Pareto front")
SAMPLERS.register("random", Sampler(_random), help="independent uniform samples of every ratio")
SAMPLERS.register("cmaes", Sampler(_cmaes), help="CMA-ES (the cmaes package) after random startup trials")

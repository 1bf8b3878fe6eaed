"""The searchers by method name: ``make_searcher(method, evaluator, spec, run_dir) -> Searcher``.

Every caller (the pipeline, ``amc search``) describes a search once, in a ``SearchSpec``, and asks
the registry for the searcher; no caller branches on the method. ``SEARCHERS`` (an
``amc.registry.Registry``, the one list of search methods: the CLI's, the pipeline's and the
service's choices are read from it) maps a name to a factory ``(evaluator, spec, run_dir) ->
Searcher`` with a one-line help; a factory imports its searcher when called (the AMC agent pulls in
stable-baselines3). ``random`` and ``cmaes`` are the Optuna searcher over the sampler of the same
name (``amc.search.samplers``); ``optuna`` takes its sampler from ``spec.options["sampler"]``.

``spec.start`` holds known policies by origin, tried first: the agent plays them as its first
warm-up episodes in that order; Optuna enqueues them as its first trials, where ``"uniform"`` is
its own ``enqueue_uniform`` and ``"sensitivity"`` replaces the sensitivity scan it would otherwise
run. ``spec.options`` are settings of either searcher (``AgentConfig`` / ``OptunaConfig`` fields,
plus ``warmup``): each factory takes the ones its config has.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from amc.budget import Policy
from amc.errors import AmcError
from amc.registry import Registry
from amc.search.base import Searcher

if TYPE_CHECKING:
    from amc.evaluator import Evaluator


@dataclass(frozen=True)
class SearchSpec:
    episodes: int  # AMC episodes / complete Optuna trials, in total (a resumed search counts its old ones)
    seed: int = 0
    start: Mapping[str, Policy] = field(default_factory=dict)  # known policies by origin, tried first
    resume: bool = True  # continue what the run folder (agent) or study (Optuna) holds
    options: Mapping[str, Any] = field(default_factory=dict)  # AgentConfig / OptunaConfig fields, ``warmup``
    screens: Sequence[Evaluator] = ()  # cheaper evaluators, cheapest first: Optuna's multi-fidelity screening

    def __post_init__(self) -> None:
        if self.episodes < 1:
            raise AmcError(f"a search needs episodes >= 1, got {self.episodes}")


Factory = Callable[["Evaluator", SearchSpec, "Path | None"], Searcher]


def _own(options: Mapping[str, Any], cls: type) -> dict[str, Any]:
    names = {f.name for f in fields(cls)}
    return {k: v for k, v in options.items() if k in names}


def _agent(evaluator: Evaluator, spec: SearchSpec, run_dir: Path | None) -> Searcher:
    from amc.search.agent import AgentConfig, AmcSearcher

    if spec.screens:
        raise AmcError("screens (multi-fidelity screening) are an Optuna option; the AMC agent scores every episode "
                       "with its one evaluator")
    warmup = spec.options.get("warmup")
    warm = int(warmup) if warmup is not None else max(1, spec.episodes // 3)
    opts = _own(spec.options, AgentConfig) | {"episodes": spec.episodes, "seed": spec.seed,
                                              "warmup_episodes": min(warm, spec.episodes)}
    return AmcSearcher(evaluator, AgentConfig(**opts), seed_policies=list(spec.start.values()), run_dir=run_dir,
                       resume=spec.resume)


def _optuna(evaluator: Evaluator, spec: SearchSpec, run_dir: Path | None) -> Searcher:
    from amc.search.optuna import OptunaConfig, OptunaSearcher

    opts = _own(spec.options, OptunaConfig) | {"n_trials": spec.episodes, "seed": spec.seed}
    if opts.get("storage") is None:
        opts.pop("storage", None)
    if opts.get("study") is None:
        opts.pop("study", None)
    extra = {k: v for k, v in spec.start.items() if k not in ("uniform", "sensitivity")}
    return OptunaSearcher(evaluator, OptunaConfig(**opts), run_dir, sensitivity_policy=spec.start.get("sensitivity"),
                          extra_policies=extra or None, screens=spec.screens)


def _sampled(sampler: str) -> Factory:
    """The Optuna searcher with ``sampler`` whatever ``spec.options`` says."""

    def factory(evaluator: Evaluator, spec: SearchSpec, run_dir: Path | None) -> Searcher:
        return _optuna(evaluator, replace(spec, options={**spec.options, "sampler": sampler}), run_dir)

    return factory


SEARCHERS: Registry[Factory] = Registry("search method")  # "unknown search method 'x'; known: ..."
SEARCHERS.register("amc", _agent, help="the AMC agent: DDPG / TD3 over the gymnasium PruningEnv, resumable checkpoints")
SEARCHERS.register("optuna", _optuna, help="an Optuna study on a real database (sampler option: TPE by default, "
                                           "NSGA-II, random, CMA-ES); resumable, several workers")
SEARCHERS.register("random", _sampled("random"), help="random search: the Optuna searcher with Optuna's RandomSampler")
SEARCHERS.register("cmaes", _sampled("cmaes"), help="CMA-ES: the Optuna searcher with Optuna's CmaEsSampler")


def make_searcher(method: str, evaluator: Evaluator, spec: SearchSpec, run_dir: str | Path | None = None) -> Searcher:
    """The searcher ``method`` over ``evaluator``; its files (agent checkpoints, the study database)
    go under ``run_dir``."""
    factory = SEARCHERS.get_or_raise(method)
    return factory(evaluator, spec, Path(run_dir) if run_dir is not None else None)

"""The searchers by method name: ``make_searcher(method, evaluator, spec, run_dir) -> Searcher``.

Every caller (the pipeline, ``amc search``) describes a search once, in a ``SearchSpec``, and asks
the registry for the searcher; no caller branches on the method. ``SEARCHERS`` maps a name to a
factory; a factory imports its searcher when called (the AMC agent pulls in stable-baselines3).

``spec.start`` holds known policies by origin, tried first: the agent plays them as its first
warm-up episodes in that order; Optuna enqueues them as its first trials, where ``"uniform"`` is
its own ``enqueue_uniform`` and ``"sensitivity"`` replaces the sensitivity scan it would otherwise
run. ``spec.options`` are settings of either searcher (``AgentConfig`` / ``OptunaConfig`` fields,
plus ``warmup``): each factory takes the ones its config has.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from amc.budget import Policy
from amc.errors import AmcError
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


SEARCHERS: dict[str, Factory] = {"amc": _agent, "optuna": _optuna}


def make_searcher(method: str, evaluator: Evaluator, spec: SearchSpec, run_dir: str | Path | None = None) -> Searcher:
    """The searcher ``method`` over ``evaluator``; its files (agent checkpoints, the study database)
    go under ``run_dir``."""
    factory = SEARCHERS.get(method)
    if factory is None:
        raise AmcError(f"unknown search method {method!r}; known: {', '.join(SEARCHERS)}")
    return factory(evaluator, spec, Path(run_dir) if run_dir is not None else None)

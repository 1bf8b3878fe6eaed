"""What every searcher shares: the interface, the one result type, the ask/tell bookkeeping, re-ranking.

A searcher (``Searcher``) is ``propose() -> Policy`` then, once the evaluator has scored it,
``observe(policy, result)``; ``run(progress)`` hands it to the one search loop
(``amc.search.loop.run_search``), which drives it to its number of trials and returns a
``SearchResult`` (the AMC agent in ``amc.search.agent``, Optuna in ``amc.search.optuna``;
``amc.search.registry`` builds one by method name). What a searcher needs of its own inside the
loop is a hook with a default (see ``Searcher``). ``Proposals`` remembers what each handed-out
policy needs back at ``observe`` time (the agent's transitions, Optuna's trial), matched by the
policy itself, first in first out. ``rerank`` makes the final choice among a search's best few on a
larger evaluation (see below).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, is_dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import pandas as pd

from amc.budget import Policy, Projector
from amc.errors import AmcError
from amc.progress import message

if TYPE_CHECKING:
    from amc.evaluator import Evaluator, Result
    from amc.search.loop import SearchRun

T = TypeVar("T")


@dataclass
class SearchResult:
    """What a search found: the best feasible policy and its result (None when none was feasible),
    one row per trial / episode (``reward``, ``feasible``, ``r:<layer>`` columns among others), the
    seconds this run took and the trials already done when it started (a resumed search)."""

    best_policy: Policy | None
    best_result: Result | None
    trials: pd.DataFrame
    seconds: float
    resumed_from: int = 0
    pareto: list[Result] = field(default_factory=list)  # feasible results no other beats on accuracy and cost
    extra: dict[str, Any] = field(default_factory=dict)  # the searcher's settings
    agent: Any = None  # the AMC agent's trained SB3 model (actor, critic, replay buffer)

    # kept for the callers that read a search by the words of one searcher (tests, benchmarks/search.py)
    @property
    def episodes(self) -> pd.DataFrame:
        """``trials`` by the AMC agent's word."""
        return self.trials

    @property
    def completed_before(self) -> int:
        """``resumed_from`` by Optuna's word (complete trials in the study before this run)."""
        return self.resumed_from


@dataclass(frozen=True)
class Progress:
    """One step of a running search, for a progress display: trials done in total (``resumed_from``
    of them before this run), ``feasible`` of the last ``counted`` trials were feasible, the best
    reward so far."""

    done: int
    total: int
    feasible: int
    counted: int
    best_reward: float | None
    resumed_from: int = 0

    def message(self) -> str:
        """``"trial 3/8"`` (``amc.progress.message``; the search loop's ``TimedProgress`` adds the ETA and
        the best accuracy)."""
        return message("trial", self.done, self.total)


class Searcher(ABC):
    """A proposer the one search loop drives (``run`` is ``amc.search.loop.run_search(self)``).

    Lifecycle, each step a hook the loop calls (its default in brackets):

    1. ``start() -> int``: restore what the run folder or study holds; the trials done before this
       run [0]. ``history()``: those trials' rows [None: the loop reads them back from its log].
    2. While ``completed()`` [the loop's own count] is below ``total`` and fewer than
       ``max_starts()`` proposals were made [no cap]:

       - ``ready() -> bool``: may a trial start now? False: the searcher waited (Optuna: the rest
         is in other workers' hands) and the loop asks again [True];
       - ``propose() -> Policy``;
       - ``screen(policy) -> bool``: False drops the proposal unscored (Optuna: a surplus trial, or
         one a cheaper screen ruled out) [True];
       - the loop scores it with ``evaluator.evaluate``; should that raise, ``abandon(policy)``
         [nothing] and the error goes on;
       - ``columns(policy, result)``: the searcher's own columns of the trial's log row [none];
         then ``observe(policy, result)``.

       A searcher that learns through a driver of its own (the AMC agent: stable-baselines3's
       ``learn()``) overrides ``drive(run) -> True`` instead and calls ``run.record(result,
       columns)`` once per trial.
    3. ``finish(result) -> SearchResult``: the searcher's last word on what the loop built (a final
       checkpoint, the study's own trials frame and Pareto front) [the loop's result as is].

    ``propose`` / ``observe`` alone are ask and tell, for a caller that evaluates itself.
    """

    evaluator: Evaluator
    total: int  # trials (episodes) the search runs to, counting those of earlier runs
    run_dir: Path | None = None
    log_file: str | None = "episodes.csv"  # the loop's trials log in run_dir (None: the searcher keeps its own)

    @abstractmethod
    def propose(self) -> Policy: ...

    @abstractmethod
    def observe(self, policy: Policy, result: Result) -> None: ...

    def run(self, progress: Callable[[Progress], None] | None = None) -> SearchResult:
        from amc.search.loop import run_search

        return run_search(self, progress)

    # -- the loop's hooks (see the class doc) -----------------------------------------------------------
    def start(self) -> int:
        return 0

    def history(self) -> pd.DataFrame | None:
        return None

    def completed(self) -> int | None:
        return None

    def max_starts(self) -> int | None:
        return None

    def ready(self) -> bool:
        return True

    def screen(self, policy: Policy) -> bool:
        return True

    def abandon(self, policy: Policy) -> None:
        return None

    def columns(self, policy: Policy, result: Result) -> dict[str, Any]:
        return {}

    def drive(self, run: SearchRun) -> bool:
        return False

    def settings(self) -> dict[str, Any]:
        """The searcher's settings for ``SearchResult.extra`` (its config dataclass, when it has one)."""
        config = getattr(self, "config", None)
        return {"config": asdict(config)} if is_dataclass(config) and not isinstance(config, type) else {}

    def finish(self, result: SearchResult) -> SearchResult:
        return result


def policy_key(policy: Mapping[str, float]) -> tuple:
    """A hashable identity of a policy: its (layer, ratio) pairs in layer-name order."""
    return tuple(sorted(policy.items()))


class Proposals(Generic[T]):
    def __init__(self) -> None:
        self._open: dict[tuple, list[T]] = {}

    def add(self, policy: Mapping[str, float], item: T) -> None:
        self._open.setdefault(policy_key(policy), []).append(item)

    def take(self, policy: Mapping[str, float]) -> T:
        """The item stored with ``policy``; an error if ``propose()`` never handed it out."""
        item = self.peek(policy)
        self._open[policy_key(policy)].pop(0)
        return item

    def peek(self, policy: Mapping[str, float]) -> T:
        """The item ``take`` would return, left in place."""
        items = self._open.get(policy_key(policy))
        if not items:
            raise AmcError("observe() got a policy that propose() did not hand out")
        return items[0]


# -- the final choice: re-rank the best few on a larger evaluation ----------------------------------
# A search's single best reward is the maximum of many noisy scores, so it is biased upwards (the
# winner's curse): on a 1,000-image reward with a 16-step finetune recovery, the top policy of 200
# scored 1.3 points above the global-magnitude policy, and the two tied on all 5,000 held-out images.
# ``rerank`` re-scores the top ``k`` distinct feasible policies of a search with evaluators that see
# more data (every held-out image) and other recovery batches (other seeds), and picks by the mean.


def top_policies(frame: pd.DataFrame, k: int,
                 key: Callable[[Policy], Hashable] = policy_key, first: int = 0) -> list[tuple[Policy, float]]:
    """The ``k`` distinct feasible policies of a search log (``episodes.csv`` / Optuna's trials
    frame: ``reward``, ``feasible`` and one ``r:<layer>`` column per layer) with the highest
    search reward, best first, each with that reward. Distinct by ``key`` (default: the ratios; an
    evaluator's ``architecture_key``: the model they build, so that ratios rounding to the same channel
    counts count once). ``first``: the log's first that many rows too (the search's starting policies,
    which both searchers play first), after the top ``k`` where not among them."""
    if k < 1:
        raise AmcError(f"re-rank needs k >= 1, got {k}")
    cols = [c for c in frame.columns if str(c).startswith("r:")]
    if frame.empty or not cols or "reward" not in frame or "feasible" not in frame:
        return []
    ok = frame["feasible"].fillna(False).astype(bool) & frame["reward"].astype(float).map(math.isfinite)
    out: list[tuple[Policy, float]] = []
    seen: set[Hashable] = set()

    def take(rows: pd.DataFrame, n: int) -> None:
        for _, row in rows.iterrows():
            policy = {c[2:]: float(row[c]) for c in cols if math.isfinite(float(row[c]))}
            if (ident := key(policy)) not in seen:
                seen.add(ident)
                out.append((policy, float(row["reward"])))
                if n == 1:
                    return
                n -= 1

    take(frame[ok].sort_values("reward", ascending=False, kind="stable"), k)
    if first > 0:
        take(frame.iloc[:first][ok.iloc[:first]], first)
    return out


@dataclass(frozen=True)
class Reranked:
    policy: Policy
    search_reward: float  # the reward the search saw
    score: float  # mean reward over the re-rank evaluators (nan when any found it infeasible)
    results: tuple[Result, ...]  # one per re-rank evaluator
    rank: int  # 1-based place in the search's own order

    @property
    def feasible(self) -> bool:
        return all(r.feasible for r in self.results) and math.isfinite(self.score)


def refeasible(frame: pd.DataFrame, projector: Projector) -> pd.DataFrame:
    """A search log (``reward``, ``feasible``, ``r:<layer>``) with each feasible row judged again against
    ``projector``'s budget: a search whose aim moved (``amc.latency_check.Reaim``) keeps, of the trials scored
    under an earlier aim, those that still meet the current one."""
    cols = [c for c in frame.columns if str(c).startswith("r:")]
    if frame.empty or not cols or "feasible" not in frame:
        return frame
    out = frame.copy()
    ok = out["feasible"].fillna(False).astype(bool)
    for i in out.index[ok]:
        policy = {c[2:]: float(out.at[i, c]) for c in cols if math.isfinite(float(out.at[i, c]))}
        out.at[i, "feasible"] = projector.feasible(policy)
    return out


def rerank_evaluators(evaluator: Evaluator, seeds: Sequence[int] = (1, 2),
                      recovery_steps: int | None = None, score_on: str | None = None) -> list[Evaluator]:
    """Evaluators like ``evaluator`` that score on every held-out image; with a finetune recovery,
    one per recovery seed in ``seeds`` (other batches than the search's), with BN recalibration
    alone just one (the seed changes nothing). ``recovery_steps``: their recovery is that many SGD
    steps (then BN recalibration) whatever the search's was (0: BN recalibration alone);
    ``score_on``: the model they score (``EvalConfig.score_on``; default the search's)."""
    from amc.evaluator import Evaluator

    cfg = replace(evaluator.config, eval_images=None, profile=False)
    if score_on is not None:
        cfg = replace(cfg, score_on=score_on)
    if recovery_steps is not None:
        cfg = replace(cfg, recovery="finetune" if recovery_steps > 0 else "bn", recovery_steps=recovery_steps)
    if cfg.recovery != "finetune" or cfg.recovery_steps == 0 or not seeds:
        cfgs = [cfg]
    else:
        cfgs = [replace(cfg, recovery_seed=int(s)) for s in dict.fromkeys(seeds)]
    return [Evaluator(evaluator.dense, evaluator.splits, evaluator.budget, c, evaluator.input_shape,
                      evaluator.latency_table) for c in cfgs]


def score(evaluators: Sequence[Evaluator], policy: Mapping[str, float]) -> tuple[float, tuple[Result, ...]]:
    """Mean reward of ``policy`` over ``evaluators`` (nan when any finds it infeasible)."""
    results = tuple(ev.evaluate(policy) for ev in evaluators)
    ok = all(r.feasible and math.isfinite(r.reward) for r in results)
    return (sum(r.reward for r in results) / len(results) if ok else float("nan")), results


def rerank(evaluators: Sequence[Evaluator], frame: pd.DataFrame, k: int = 5, first: int = 0,
           adjust: Callable[[Policy], Policy | None] | None = None) -> list[Reranked]:
    """Re-score the top ``k`` feasible policies of ``frame`` that build distinct models (the first
    evaluator's ``architecture_key``), and its ``first`` rows (the starting policies; ``top_policies``),
    with ``evaluators``; best first (the search's order breaks ties; policies infeasible under
    re-scoring go last). ``rank``: the place in the search's order (a starting policy outside the top
    ``k``: after them). ``adjust``: each candidate made into the policy that is scored and kept (a latency
    budget: fitted to it by measurement, ``amc.latency_check.fitted``; None: it cannot be, scored nan)."""
    if not evaluators:
        raise AmcError("re-rank needs at least one evaluator")
    out = []
    for i, (policy, reward) in enumerate(top_policies(frame, k, evaluators[0].architecture_key, first)):
        if adjust is not None and (policy := adjust(policy)) is None:  # type: ignore[assignment]
            out.append(Reranked({}, reward, float("nan"), (), i + 1))
            continue
        s, results = score(evaluators, policy)
        out.append(Reranked(policy, reward, s, results, i + 1))
    order = sorted(range(len(out)), key=lambda i: (not out[i].feasible,
                                                   -(out[i].score if out[i].feasible else 0.0), i))
    return [out[i] for i in order]


def reranks(evaluator: Evaluator) -> bool:
    """Whether re-scoring can change a search's choice: its reward saw a subset of the held-out images
    (fewer than they hold) or a finetune recovery (other batches give other scores). A reward on every
    held-out image after BN recalibration is exact, and a user's task scores with its own function:
    re-scoring would repeat it."""
    cfg = evaluator.config
    if not evaluator.task.classification:
        return False
    subset = cfg.eval_images is not None and evaluator.scored_images >= cfg.eval_images
    return subset or (cfg.recovery == "finetune" and cfg.recovery_steps > 0)


def final_choice(evaluator: Evaluator, frame: pd.DataFrame, k: int, seeds: Sequence[int] = (1, 2),
                 steps: int = 0, first: int = 0,
                 adjust: Callable[[Policy], Policy | None] | None = None) -> list[Reranked]:
    """A search's final choice made on more data: its top ``k`` distinct policies, and its ``first`` trials
    (the starting policies, so that the choice is never one the re-rank scores below them), re-ranked
    (``rerank``) on every held-out image (after the recovery on other batches, ``seeds``; with ``steps``,
    after that many SGD steps whatever the search's recovery), best first; empty when ``k`` is 0 or re-scoring would
    repeat the search's scores (``reranks``; a user's task is scored by its own function). On ResNet-20
    at 30% of the MACs (reports/agent.md), the AMC agent's best reward on 500 images scored 18.3-19.3% on
    all 5,000, the re-ranked pick 19.4-20.9%, and finetuned it tested 1.3 points higher on the mean of 3
    seeds. ``adjust`` (``rerank``): each candidate fitted first, e.g. to a latency budget by measurement, so that
    the choice is among what will be kept rather than among the table's guesses (the re-rank then takes every
    fitted candidate as within the budget)."""
    if k <= 0 or not evaluator.task.classification or not (steps > 0 or reranks(evaluator)):
        return []
    evaluators = rerank_evaluators(evaluator, seeds, steps if steps > 0 else None)
    for ev in evaluators if adjust is not None else ():
        ev.retarget(1.0)  # the adjusted candidates meet the budget by measurement: the table's verdict is moot
    return rerank(evaluators, frame, k, first, adjust)

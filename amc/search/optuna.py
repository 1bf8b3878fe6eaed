"""The Optuna searcher: one float per searched layer, TPE by default, NSGA-II for Pareto fronts,
random search or CMA-ES (the samplers by name: ``amc.search.samplers.SAMPLERS``).

Lifecycle (the searcher interface every searcher shares): ``OptunaSearcher(evaluator, config)``
-> ``propose() -> Policy`` (``study.ask``; the suggested ratios projected onto the budget, then
filled to spend it) ->
``evaluator.evaluate(policy)`` -> ``observe(policy, result)`` (``study.tell``), repeated; or
``run()``: the one search loop (``amc.search.loop``) drives the same steps until ``n_trials``
trials are COMPLETE in the study in total (a resumed or shared study continues to the asked total),
through this searcher's hooks: ``ready`` (a trial starts only while the trials done plus those in
flight are fewer than ``n_trials``; otherwise it waits, failing stale trials), ``screen`` (a surplus
trial, or one a cheaper screen rules out, is told PRUNED), ``abandon`` (an evaluation that raised:
FAIL) and ``finish`` (the study's trials frame, best trial and Pareto front, all workers' trials).

The study lives in a real database: ``sqlite:///<run_dir>/study.db`` by default, any SQLAlchemy
URL otherwise (PostgreSQL for workers on several machines), opened with ``load_if_exists=True`` so
a killed run resumes with no completed trial lost and several workers can share one study
(optuna-dashboard opens the same URL). Workers write heartbeats; a trial whose worker died is
failed after the grace period and retried once more (``RetryHeartbeatStaleTrialCallback``); trials
beat from a thread of their own from ``propose()`` until ``observe()``, and every ``propose()``
first fails the stale trials (as ``study.optimize`` does before each trial). A trial whose
training diverged (non-finite reward or accuracy) is recorded as FAIL, with its result attributes.

The budget reaches the sampler twice: proposals are projected (AMC's projection, so every trial
is feasible by construction) and each trial records ``measured cost - budget`` as its constraint
(``Trial.set_constraint``, Optuna 5's replacement of the deprecated ``constraints_func`` sampler
argument; TPE and NSGA-II read it the same way), which keeps the samplers away from infeasible
regions when the projection is off. The uniform and the sensitivity-picked policies (and any ``extra_policies``,
e.g. a global-magnitude baseline) are enqueued as the first trials of a new study.

Multi-fidelity (``screens``): cheaper evaluators (fewer images, BN recalibration instead of a finetune
recovery), cheapest first, score each trial of ``run()`` before the searcher's own evaluator does.
Screen ``k``'s reward is reported at step ``eta ** k`` to Optuna's ``SuccessiveHalvingPruner``
(asynchronous successive halving, ``min_resource=1``, ``reduction_factor=eta``: one rung per screen),
which stops a trial outside the best ``1/eta`` of those that reached the same rung; a pruned trial is
PRUNED, never COMPLETE, so the best policy is always one the full evaluator scored. Single-objective
studies only (Optuna cannot prune multi-objective trials); ``propose()`` / ``observe()`` callers
that evaluate for themselves get no screening. ``objective(trial)`` is one whole trial for a
caller that drives ``study.optimize`` itself.
"""

from __future__ import annotations

import math
import threading
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import optuna
import pandas as pd
from optuna.storages._heartbeat import BaseHeartbeat, is_heartbeat_enabled  # RDBStorage's heartbeat interface
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

from amc.budget import Policy
from amc.errors import AmcError
from amc.evaluator import Evaluator, Result
from amc.search.base import Progress, Proposals, Searcher, SearchResult
from amc.search.loop import result_from_row, run_search
from amc.search.samplers import SAMPLERS

HEARTBEAT_S = 60  # a live worker writes a heartbeat every minute
GRACE_S = 180  # a trial with no heartbeat for 3 minutes belongs to a dead worker
MAX_RETRY = 2  # a stale trial is re-enqueued at most twice
CONSTRAINT_KEY = "budget"
STORAGE_ATTEMPTS = 3  # opening a fresh database: workers racing to create its tables retry
STORAGE_RETRY_S = 0.5  # wait between those attempts
TRIES = 3  # trials a worker may start per asked trial (failed and surplus trials do not count)
SCREEN_FLOOR = -1e9  # what an infeasible or diverged screen reports: below every real reward
WAIT_S = 1.0  # while the last trials are in other workers' hands, look again every second


@dataclass(frozen=True)
class OptunaConfig:
    study: str = "amc-search"
    storage: str | None = None  # SQLAlchemy URL; None: sqlite in run_dir (in memory without one)
    sampler: str = "tpe"  # a name in amc.search.samplers.SAMPLERS: tpe, nsga2 (Pareto front), random, cmaes
    seed: int | None = 0  # sampler seed; give each worker its own
    n_trials: int = 200  # COMPLETE trials in the study in total
    project: bool = True  # project proposals onto the budget (else only the constraint guides)
    fill: bool = True  # then spend the whole budget (Projector.fill), as the AMC environment does
    n_startup_trials: int = 10  # TPE: random trials before the model (enqueued ones count)
    population: int = 20  # NSGA-II population size
    enqueue_uniform: bool = True
    enqueue_sensitivity: bool = True
    sensitivity_ratios: tuple[float, ...] = (0.2, 0.4, 0.6, 0.8)  # scanned per layer for that policy
    screen_eta: int = 3  # with screens: each keeps the best 1/eta of the trials that reached it
    heartbeat_interval: int = HEARTBEAT_S
    grace_period: int = GRACE_S
    max_retry: int = MAX_RETRY

    def __post_init__(self) -> None:
        SAMPLERS.check(self.sampler)
        if self.n_trials < 1:
            raise AmcError(f"n_trials must be >= 1, got {self.n_trials}")
        if self.screen_eta < 2:
            raise AmcError(f"screen_eta must be >= 2, got {self.screen_eta}")


def _constraints(trial: FrozenTrial) -> list[float]:
    return list(trial.constraints.values()) or [1.0]  # no record: treat as infeasible


def make_sampler(config: OptunaConfig) -> optuna.samplers.BaseSampler:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return SAMPLERS.get_or_raise(config.sampler).make(config)


def make_storage(url: str | None, config: OptunaConfig) -> optuna.storages.BaseStorage | None:
    if url is None:
        return None  # in memory
    if not url.startswith(("sqlite:", "postgresql", "mysql", "oracle", "mssql")) and "://" not in url:
        raise AmcError(f"storage must be an SQLAlchemy URL such as sqlite:///study.db, got {url!r}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        for attempt in range(STORAGE_ATTEMPTS):
            try:
                return optuna.storages.RDBStorage(
                    url, heartbeat_interval=config.heartbeat_interval, grace_period=config.grace_period,
                    heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(
                        max_retry=config.max_retry))
            except Exception as e:  # sqlalchemy errors: a bad URL, an unreachable database, or two
                # workers creating the tables of a fresh database at once (PostgreSQL: UniqueViolation);
                # the loser finds the tables there on the next attempt
                racing = "UniqueViolation" in str(e) or "already exists" in str(e)
                if not racing or attempt == STORAGE_ATTEMPTS - 1:
                    raise AmcError(f"cannot open study storage {url}: {str(e).splitlines()[0]}") from None
                time.sleep(STORAGE_RETRY_S)
    raise AssertionError("unreachable")


class OptunaSearcher(Searcher):
    """Searcher over ``evaluator`` backed by an Optuna study (see the module doc)."""

    log_file = None  # the study is the trials log: all workers' trials, in the database

    def __init__(self, evaluator: Evaluator, config: OptunaConfig = OptunaConfig(),
                 run_dir: str | Path | None = None, sensitivity_policy: Policy | None = None,
                 extra_policies: Mapping[str, Policy] | None = None, screens: Sequence[Evaluator] = ()) -> None:
        self.evaluator, self.config = evaluator, config
        self.total = config.n_trials
        self.screens = list(screens)  # cheaper evaluators, cheapest first (multi-fidelity; see the module doc)
        self.multi = SAMPLERS[config.sampler].multi_objective
        if self.screens and self.multi:
            raise AmcError("screens (multi-fidelity) need a single-objective sampler; NSGA-II trials cannot be pruned")
        for ev in self.screens:
            if ev.budget != evaluator.budget or list(ev.names) != list(evaluator.names):
                raise AmcError("a screen must score the same budget and layers as the searcher's evaluator")
        url = config.storage
        if url is None and run_dir is not None:
            Path(run_dir).mkdir(parents=True, exist_ok=True)
            url = f"sqlite:///{Path(run_dir).resolve() / 'study.db'}"
        self.url = url
        directions = [StudyDirection.MAXIMIZE, StudyDirection.MINIMIZE] if self.multi else [StudyDirection.MAXIMIZE]
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        storage, sampler = make_storage(url, config), make_sampler(config)
        pruner = (optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=config.screen_eta)
                  if self.screens else optuna.pruners.NopPruner())
        try:
            try:  # the database's unique study name elects one creator among workers starting together
                self.study = optuna.create_study(storage=storage, study_name=config.study, sampler=sampler,
                                                 directions=directions, pruner=pruner)
                created = True
            except optuna.exceptions.DuplicatedStudyError:
                self.study = optuna.create_study(storage=storage, study_name=config.study, sampler=sampler,
                                                 directions=directions, load_if_exists=True, pruner=pruner)
                created = False
        except ValueError as e:  # e.g. the existing study has other directions
            raise AmcError(f"cannot open study {config.study!r}: {e}") from None
        self._sensitivity = sensitivity_policy
        self._extra = dict(extra_policies or {})  # more known policies to start from, by origin name
        self._pending: Proposals[optuna.trial.Trial] = Proposals()
        self._beats: dict[int, threading.Event] = {}  # trial number -> stops its heartbeat
        self._waited = 0.0  # seconds waited for a free slot since the last trial started
        self._on_trial: Callable[[FrozenTrial, int], None] | None = None
        if created:  # only the creator enqueues: workers joining at once would enqueue them twice
            self._enqueue_baselines()

    # -- the first trials --------------------------------------------------------------------------
    def _enqueue_baselines(self) -> None:
        if self.study.user_attrs.get("baselines_enqueued") or self.study.trials:
            return
        self.study.set_user_attr("baselines_enqueued", True)
        ev = self.evaluator

        def enqueue(pol: Policy, origin: str) -> None:  # clipped into the search box (Optuna's ranges) and,
            # over the budget, tightened with its shape kept (``Projector.meet``), not projected layer by layer;
            # under it, made to spend the whole budget (``Projector.spend``) as every trial is filled
            met = ev.projector.meet(pol)
            self.study.enqueue_trial(ev.projector.spend(met) if self.config.fill else met,
                                     user_attrs={"origin": origin})

        if self.config.enqueue_uniform:
            enqueue(ev.uniform_policy(), "uniform")
        if self.config.enqueue_sensitivity:
            pol = self._sensitivity
            if pol is None:
                pol = ev.sensitivity_policy(ev.sensitivity(self.config.sensitivity_ratios))
            self._sensitivity = pol
            enqueue(pol, "sensitivity")
        for origin, pol in self._extra.items():
            enqueue(pol, origin)

    # -- one trial -----------------------------------------------------------------------------------
    def _suggest(self, trial: optuna.trial.BaseTrial) -> Policy:
        raw = {n: trial.suggest_float(n, lo, hi) for n, (lo, hi) in self.evaluator.bounds.items()}
        if not self.config.project:
            return raw
        projector = self.evaluator.projector
        policy = projector.project(raw)
        return projector.fill(policy) if self.config.fill else policy

    def _record(self, trial: optuna.trial.BaseTrial, result: Result) -> list[float]:
        budget = self.evaluator.budget
        cost = result.cost(budget.kind)
        finite = math.isfinite(result.reward) and math.isfinite(cost)
        trial.set_constraint(CONSTRAINT_KEY, cost - budget.fraction if finite else 1.0)
        trial.set_user_attr("result", {k: v for k, v in result.row().items() if not k.startswith("r:")})
        trial.set_user_attr("policy", dict(result.policy))
        if self.multi:
            acc = result.accuracy if math.isfinite(result.accuracy) else 0.0
            return [acc, cost if math.isfinite(cost) else 1.0]
        return [result.reward if finite else 0.0]

    @staticmethod
    def _diverged(result: Result) -> bool:
        return not (math.isfinite(result.reward) and math.isfinite(result.accuracy))

    def _heartbeat(self, trial: optuna.trial.BaseTrial) -> threading.Event:
        """Beat for a trial asked through ``propose()`` (``optimize()`` beats for its own) until the
        returned event is set, so a dead ask/tell driver's trial goes stale like any other."""
        stop = threading.Event()
        storage = self.study._storage
        if not isinstance(storage, BaseHeartbeat):
            return stop
        hb: BaseHeartbeat = storage
        interval = hb.get_heartbeat_interval()
        if interval:
            trial_id = trial._trial_id  # type: ignore[attr-defined]
            hb.record_heartbeat(trial_id)

            def beat() -> None:
                while not stop.wait(interval):
                    hb.record_heartbeat(trial_id)

            threading.Thread(target=beat, name=f"heartbeat-{trial.number}", daemon=True).start()
        return stop

    def _fail_stale(self) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(self.study)  # re-enqueues them (RetryHeartbeatStaleTrialCallback)

    def propose(self) -> Policy:
        if is_heartbeat_enabled(self.study._storage):
            self._fail_stale()  # as study.optimize does before each trial: a dead worker's trial runs again
        with warnings.catch_warnings():  # optimize()'s check; _heartbeat beats for ask/tell trials
            warnings.filterwarnings("ignore", "Heartbeat of storage", UserWarning)
            trial = self.study.ask()
        policy = self._suggest(trial)
        self._pending.add(policy, trial)
        self._beats[trial.number] = self._heartbeat(trial)
        return policy

    def observe(self, policy: Policy, result: Result) -> None:
        trial = self._pending.take(policy)
        self._beats.pop(trial.number, threading.Event()).set()
        values = self._record(trial, result)
        if self._diverged(result):  # training diverged: a failed trial, not a complete infeasible one
            self._tell(trial, state=TrialState.FAIL)
        else:
            self._tell(trial, values)

    def _tell(self, trial: optuna.trial.Trial, values: list[float] | None = None,
              state: TrialState | None = None) -> None:
        frozen = self.study.tell(trial, values, state=state)
        if self._on_trial is not None:
            self._on_trial(frozen, self.completed())

    def _close(self, policy: Policy, state: TrialState) -> None:
        trial = self._pending.take(policy)
        self._beats.pop(trial.number, threading.Event()).set()
        self._tell(trial, state=state)

    # -- the loop's hooks (amc.search.base.Searcher) ------------------------------------------------------
    def start(self) -> int:
        self._waited = 0.0
        return self.completed()

    def history(self) -> pd.DataFrame:
        return self.frame()

    def max_starts(self) -> int:
        # each unfinished slot may take a few tries: failed, surplus and screened-out trials do not count
        return TRIES * self.config.n_trials * self.config.screen_eta ** len(self.screens)

    def ready(self) -> bool:
        """False (after a short wait) while the rest of the trials are in flight in other workers'
        hands: those workers may finish them, or die, and then their trials go stale, fail and are
        re-enqueued. A trial in flight longer than the grace period without going stale may be one
        nobody beats for (asked through ``propose()``): then a trial starts (``screen`` prunes it if
        surplus)."""
        full = self.completed() + len(self._in_flight()) >= self.config.n_trials
        if full and self._waited < self.config.grace_period:
            pause = min(WAIT_S, self.config.heartbeat_interval)
            time.sleep(pause)
            self._waited += pause
            self._fail_stale()
            return False
        self._waited = 0.0
        return True

    def screen(self, policy: Policy) -> bool:
        trial = self._pending.peek(policy)
        if self._surplus(trial):  # another worker took the last free slot at the same moment
            self._close(policy, TrialState.PRUNED)
            return False
        if self._screen(trial, policy) is not None:  # a cheaper evaluator ruled it out
            self._close(policy, TrialState.PRUNED)
            return False
        return True

    def abandon(self, policy: Policy) -> None:
        self._close(policy, TrialState.FAIL)

    def finish(self, result: SearchResult) -> SearchResult:
        best_policy, best = self.best()
        result.best_policy, result.best_result, result.trials = best_policy, best, self.frame()
        result.pareto = self.pareto()
        return result

    def objective(self, trial: optuna.trial.Trial) -> list[float] | float:
        """One whole trial, for a caller that drives ``study.optimize`` itself."""
        if self._surplus(trial):  # another worker took the last free slot at the same moment
            raise optuna.TrialPruned("surplus: the study already has its trials done or in flight")
        policy = self._suggest(trial)
        if (why := self._screen(trial, policy)) is not None:
            raise optuna.TrialPruned(why)
        result = self.evaluator.evaluate(policy)
        values = self._record(trial, result)
        if self._diverged(result):  # Optuna records a NaN objective as FAIL (its attrs say why)
            return [math.nan] * len(values) if self.multi else math.nan
        return values if self.multi else values[0]

    def _screen(self, trial: optuna.trial.Trial, policy: Policy) -> str | None:
        """Score ``policy`` with each screen in turn, reporting to the trial pruner (see the module
        doc); why the trial pruner stopped it, or None when it passed every screen."""
        for k, ev in enumerate(self.screens):
            r = ev.evaluate(policy)
            value = r.reward if r.feasible and math.isfinite(r.reward) else SCREEN_FLOOR
            trial.set_user_attr(f"screen_{k}", {"reward": r.reward, "feasible": r.feasible, "seconds": r.seconds})
            trial.report(value, self.config.screen_eta ** k)
            if trial.should_prune():
                return f"screen {k}: reward {r.reward:.4f} outside the best 1/{self.config.screen_eta} of its rung"
        return None

    # -- the whole search ------------------------------------------------------------------------------
    def completed(self) -> int:
        return len(self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))

    def _in_flight(self) -> list[FrozenTrial]:
        return self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))

    def _surplus(self, trial: optuna.trial.BaseTrial) -> bool:
        """True when the trials done plus those in flight that started before ``trial`` already make
        ``n_trials`` (the earlier-numbered trial keeps its slot)."""
        ahead = [t for t in self._in_flight() if t.number < trial.number]
        return self.completed() + len(ahead) >= self.config.n_trials

    def run(self, progress: Callable[[Progress], None] | None = None,
            on_trial: Callable[[FrozenTrial, int], None] | None = None) -> SearchResult:
        """Optimise until the study holds ``n_trials`` COMPLETE trials (over all runs and workers):
        the one search loop over this searcher's hooks (see the module doc); ``on_trial(trial,
        completed)`` after every trial told to the study, whatever its state."""
        self._on_trial = on_trial
        try:
            return run_search(self, progress)
        finally:
            self._on_trial = None

    # -- reading the study -----------------------------------------------------------------------------
    def _feasible(self) -> list[FrozenTrial]:
        out = []
        for t in self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
            res = t.user_attrs.get("result", {})
            if res.get("feasible") and all(c <= 0 for c in _constraints(t)):
                out.append(t)
        return out

    @staticmethod
    def _result(t: FrozenTrial) -> Result:
        return result_from_row(t.user_attrs["result"], t.user_attrs["policy"])

    def best(self) -> tuple[Policy | None, Result | None]:
        """The feasible trial with the highest reward (NSGA-II: the highest accuracy)."""
        feas = self._feasible()
        if not feas:
            return None, None
        key = (lambda t: t.user_attrs["result"]["accuracy"]) if self.multi else \
            (lambda t: t.user_attrs["result"]["reward"])
        t = max(feas, key=key)
        return dict(t.user_attrs["policy"]), self._result(t)

    def pareto(self) -> list[Result]:
        """Feasible trials no other feasible trial beats on both accuracy and the budget's cost."""
        kind = self.evaluator.budget.kind
        pts = [self._result(t) for t in self._feasible()]
        front = [p for p in pts if not any(
            q.accuracy >= p.accuracy and q.cost(kind) <= p.cost(kind) and
            (q.accuracy > p.accuracy or q.cost(kind) < p.cost(kind)) for q in pts)]
        return sorted(front, key=lambda r: r.cost(kind))

    def frame(self) -> pd.DataFrame:
        rows = []
        for t in self.study.get_trials(deepcopy=False):
            row = {"trial": t.number, "state": t.state.name, "origin": t.user_attrs.get("origin", "sampler")}
            row.update(t.user_attrs.get("result", {}))
            row.update({k: v["reward"] for k, v in t.user_attrs.items() if k.startswith("screen_")})
            row.update({f"r:{k}": v for k, v in t.user_attrs.get("policy", {}).items()})
            rows.append(row)
        return pd.DataFrame(rows)

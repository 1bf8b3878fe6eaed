"""The one search loop: propose -> evaluate -> observe, for every searcher (as Optuna's
``Study.optimize`` owns the loop over a ``BaseSampler``).

Lifecycle: ``run_search(searcher, progress, on_trial)`` ->

1. ``before = searcher.start()`` (the searcher resumes what its run folder or study holds), then a
   ``SearchRun`` takes the rows of those trials (``searcher.history()``, else the first ``before``
   rows of the log file it wrote last time);
2. while the searcher has fewer than ``total`` trials done: ``ready()`` -> ``propose()`` ->
   ``screen(policy)`` -> ``evaluator.evaluate(policy)`` -> ``observe(policy, result)`` ->
   ``SearchRun.record`` (or the searcher's own driver calls ``record`` once per trial:
   ``Searcher.drive``);
3. ``searcher.finish(SearchResult)``: the searcher's last word.

The loop owns what every search shares: the trials log (one row per trial: the searcher's own
columns, then ``result_row``; written atomically to ``run_dir/<searcher.log_file>`` after every
trial, so a killed search loses at most the trial in flight), progress (a ``TimedProgress`` after
every trial, dropped ones included: the counts, the ETA from this run's pace, and its one-line
``message()``, ``"trial 3/8 (best 71.2%), ETA 4m"``), the best feasible result so far, the seconds taken, and the one
conversion each way between a ``Result`` and a log row (``result_row`` / ``result_from_row``).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from amc.budget import Policy
from amc.evaluator import Result
from amc.io import atomic_path
from amc.progress import Clock, Eta, message
from amc.search.base import Progress, Searcher, SearchResult

Row = dict[str, Any]
OnTrial = Callable[[Row, "Row | None"], None]  # (the trial's log row, the best feasible row so far)


@dataclass(frozen=True)
class TimedProgress(Progress):
    """A ``Progress`` with the seconds left (this run's time per trial so far times the trials left;
    None before this run's first trial) and the best feasible trial's held-out accuracy."""

    eta_s: float | None = None
    best_accuracy: float | None = None

    def message(self) -> str:
        """``"trial 3/8 (best 71.2%), ETA 4m"`` (``amc.progress.message``)."""
        best = f"best {self.best_accuracy:.1%}" if self.best_accuracy is not None else ""
        return message("trial", self.done, self.total, self.eta_s, best)


# -- row <-> Result ---------------------------------------------------------------------------------------
def result_row(result: Result) -> Row:
    """A result as a log row: its metrics, ``feasible``, ``reason``, ``seconds`` and one ``r:<layer>``
    column per ratio."""
    return dict(result.row())


def _missing(v: Any) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


def result_from_row(row: Mapping[str, Any], policy: Mapping[str, float] | None = None) -> Result:
    """The ``Result`` a log row (``result_row``, read back from a CSV, an Optuna trial's attributes)
    stands for; ``policy`` when the row has no ``r:<layer>`` columns. A CSV's empty cells (NaN)
    read back as no latency and no reason."""
    if policy is None:
        policy = {k[2:]: float(v) for k, v in row.items() if str(k).startswith("r:") and not _missing(v)}
    lat: Any = row.get("latency")
    reason = row.get("reason")
    return Result(dict(policy), float(row["accuracy"]), float(row["size"]), float(row["macs"]),
                  float(row["params"]), None if _missing(lat) else float(lat), float(row["reward"]),
                  _true(row.get("feasible")), "" if _missing(reason) else str(reason), float(row["seconds"]))


def _true(v: Any) -> bool:
    """A ``feasible`` cell: a trial with no result (pruned, failed before scoring) reads NaN."""
    return not _missing(v) and bool(v)


# -- one run of the loop ------------------------------------------------------------------------------------
class SearchRun:
    """The loop's state over one ``run_search``: the trials log, the best feasible trial, progress.
    A searcher's own driver (``Searcher.drive``) calls ``record`` once per trial and may read
    ``best`` (its checkpoints store it) and ``done``."""

    def __init__(self, searcher: Searcher, before: int, progress: Callable[[Progress], None] | None = None,
                 on_trial: OnTrial | None = None, clock: Clock = time.monotonic) -> None:
        self.searcher, self.before = searcher, before
        self.progress, self.on_trial = progress, on_trial
        run_dir, name = searcher.run_dir, searcher.log_file
        self.log: Path | None = Path(run_dir) / name if run_dir is not None and name else None
        self.rows: list[Row] = []
        self.best: tuple[float, Policy, Row, Result | None] | None = None  # reward, policy, row, result
        self.recorded = self.feasible = 0  # this run's trials, and the feasible ones among them
        for row in self._history():
            self.rows.append(row)
            self._consider(row, None)
        self.t0 = time.perf_counter()
        self.eta = Eta(searcher.total, clock, self.done)

    def _history(self) -> list[Row]:
        old = self.searcher.history()
        if old is None and self.before and self.log is not None and self.log.exists():
            old = pd.read_csv(self.log).head(self.before)  # rows logged after the last checkpoint are run again
        return [] if old is None else old.to_dict("records")

    def _consider(self, row: Row, result: Result | None) -> None:
        cell: Any = row.get("reward")
        reward = float("nan") if _missing(cell) else float(cell)
        if _true(row.get("feasible")) and math.isfinite(reward) and (self.best is None or reward > self.best[0]):
            policy = dict(result.policy) if result is not None else result_from_row(row).policy
            self.best = (reward, policy, row, result)

    @property
    def done(self) -> int:
        """Trials done in total: the searcher's count when it keeps one (a shared study), else the loop's."""
        own = self.searcher.completed()
        return self.before + self.recorded if own is None else own

    def record(self, result: Result, columns: Mapping[str, Any] | None = None) -> None:
        """Log one scored trial (``columns`` first, then ``result_row``), keep the best, report progress."""
        row = {**(columns or {}), **result_row(result)}
        self.rows.append(row)
        self.recorded += 1
        self.feasible += bool(result.feasible)
        self._consider(row, result)
        if self.log is not None:
            self.write()
        self.report()
        if self.on_trial is not None:
            self.on_trial(row, None if self.best is None else self.best[2])

    def report(self) -> None:
        """A ``Progress`` to the caller (after every trial: recorded or dropped)."""
        if self.progress is not None:
            done, best = self.done, self.best
            accuracy = None if best is None or _missing(best[2].get("accuracy")) else float(best[2]["accuracy"])
            self.progress(TimedProgress(done, self.searcher.total, self.feasible, self.recorded,
                                        None if best is None else best[0], self.before,
                                        eta_s=self.eta.seconds_left(done), best_accuracy=accuracy))

    def frame(self) -> pd.DataFrame:
        return pd.DataFrame(self.rows)

    def write(self) -> None:
        assert self.log is not None
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(self.log) as tmp:
            self.frame().to_csv(tmp, index=False)

    def result(self) -> SearchResult:
        if self.best is None:
            policy, best = None, None
        else:
            policy, best = self.best[1], self.best[3] or result_from_row(self.best[2])
        return SearchResult(policy, best, self.frame(), time.perf_counter() - self.t0, self.before,
                            extra=self.searcher.settings())


def run_search(searcher: Searcher, progress: Callable[[Progress], None] | None = None,
               on_trial: OnTrial | None = None, clock: Clock = time.monotonic) -> SearchResult:
    """Drive ``searcher`` until it has ``searcher.total`` trials done (see the module doc); ``clock``
    times the progress's ETA."""
    t0 = time.perf_counter()
    before = searcher.start()
    run = SearchRun(searcher, before, progress, on_trial, clock)
    run.t0 = t0
    if not searcher.drive(run):
        limit = searcher.max_starts()
        started = 0
        while run.done < searcher.total and (limit is None or started < limit):
            if not searcher.ready():
                continue
            started += 1
            policy = searcher.propose()
            try:
                if not searcher.screen(policy):
                    run.report()
                    continue
                result = searcher.evaluator.evaluate(policy)
            except BaseException:
                searcher.abandon(policy)
                raise
            columns = searcher.columns(policy, result)
            searcher.observe(policy, result)
            run.record(result, columns)
    return searcher.finish(run.result())

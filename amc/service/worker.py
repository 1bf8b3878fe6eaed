"""A worker runs jobs from the queue: claim, heartbeat, ``run_job``, finish; and recovers jobs of dead workers.

Lifecycle: ``Worker(config)`` -> ``recover()`` (once at start, then every minute from the queue's
scheduler) -> ``serve()`` (the queue calls ``execute(job_id)`` for each task).

``execute`` claims the job with one conditional UPDATE (a job another worker holds, or one cancelled
while queued, is skipped), starts a heartbeat thread, and runs the pipeline with a progress callback
that writes the structured progress and the trials so far, and stops the job (state ``cancelled``)
when a cancel arrives. A resumed attempt first marks the trials the dead attempt left RUNNING in the
job's Optuna study as FAIL (the queue hands a job to one worker at a time, so they are nobody's), then
the study continues to its total with every COMPLETE trial kept.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import traceback
from pathlib import Path
from typing import Any

from amc.errors import AmcError
from amc.io import atomic_write_text
from amc.service.config import ServiceConfig
from amc.service.datasets import data_source
from amc.service.jobs import JobSpec, ProgressTracker, load_job_data, run_job, study_storage
from amc.service.queue import JobQueue
from amc.service.store import Store

log = logging.getLogger("amc.worker")


class JobStopped(Exception):
    """Raised inside the pipeline's progress callback when the job was cancelled or taken away."""


def resolve_weights(config: ServiceConfig, owner: str, spec: JobSpec) -> Path:
    """The weights file a spec names: a registered checkpoint, or one of ``owner``'s uploads."""
    if spec.checkpoint is not None:
        found = config.registered_checkpoints().get(spec.checkpoint)
        if found is None:
            known = ", ".join(config.registered_checkpoints()) or "none"
            raise AmcError(f"unknown checkpoint {spec.checkpoint!r}; registered: {known}")
        return found
    assert spec.upload is not None
    if not spec.upload.isalnum():
        raise AmcError(f"bad upload id {spec.upload!r}")
    for path in (config.uploads / owner).glob(f"{spec.upload}.*"):
        return path
    raise AmcError(f"unknown upload {spec.upload!r}")


def live_trials(run_dir: Path, budget_kind: str) -> list[dict[str, Any]]:
    """The job's Optuna trials so far (number, state, origin, reward, accuracy, cost, policy); none when
    its method keeps no study (the study database is the record, whatever searcher wrote it)."""
    import optuna

    db = run_dir / "study.db"
    if not db.exists():
        return []
    storage = optuna.storages.RDBStorage(study_storage(run_dir))
    out: list[dict[str, Any]] = []
    try:
        for summary in optuna.get_all_study_summaries(storage):
            study = optuna.load_study(study_name=summary.study_name, storage=storage)
            for t in study.get_trials(deepcopy=False):
                res = t.user_attrs.get("result", {})
                out.append({"number": t.number, "state": t.state.name, "origin": t.user_attrs.get("origin", "sampler"),
                            "reward": res.get("reward"), "accuracy": res.get("accuracy"),
                            "cost": res.get(budget_kind), "feasible": res.get("feasible"),
                            "policy": t.user_attrs.get("policy", {})})
    finally:
        storage.engine.dispose()
    return out


def fail_running_trials(run_dir: Path) -> int:
    """Mark the RUNNING trials a dead attempt left in the job's study as FAIL; returns how many."""
    import optuna
    from optuna.trial import TrialState

    if not (run_dir / "study.db").exists():
        return 0
    storage = optuna.storages.RDBStorage(study_storage(run_dir))
    n = 0
    try:
        for study in storage.get_all_studies():
            for t in storage.get_all_trials(study._study_id, deepcopy=False, states=(TrialState.RUNNING,)):
                if storage.set_trial_state_values(t._trial_id, TrialState.FAIL):
                    n += 1
    finally:
        storage.engine.dispose()
    return n


class Worker:
    """Runs jobs (see the module doc)."""

    def __init__(self, config: ServiceConfig, store: Store | None = None, queue: JobQueue | None = None,
                 name: str | None = None) -> None:
        self.config = config
        self.store = store or Store(config.database)
        self.queue = queue or JobQueue(config.queue)
        self.name = name or f"{socket.gethostname()}:{os.getpid()}"
        self._data: dict[tuple, Any] = {}  # splits by (data set, slice): a worker decodes each once

    def recover(self) -> list[str]:
        """Requeue the running jobs whose worker stopped beating; returns their ids."""
        back = []
        for jid in self.store.stale(self.config.stale_s):
            if self.store.recover(jid, self.config.stale_s):
                self.queue.submit(jid)
                back.append(jid)
                log.warning("job %s: its worker stopped beating; back on the queue", jid)
        return back

    def warm(self) -> None:
        """Import what every job needs (torch, the pipeline) before the first claim: a worker pays that
        start-up cost once, at start, not inside its first job while it holds it."""
        import amc.pipeline  # noqa: F401

    def serve(self) -> None:
        self.warm()
        self.recover()
        log.info("worker %s: ready", self.name)
        self.queue.serve(self.execute, self.recover)

    def _splits(self, spec: JobSpec, owner: str) -> Any:
        import torch

        from amc.data import default_device

        source = data_source(self.config, owner, spec.data)  # a registered set or the owner's upload
        device = torch.device(self.config.device) if self.config.device else default_device()
        key = (owner, spec.data, spec.train_limit, spec.test_limit, spec.protocol, spec.heldout, spec.seed,
               str(device))
        if key not in self._data:
            self._data = {key: load_job_data(source, spec, device)}  # keep one: data sets are large
        return self._data[key]

    def _task(self, spec: JobSpec) -> tuple[Any, None]:
        """The job's task: its registered factory called (``amc.task.make_task``; one clear error for an
        unknown name or a factory that fails)."""
        from amc.task import make_task

        known = self.config.registered_tasks()
        factory = known.get(spec.task)  # type: ignore[arg-type]
        if factory is None:
            raise AmcError(f"unknown task {spec.task!r}; registered: {', '.join(known) or 'none'}")
        return make_task(factory), None  # type: ignore[arg-type]

    def execute(self, jid: str) -> None:
        if not self.store.claim(jid, self.name):  # cancelled while queued, or delivered twice
            other = self.store.get(jid)
            log.info("job %s: skipped (%s, worker %s)", jid, other.state if other else "gone",
                     other.worker if other else None)
            return
        job = self.store.get(jid)
        assert job is not None
        log.info("job %s: claimed (attempt %d)", jid, job.attempts)
        run_dir = self.config.runs / jid
        run_dir.mkdir(parents=True, exist_ok=True)
        tracker = ProgressTracker(stage="data")
        stop, stopped = threading.Event(), threading.Event()
        spec = JobSpec.model_validate(job.spec)
        kind = spec.budget.split("=", 1)[0]

        def beat() -> None:
            while not stop.wait(self.config.heartbeat_s):
                state = self.store.beat(jid, self.name, tracker.as_dict())
                if state != "running":
                    stopped.set()

        def progress(msg: str) -> None:
            tracker.update(msg)
            trials = live_trials(run_dir, kind) if tracker.stage == "search" and msg.startswith("trial") else []
            if trials:  # a study's trials so far (an empty list would hide the agent's trials.csv from the API)
                atomic_write_text(run_dir / "trials.json", _json(trials))
                done = [t for t in trials if t["state"] == "COMPLETE"]
                tracker.trials_complete = len(done)
                feasible = [t["reward"] for t in done if t["feasible"] and t["reward"] is not None]
                tracker.best = max(feasible) if feasible else None
            if self.store.beat(jid, self.name, tracker.as_dict()) != "running" or stopped.is_set():
                raise JobStopped

        hb = threading.Thread(target=beat, name=f"heartbeat-{jid}", daemon=True)
        hb.start()
        try:
            weights = resolve_weights(self.config, job.owner, spec)
            if job.attempts > 1:
                n = fail_running_trials(run_dir)
                log.warning("job %s: attempt %d; %d unfinished trial(s) of the last one failed", jid, job.attempts, n)
            splits, record = self._task(spec) if spec.task is not None else self._splits(spec, job.owner)
            tracker.update("data")
            self.store.beat(jid, self.name, tracker.as_dict())
            run_job(spec, weights, splits, run_dir, progress, record=record)
            final = live_trials(run_dir, kind)
            if final:  # a method with a study (any Optuna sampler); others leave the pipeline's trials.csv
                atomic_write_text(run_dir / "trials.json", _json(final))
            tracker.enter("done")
            tracker.message = "done"
            self.store.finish(jid, self.name, "done", progress=tracker.as_dict())
        except JobStopped:
            self.store.finish(jid, self.name, "cancelled", progress=tracker.as_dict())
        except AmcError as e:
            self.store.finish(jid, self.name, "failed", error=str(e), progress=tracker.as_dict())
        except Exception as e:  # a bug, not bad input: the log holds the stack
            atomic_write_text(run_dir / "worker-error.log", traceback.format_exc())
            self.store.finish(jid, self.name, "failed", error=f"{type(e).__name__}: {e}", progress=tracker.as_dict())
        finally:
            stop.set()
            hb.join(timeout=5)
            log.info("job %s: attempt %d over", jid, job.attempts)


def _json(obj: Any) -> str:
    import json
    import math

    def clean(v: Any) -> Any:  # JSON has no NaN
        if isinstance(v, float) and not math.isfinite(v):
            return None
        if isinstance(v, dict):
            return {k: clean(x) for k, x in v.items()}
        if isinstance(v, list):
            return [clean(x) for x in v]
        return v

    return json.dumps(clean(obj))


def wait_idle(queue: JobQueue, timeout_s: float) -> bool:  # tests and benchmarks
    t0 = time.time()
    while queue.pending() and time.time() - t0 < timeout_s:
        time.sleep(0.2)
    return not queue.pending()

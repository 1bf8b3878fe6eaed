"""Jobs: submit, list, one job's state and progress, its trials so far, cancel, resume."""

from __future__ import annotations

import csv
import json
import math
import time
from functools import lru_cache
from pathlib import Path
from typing import Any

from fastapi import APIRouter, HTTPException
from pydantic import BaseModel

from amc.errors import AmcError
from amc.service.api.deps import Config, Job, QueueDep, StoreDep, User
from amc.service.config import ServiceConfig
from amc.service.datasets import NotYours, data_source
from amc.service.jobs import JobSpec, check_job_model
from amc.service.store import JobRow
from amc.service.worker import resolve_weights

router = APIRouter(prefix="/api/v1/jobs", tags=["jobs"])


class Progress(BaseModel):
    stage: str = "queued"
    done: int = 0  # trials or episodes done (the study's total, resumed attempts included)
    total: int | None = None
    trials_complete: int = 0
    best: float | None = None  # best feasible reward so far
    message: str = ""
    elapsed_s: float | None = None
    eta_s: float | None = None  # the stage's time left (its last message's ETA, or this attempt's pace)
    unit: str | None = None  # what the stage counts: "trial", "episode", "sensitivity", "finetune step"
    stage_done: int = 0  # the stage's units done of stage_total (done / total: the search's trials)
    stage_total: int | None = None


class JobOut(BaseModel):
    id: str
    owner: str
    state: str
    spec: dict[str, Any]
    created: float
    started: float | None
    finished: float | None
    attempts: int
    worker: str | None
    error: str | None
    progress: Progress
    links: dict[str, str]


def job_out(job: JobRow) -> JobOut:
    p = dict(job.progress)
    if job.started is not None:
        p["elapsed_s"] = (job.finished or time.time()) - job.started
    if job.state in ("done", "failed", "cancelled"):
        p["eta_s"] = None
    keep = {k: v for k, v in p.items() if k in Progress.model_fields}
    base = f"/api/v1/jobs/{job.id}"
    return JobOut(id=job.id, owner=job.owner, state=job.state, spec=job.spec, created=job.created,
                  started=job.started, finished=job.finished, attempts=job.attempts, worker=job.worker,
                  error=job.error, progress=Progress(**keep),
                  links={"self": base, "trials": f"{base}/trials", "files": f"{base}/files",
                         "report": f"{base}/report", "page": f"/#/jobs/{job.id}"})


@lru_cache(maxsize=64)
def _check_model(model: str | None, uploaded: bool, weights: str, mtime: float, num_classes: int,
                 shape: tuple[int, ...]) -> None:
    check_job_model(model, uploaded, Path(weights), num_classes, shape)


def validate_source(config: ServiceConfig, user: str, spec: JobSpec) -> None:
    """Before queuing: the spec's data set is registered or the user's (403 for another user's), its
    weights exist and are the user's, and its model builds, takes the weights and outputs one score per
    class of the data (``check_job_model``; 400 with the reason). A job naming a task: the task is
    registered (422 otherwise) and the weights exist; the worker checks the model on the task."""
    if spec.task is not None:
        known = config.registered_tasks()
        if spec.task not in known:
            raise HTTPException(422, f"unknown task {spec.task!r}; registered: {', '.join(known) or 'none'}")
        try:
            resolve_weights(config, user, spec)
        except AmcError as e:
            raise HTTPException(400, str(e)) from None
        return
    try:
        source = data_source(config, user, spec.data)
    except NotYours as e:
        raise HTTPException(403, str(e)) from None
    except AmcError as e:
        raise HTTPException(400, str(e)) from None
    try:
        weights = resolve_weights(config, user, spec)
        _check_model(spec.model, spec.upload is not None, str(weights), weights.stat().st_mtime, source.num_classes,
                     source.input_shape)
    except AmcError as e:
        raise HTTPException(400, str(e).replace(str(config.uploads / user) + "/", "upload ")) from None


@router.post("", response_model=JobOut, status_code=201)
def submit(spec: JobSpec, config: Config, store: StoreDep, queue: QueueDep, user: User) -> JobOut:
    validate_source(config, user, spec)
    jid = store.add_job(user, spec.model_dump())
    queue.submit(jid)
    job = store.get(jid)
    assert job is not None
    return job_out(job)


@router.get("", response_model=list[JobOut])
def list_jobs(store: StoreDep, user: User, limit: int = 100) -> list[JobOut]:
    return [job_out(j) for j in store.list_jobs(user, limit=max(1, min(limit, 1000)))]


@router.get("/{job_id}", response_model=JobOut)
async def get_job(job: Job) -> JobOut:  # no I/O left once the job is read: no thread-pool hop
    return job_out(job)


def _finite(v: Any) -> Any:
    return None if isinstance(v, float) and not math.isfinite(v) else v


def read_trials(run_dir: Path, kind: str) -> list[dict[str, Any]]:
    live = run_dir / "trials.json"
    if live.exists():
        return json.loads(live.read_text())
    final = run_dir / "trials.csv"  # the AMC agent's episodes, written at the end of the search
    if not final.exists():
        return []
    out = []
    with open(final, newline="") as f:
        for i, row in enumerate(csv.DictReader(f)):
            def num(key: str, row: dict[str, str] = row) -> float | None:
                try:
                    return _finite(float(row[key]))
                except (KeyError, ValueError):
                    return None
            out.append({"number": i, "state": row.get("state", "COMPLETE"), "origin": row.get("origin", ""),
                        "reward": num("reward"), "accuracy": num("accuracy"), "cost": num(kind),
                        "feasible": row.get("feasible") == "True",
                        "policy": {k[2:]: num(k) for k in row if k.startswith("r:")}})
    return out


@router.get("/{job_id}/trials")
def trials(job: Job, config: Config) -> dict[str, Any]:
    """The trials so far: number, state, origin, reward, accuracy, cost (the budget's kind), policy."""
    kind = job.spec["budget"].split("=", 1)[0]
    return {"budget_kind": kind, "budget": job.spec["budget"], "method": job.spec["method"],
            "trials": read_trials(config.runs / job.id, kind)}


@router.post("/{job_id}/cancel", response_model=JobOut)
def cancel(job: Job, store: StoreDep) -> JobOut:
    if store.cancel(job.id) is None:
        raise HTTPException(409, f"job {job.id} is {job.state}: nothing to cancel")
    new = store.get(job.id)
    assert new is not None
    return job_out(new)


@router.post("/{job_id}/resume", response_model=JobOut)
def resume(job: Job, store: StoreDep, queue: QueueDep) -> JobOut:
    """A failed or cancelled job back on the queue; its Optuna study continues where it stopped."""
    if not store.requeue(job.id):
        raise HTTPException(409, f"job {job.id} is {job.state}: only failed or cancelled jobs resume")
    queue.submit(job.id)
    new = store.get(job.id)
    assert new is not None
    return job_out(new)

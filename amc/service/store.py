"""The service's two tables, ``tokens`` and ``jobs``, on SQLAlchemy Core (SQLite file or PostgreSQL).

Every state change of a job is one conditional ``UPDATE ... WHERE state = ...``: the row count says
who won, so two workers can never both claim a job and a cancel cannot be lost to a finishing worker.

States: ``queued`` -> ``running`` -> ``done`` | ``failed`` | ``cancelled``; ``running`` ->
``cancelling`` (asked to stop; the worker stops at the next progress message) -> ``cancelled``;
``failed`` | ``cancelled`` -> ``queued`` again on resume; ``running`` -> ``queued`` when its worker
stops beating (recovery).
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

STATES = ("queued", "running", "cancelling", "done", "failed", "cancelled")
FINAL = ("done", "failed", "cancelled")

meta = sa.MetaData()
tokens = sa.Table(
    "tokens", meta,
    sa.Column("id", sa.String(16), primary_key=True),
    sa.Column("user", sa.String(128), nullable=False),
    sa.Column("hash", sa.String(64), nullable=False, unique=True),  # sha256 hex of the secret
    sa.Column("created", sa.Float, nullable=False),
    sa.Column("revoked", sa.Float, nullable=True),
    sa.Column("note", sa.String(256), nullable=False, default=""),
)
jobs = sa.Table(
    "jobs", meta,
    sa.Column("id", sa.String(16), primary_key=True),
    sa.Column("owner", sa.String(128), nullable=False, index=True),
    sa.Column("state", sa.String(16), nullable=False, index=True),
    sa.Column("spec", sa.Text, nullable=False),  # the JobSpec as JSON
    sa.Column("created", sa.Float, nullable=False),
    sa.Column("started", sa.Float, nullable=True),  # first claim
    sa.Column("attempt_started", sa.Float, nullable=True),  # this attempt's claim
    sa.Column("finished", sa.Float, nullable=True),
    sa.Column("heartbeat", sa.Float, nullable=True),
    sa.Column("worker", sa.String(128), nullable=True),
    sa.Column("attempts", sa.Integer, nullable=False, default=0),  # claims so far
    sa.Column("progress", sa.Text, nullable=False, default="{}"),  # a Progress as JSON
    sa.Column("error", sa.Text, nullable=True),
)


@dataclass
class JobRow:
    id: str
    owner: str
    state: str
    spec: dict[str, Any]
    created: float
    started: float | None
    attempt_started: float | None
    finished: float | None
    heartbeat: float | None
    worker: str | None
    attempts: int
    progress: dict[str, Any]
    error: str | None

    @classmethod
    def of(cls, row: Any) -> JobRow:
        m = row._mapping
        return cls(m["id"], m["owner"], m["state"], json.loads(m["spec"]), m["created"], m["started"],
                   m["attempt_started"], m["finished"], m["heartbeat"], m["worker"], m["attempts"],
                   json.loads(m["progress"] or "{}"), m["error"])


def make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        engine = sa.create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})

        @sa.event.listens_for(engine, "connect")
        def _wal(dbapi_conn: Any, _record: Any) -> None:  # readers never wait for the writer
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.close()

        return engine
    return sa.create_engine(url, pool_pre_ping=True)


class Store:
    """The jobs and tokens tables (see the module doc)."""

    def __init__(self, url: str) -> None:
        self.engine = make_engine(url)
        meta.create_all(self.engine, checkfirst=True)

    # -- tokens ----------------------------------------------------------------------------------
    def add_token(self, user: str, digest: str, note: str = "") -> str:
        tid = uuid.uuid4().hex[:8]
        with self.engine.begin() as c:
            c.execute(tokens.insert().values(id=tid, user=user, hash=digest, created=time.time(), note=note))
        return tid

    def user_of(self, digest: str) -> str | None:
        with self.engine.connect() as c:
            row = c.execute(sa.select(tokens.c.user).where(tokens.c.hash == digest, tokens.c.revoked.is_(None))).first()
        return row[0] if row else None

    def list_tokens(self) -> list[dict[str, Any]]:
        with self.engine.connect() as c:
            rows = c.execute(sa.select(tokens.c.id, tokens.c.user, tokens.c.created, tokens.c.revoked,
                                       tokens.c.note).order_by(tokens.c.created)).all()
        return [dict(r._mapping) for r in rows]

    def revoke_token(self, tid: str) -> bool:
        with self.engine.begin() as c:
            res = c.execute(tokens.update().where(tokens.c.id == tid, tokens.c.revoked.is_(None))
                            .values(revoked=time.time()))
        return res.rowcount == 1

    # -- jobs ----------------------------------------------------------------------------------------
    def add_job(self, owner: str, spec: dict[str, Any]) -> str:
        jid = uuid.uuid4().hex[:12]
        with self.engine.begin() as c:
            c.execute(jobs.insert().values(id=jid, owner=owner, state="queued", spec=json.dumps(spec),
                                           created=time.time(), attempts=0, progress="{}"))
        return jid

    def get(self, jid: str) -> JobRow | None:
        with self.engine.connect() as c:
            row = c.execute(sa.select(jobs).where(jobs.c.id == jid)).first()
        return JobRow.of(row) if row else None

    def list_jobs(self, owner: str | None = None, limit: int = 200) -> list[JobRow]:
        q = sa.select(jobs).order_by(jobs.c.created.desc()).limit(limit)
        if owner is not None:
            q = q.where(jobs.c.owner == owner)
        with self.engine.connect() as c:
            return [JobRow.of(r) for r in c.execute(q).all()]

    def _move(self, jid: str, from_states: tuple[str, ...], **values: Any) -> bool:
        with self.engine.begin() as c:
            res = c.execute(jobs.update().where(jobs.c.id == jid, jobs.c.state.in_(from_states)).values(**values))
        return res.rowcount == 1

    def claim(self, jid: str, worker: str) -> bool:
        """queued -> running for ``worker``; False when someone else has it or it was cancelled."""
        now = time.time()
        with self.engine.begin() as c:
            res = c.execute(jobs.update().where(jobs.c.id == jid, jobs.c.state == "queued").values(
                state="running", worker=worker, heartbeat=now, attempt_started=now,
                started=sa.func.coalesce(jobs.c.started, now), attempts=jobs.c.attempts + 1, error=None))
        return res.rowcount == 1

    def beat(self, jid: str, worker: str, progress: dict[str, Any] | None = None) -> str | None:
        """Write a heartbeat (and progress); returns the job's state (None if it is no longer ours)."""
        values: dict[str, Any] = {"heartbeat": time.time()}
        if progress is not None:
            values["progress"] = json.dumps(progress)
        with self.engine.begin() as c:
            res = c.execute(jobs.update().where(jobs.c.id == jid, jobs.c.worker == worker,
                                                jobs.c.state.in_(("running", "cancelling"))).values(**values))
            if res.rowcount != 1:
                return None
            return c.execute(sa.select(jobs.c.state).where(jobs.c.id == jid)).scalar_one()

    def finish(self, jid: str, worker: str, state: str, error: str | None = None,
               progress: dict[str, Any] | None = None) -> bool:
        assert state in FINAL
        values: dict[str, Any] = {"state": state, "finished": time.time(), "error": error}
        if progress is not None:
            values["progress"] = json.dumps(progress)
        with self.engine.begin() as c:
            res = c.execute(jobs.update().where(jobs.c.id == jid, jobs.c.worker == worker,
                                                jobs.c.state.in_(("running", "cancelling"))).values(**values))
        return res.rowcount == 1

    def cancel(self, jid: str) -> str | None:
        """queued -> cancelled, running -> cancelling; returns the new state (None: nothing to cancel)."""
        if self._move(jid, ("queued",), state="cancelled", finished=time.time()):
            return "cancelled"
        if self._move(jid, ("running",), state="cancelling"):
            return "cancelling"
        return None

    def requeue(self, jid: str, from_states: tuple[str, ...] = ("failed", "cancelled")) -> bool:
        return self._move(jid, from_states, state="queued", finished=None, error=None)

    def stale(self, stale_s: float) -> list[str]:
        """Running jobs whose worker has not beaten for ``stale_s`` seconds."""
        cut = time.time() - stale_s
        with self.engine.connect() as c:
            rows = c.execute(sa.select(jobs.c.id).where(jobs.c.state.in_(("running", "cancelling")),
                                                        jobs.c.heartbeat < cut)).all()
        return [r[0] for r in rows]

    def recover(self, jid: str, stale_s: float) -> bool:
        """A stale running job -> queued (a stale cancelling one -> cancelled); True if it was requeued.
        Conditional on the heartbeat still being stale, so two sweeps cannot requeue it twice."""
        cut = time.time() - stale_s
        with self.engine.begin() as c:
            c.execute(jobs.update().where(jobs.c.id == jid, jobs.c.state == "cancelling", jobs.c.heartbeat < cut)
                      .values(state="cancelled", finished=time.time()))
            res = c.execute(jobs.update().where(jobs.c.id == jid, jobs.c.state == "running", jobs.c.heartbeat < cut)
                            .values(state="queued", worker=None))
        return res.rowcount == 1

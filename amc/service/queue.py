"""The task queue behind one small interface, on huey.

Lifecycle: ``JobQueue(url)`` -> ``submit(job_id)`` (the API, any process) ... ``serve(handler,
recover)`` (a worker: huey's consumer calls ``handler(job_id)`` for each task and ``recover()`` once
a minute, from huey's own scheduler) until SIGINT / SIGTERM.

Backends by URL: ``sqlite:///path`` (``SqliteHuey``: one file beside the runs, no server; the
default), ``redis://host:port/db`` (``RedisHuey``; needs the ``redis`` package) and
``postgresql://user@host:port/db`` (huey's ``SqlHuey`` over peewee, dequeuing with ``FOR UPDATE SKIP
LOCKED``) for workers on several machines. huey removes a task when a worker takes it, so the
queue alone cannot tell that a worker died: the jobs table's heartbeats do, and ``recover`` puts such
jobs back on the queue.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from huey import Huey, SqliteHuey, crontab

from amc.errors import AmcError

NAME = "amc"  # the queue's name inside its storage


def make_huey(url: str) -> Huey:
    if url.startswith("sqlite:///"):
        return SqliteHuey(NAME, filename=url.removeprefix("sqlite:///"), results=False, timeout=30)
    if url.startswith(("redis://", "rediss://", "unix://")):
        from huey import RedisHuey

        return RedisHuey(NAME, url=url, results=False)
    if url.startswith(("postgres://", "postgresql://", "postgresql+psycopg2://")):
        from huey.contrib.sql_huey import SqlHuey

        # peewee's URL, over psycopg2: the jobs table's SQLAlchemy URL (postgresql+psycopg2://) works too
        return SqlHuey(NAME, database="postgresql://" + url.split("://", 1)[1], results=False)
    raise AmcError(f"queue must be sqlite:///FILE, redis://HOST:PORT/DB or postgresql://..., got {url!r}")


class JobQueue:
    """Job ids on a huey queue (see the module doc)."""

    def __init__(self, url: str) -> None:
        self.huey = make_huey(url)
        self._handler: Callable[[str], None] | None = None
        self._recover: Callable[[], object] | None = None
        # the same task names in every process: the API enqueues, a worker's consumer runs them
        self._task = self.huey.task(name="run_job")(self._run)
        self.huey.periodic_task(crontab(minute="*"), name="recover")(self._sweep)

    def _run(self, job_id: str) -> None:
        if self._handler is not None:
            self._handler(job_id)

    def _sweep(self) -> None:
        if self._recover is not None:
            self._recover()

    def submit(self, job_id: str) -> None:
        self._task(job_id)

    def pending(self) -> int:
        return int(self.huey.pending_count())

    def serve(self, handler: Callable[[str], None], recover: Callable[[], object] | None = None,
              **options: Any) -> None:
        """Run tasks one at a time in this process until SIGINT / SIGTERM."""
        self._handler, self._recover = handler, recover
        opts: dict[str, Any] = dict(workers=1, worker_type="thread", periodic=recover is not None,
                                    initial_delay=0.1, backoff=1.15, max_delay=1.0)  # look again within 1 s
        opts.update(options)
        self.huey.create_consumer(**opts).run()

"""Where the service keeps its state, read once from flags or the environment.

One root folder holds everything by default: ``service.db`` (jobs and tokens), ``queue.db`` (the huey
queue), ``runs/<job id>/`` (one run folder per job), ``uploads/<user>/`` (uploaded weights) and
``datasets/<user>/<id>/`` (uploaded ImageFolder data sets, each with its ``dataset.json``). For
several machines, ``db_url`` and ``queue_url`` point at PostgreSQL (or the queue at Redis) and the
root is a folder every machine mounts (the server serves the run folders the workers write).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from amc.paths import CIFAR_ARCHIVE, shared_path

MiB = 1 << 20


def _default_checkpoints() -> Path:
    return shared_path("models")  # $AMC_SHARED, else ../shared (amc.paths)


def _default_datasets() -> dict[str, Path]:
    return {"cifar10": shared_path(CIFAR_ARCHIVE)}


@dataclass(frozen=True)
class ServiceConfig:
    root: Path = Path("service")
    db_url: str | None = None  # None: sqlite:///<root>/service.db
    queue_url: str | None = None  # None: sqlite:///<root>/queue.db (huey's SqliteHuey)
    max_upload_bytes: int = 256 * MiB  # weights uploads larger than this are refused (413)
    max_dataset_bytes: int = 1024 * MiB  # data set archives larger than this are refused (413)
    max_dataset_entries: int = 200_000  # members of one data set archive
    max_dataset_unpacked_bytes: int = 4096 * MiB  # a data set archive's unpacked images (compression bombs)
    max_image_pixels: int = 4096 * 4096  # pixels of one image in a data set archive
    heartbeat_s: float = 5.0  # a worker running a job writes a heartbeat this often
    stale_s: float = 60.0  # a running job with no heartbeat for this long belongs to a dead worker
    token_cache_s: float = 2.0  # the server trusts a token it has read for this long (a revoke waits as long)
    checkpoints: Path = field(default_factory=_default_checkpoints)  # registered checkpoints: <name>.pt
    datasets: dict[str, Path] = field(default_factory=_default_datasets)
    device: str | None = None  # the workers' device (None: CUDA when present)
    # task plugins: name -> "pkg.module:make_task" (a factory returning an amc.Task); jobs name them, users never
    # upload code. Beside these: amc.task.TASKS (registered in Python) and the "amc.tasks" entry points.
    tasks: dict[str, str] = field(default_factory=dict)

    @property
    def runs(self) -> Path:
        return self.root / "runs"

    @property
    def uploads(self) -> Path:
        return self.root / "uploads"

    @property
    def user_datasets(self) -> Path:
        return self.root / "datasets"

    @property
    def database(self) -> str:
        return self.db_url or f"sqlite:///{(self.root / 'service.db').resolve()}"

    @property
    def queue(self) -> str:
        return self.queue_url or f"sqlite:///{(self.root / 'queue.db').resolve()}"

    def registered_tasks(self) -> dict[str, object]:
        """Task plugins by name (a factory or its ``pkg.module:function`` reference): the ``amc.tasks`` entry
        points, then ``amc.task.TASKS``, then this config's ``tasks`` (each later one wins a name)."""
        from amc.task import TASKS, entry_point_tasks

        return {**entry_point_tasks(), **dict(TASKS), **self.tasks}

    def registered_checkpoints(self) -> dict[str, Path]:
        if not self.checkpoints.is_dir():
            return {}
        return {p.stem: p for p in sorted(self.checkpoints.iterdir())
                if p.suffix in (".pt", ".pth", ".safetensors") and p.is_file()}

    @classmethod
    def from_env(cls, **overrides: object) -> ServiceConfig:
        """``AMC_SERVICE_ROOT``, ``AMC_SERVICE_DB``, ``AMC_SERVICE_QUEUE``, ``AMC_SERVICE_STALE_S``,
        ``AMC_SERVICE_HEARTBEAT_S``, ``AMC_SERVICE_TOKEN_CACHE_S``, ``AMC_SERVICE_MAX_UPLOAD``,
        ``AMC_SERVICE_MAX_DATASET`` (bytes of a data set archive), ``AMC_TASKS`` (task plugins:
        ``name=pkg.module:make_task,...``); explicit ``overrides`` (not None) win."""
        env = os.environ
        values: dict[str, object] = {}
        if "AMC_SERVICE_ROOT" in env:
            values["root"] = Path(env["AMC_SERVICE_ROOT"])
        for key, name in (("db_url", "AMC_SERVICE_DB"), ("queue_url", "AMC_SERVICE_QUEUE")):
            if env.get(name):
                values[key] = env[name]
        for key, name in (("stale_s", "AMC_SERVICE_STALE_S"), ("heartbeat_s", "AMC_SERVICE_HEARTBEAT_S"),
                          ("token_cache_s", "AMC_SERVICE_TOKEN_CACHE_S")):
            if name in env:
                values[key] = float(env[name])
        if "AMC_SERVICE_MAX_UPLOAD" in env:
            values["max_upload_bytes"] = int(env["AMC_SERVICE_MAX_UPLOAD"])
        if "AMC_SERVICE_MAX_DATASET" in env:
            values["max_dataset_bytes"] = int(env["AMC_SERVICE_MAX_DATASET"])
        if env.get("AMC_TASKS"):
            from amc.task import parse_tasks

            values["tasks"] = parse_tasks(env["AMC_TASKS"])
        if "AMC_SERVICE_CHECKPOINTS" in env:
            values["checkpoints"] = Path(env["AMC_SERVICE_CHECKPOINTS"])
        values.update({k: v for k, v in overrides.items() if v is not None})
        if "root" in values:
            values["root"] = Path(str(values["root"]))
        return cls(**values)  # type: ignore[arg-type]
